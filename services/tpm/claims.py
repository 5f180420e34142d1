"""Claims: everything an attestation policy needs, read from replay-verified boot events.

:func:`extract_claims` walks the events of a log whose replay matched a quote
(:class:`~services.tpm.replay.ReplayResult`) and returns one frozen, JSON-serialisable
:class:`Claims` (records in :mod:`services.tpm.claim_records`). Each event is first *read* on
its own (:mod:`services.tpm.readings`: type checks, the binding of its data to its digests,
decoding; with a caller's memo, remembered across logs by exact content); data that does not
hash to its digest is never interpreted. This module is the *fold*: readings applied in log order to what depends on
the rest of the log (separators seen, Secure Boot variables, authorities pending for the next
image, event sequence numbers).

Fail-closed rules (the event type is not covered by the digest, so a forged type could hide
data from every check):

* anywhere, an event type outside the TCG spec or outside its PCR's row of
  :mod:`services.tpm.pcr_types` is a *fatal* anomaly;
* in code PCRs (2 and 4; MR 2 of a CCEL log), every event whose digest is not over its data is
  code that ran and is listed with the boot applications or drivers, whatever its label;
* in PCR 7 and PCRs 12-14 (for Intel TDX CCEL logs: MR 1 = RTMR0 and MR 3 = RTMR2), data that
  cannot be decoded and data whose digest cannot be checked are *fatal* anomalies;
* a digest mismatch of data that is hashed (``tpm.binding.digest_mismatch``) where security
  decisions depend on that data (:data:`services.tpm.binding_consequences.SECURITY_RELEVANT`);
  elsewhere it is the non-fatal ``tpm.binding.data_unverified``, the event counts by its digest
  and the claims read from its data are unverified (:meth:`Claims.unverified_claim`); a
  duplicate or error separator, and a Secure Boot variable that is duplicated, measured after
  the separator or has an invalid value are fatal. A duplicate separator that is exactly a
  ``structure`` quirk's shape (:mod:`services.tpm.quirks`: the one early Intel TDX firmware
  logs) is read as the separator of the register the quirk names when ``allowed_quirks``
  names it, and reported; otherwise it stays fatal and its detail names the defect and quirk.

Other undecodable events become non-fatal anomalies (a broken event is itself suspicious) and
extraction continues. ``Claims.failed_closed`` is True when any anomaly is fatal: a policy must
then fail. Reason ids are listed in :data:`REASONS` (a wire contract: never rename one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from services.tpm import sipa
from services.tpm.claim_records import (
    Anomaly,
    Authority,
    BootApplication,
    BootOption,
    Claims,
    DecodedEvent,
    ImaClaim,
    KeyDatabase,
    KeyEntry,
    LoadOptions,
    PossibleCmdline,
    QuirkUse,
)
from services.tpm.errors import Unsupported
from services.tpm.eventlog import PCR_NOT_EXTENDED, Event, EventType
from services.tpm.memo import Memo
from services.tpm.pcr_types import CODE_PCRS
from services.tpm.quirks import QUIRK_IDS, Layer, Quirk, accepted, of_layer, refusal
from services.tpm.readings import (
    IMAGE_KINDS,
    AuthorityFact,
    BlobFact,
    Fact,
    ImageFact,
    Reading,
    SipaFact,
    VariableFact,
    read_events,
)
from services.tpm.replay import ReplayResult
from services.tpm.uefi import EFI_GLOBAL_VARIABLE_GUID, KEY_DATABASES, UefiVariableData

__all__ = [
    "OPAQUE_CODE",
    "REASONS",
    "Anomaly",
    "Authority",
    "BootApplication",
    "BootOption",
    "Claims",
    "DecodedEvent",
    "ImaClaim",
    "KeyDatabase",
    "KeyEntry",
    "LoadOptions",
    "PossibleCmdline",
    "QuirkUse",
    "extract_claims",
]

REASONS: Final[dict[str, str]] = {
    "tpm.binding.digest_mismatch": "event data does not hash to the digest it was extended with",
    "tpm.binding.data_unverified": "event data does not hash to its digest, and no security "
                                   "decision depends on it: the event counts by its digest, "
                                   "every claim read from its data cannot be confirmed",
    "tpm.binding.unverifiable": "no bank of the event can be hashed here to check its data",
    "tpm.event.unknown_type": "event type outside the TCG PC Client spec",
    "tpm.event.unexpected_type": "event type not expected in this PCR",
    "tpm.event.undecodable": "event data does not decode as its type says",
    "tpm.event.unexpected_data": "event data is not what its type promises (an action string, "
                                 "a separator value, a boot-loader string's convention)",
    "tpm.separator.duplicate": "a second EV_SEPARATOR in the same PCR",
    "tpm.separator.error": "error separator (value 1 or 0xFFFFFFFF): firmware reported an error",
    "tpm.separator.unexpected_value": "EV_SEPARATOR data is neither 0, an error value nor WBCL",
    "tpm.secureboot.variable_empty": "SecureBoot variable measured with no data (read as off)",
    "tpm.secureboot.invalid_value": "SecureBoot variable is not one byte of 0 or 1",
    "tpm.secureboot.duplicate_variable": "a Secure Boot variable measured twice",
    "tpm.secureboot.variable_after_separator": "a Secure Boot variable measured after PCR 7's separator",
    "tpm.secureboot.variable_outside_pcr7": "SecureBoot or a key database measured outside PCR 7 "
                                            "(a CCEL's MR 1): never believed, the log fails",
    "tpm.event.fixed_content_relabelled": "an event whose data no check hashes carries the "
                                          "digest of a separator value or an EFI action "
                                          "string: it was one, under another label",
    "tpm.uefi.debug_mode": "EV_EFI_ACTION 'UEFI Debug Mode': a UEFI debugger was enabled",
    "tpm.sipa.module_conflict": "a Windows module (one Authenticode hash) measured with "
                                "different attributes (path, size, signer...): one module, "
                                "whose disputed attributes are unknown",
    "tpm.sipa.after_separator": "a SIPA block measured in PCR 12-14 after that PCR's WBCL "
                                "separator: the Windows loader had handed over, so whatever "
                                "extended it (any root process) is not the loader",
}

_FAIL_CLOSED: Final = {"tpm": frozenset({7, 12, 13, 14}), "ccel": frozenset({1, 3})}
"""Where undecodable data is fatal (security decisions read these decoders' output). An event
type outside its PCR's row of :mod:`services.tpm.pcr_types` is fatal in every PCR."""
_CODE_PCRS: Final = {"tpm": frozenset(CODE_PCRS), "ccel": frozenset({2})}
_NOT_CODE: Final = {
    "tpm": frozenset({EventType.EV_SEPARATOR, EventType.EV_EFI_ACTION, EventType.EV_ACTION}),
    # a CCEL's MR 2 holds PCR 5's GPT too: bound, and its decoder demands the "EFI PART" header
    "ccel": frozenset({EventType.EV_SEPARATOR, EventType.EV_EFI_ACTION, EventType.EV_ACTION,
                       EventType.EV_EFI_GPT_EVENT, EventType.EV_EFI_GPT_EVENT2}),
}
"""The only labels a code PCR's event may carry and not be code: their data is hashed whole and
held to a fixed-content contract (``pcr_types.content_problem``) or a header no image has."""
_CMDLINE_PCRS: Final = {"tpm": frozenset({8, 12}), "ccel": frozenset({3})}
"""Where boot loaders measure kernel command lines (GRUB in 8, systemd-stub in 12; a CCEL's
MR 3 = RTMR2)."""
_IPL: Final = int(EventType.EV_IPL)
OPAQUE_CODE: Final = "opaque"
"""``BootApplication.kind`` of code known by its digest only (see :func:`_opaque_code`)."""
_SECURE_BOOT_PCR: Final = {"tpm": 7, "ccel": 1}
_NO_ACTION: Final = int(EventType.EV_NO_ACTION)
_SEPARATOR_OK: Final = (b"\x00\x00\x00\x00", b"WBCL")  # also held by readings' contract
_SEPARATOR_ERROR: Final = (b"\x01\x00\x00\x00", b"\xff\xff\xff\xff")


# --- the fold: readings applied in log order ---------------------------------------------
@dataclass
class _State:
    """Mutable accumulator private to one :func:`extract_claims` call."""

    fail_closed: frozenset[int]
    sb_pcr: int
    cmdline_pcrs: frozenset[int]
    registers: Literal["tpm", "ccel"] = "tpm"
    events: Sequence[Event] = ()
    """The events folded, in order (what a ``structure`` quirk's placement reads)."""
    allowed_quirks: frozenset[str] = frozenset()
    secure_boot: bool | None = None
    uefi_debug: bool = False
    dma_off: bool = False
    separators: set[int] = field(default_factory=set)
    sb_vars: set[str] = field(default_factory=set)
    dbs: list[KeyDatabase] = field(default_factory=list)
    authorities: list[Authority] = field(default_factory=list)
    pending_auth: list[int] = field(default_factory=list)
    apps: list[BootApplication] = field(default_factory=list)
    boot_order: tuple[int, ...] = ()
    options: list[BootOption] = field(default_factory=list)
    cmdlines: list[str] = field(default_factory=list)
    grub_cmds: int = 0
    moks: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    crtm: list[str] = field(default_factory=list)
    blobs: list[tuple[str | None, int, int]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    config_flags: list[str] = field(default_factory=list)
    stub_tags: list[str] = field(default_factory=list)
    load_options: list[LoadOptions] = field(default_factory=list)
    possible_cmdlines: list[PossibleCmdline] = field(default_factory=list)
    sipa_blocks: list[tuple[Event, sipa.BlockSummary]] = field(default_factory=list)
    sipa_error: tuple[int, str] | None = None
    quirks: list[QuirkUse] = field(default_factory=list)
    unverified_strings: list[int] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    decoded: dict[int, DecodedEvent] = field(default_factory=dict)

    def flag(self, ev: Event, reason: str, detail: str, *, fatal: bool | None = None) -> None:
        is_fatal = ev.pcr in self.fail_closed if fatal is None else fatal
        self.anomalies.append(Anomaly(reason, ev.seq, ev.pcr, ev.type_name, detail, is_fatal))


_DUPLICATE_SEPARATOR: Final = "tpm.separator.duplicate"


def _structure_quirk(ev: Event, reason: str, st: _State) -> tuple[Quirk, int] | None:
    """The first ``structure`` quirk answering ``reason`` whose shape ``ev`` has, with the
    register it places ``ev`` in; None if no quirk's shape fits."""
    for quirk in of_layer(Layer.STRUCTURE):
        if quirk.reason != reason:
            continue
        assert quirk.placement is not None
        meant = quirk.placement(st.events, ev, st.registers)
        if meant is not None:
            return quirk, meant
    return None


def _separator(ev: Event, _: Fact, st: _State) -> None:
    pcr = ev.pcr
    if pcr in st.separators:
        found = _structure_quirk(ev, _DUPLICATE_SEPARATOR, st)
        if found is not None and accepted(found[0], st.allowed_quirks):
            quirk, pcr = found
            st.quirks.append(QuirkUse(quirk.id, ev.seq))
        elif found is not None:
            st.flag(ev, _DUPLICATE_SEPARATOR, refusal(
                found[0], f"duplicate EV_SEPARATOR in MR {ev.pcr} at event {ev.seq}"),
                fatal=True)
        else:
            st.flag(ev, _DUPLICATE_SEPARATOR, f"duplicate separator at event {ev.seq}",
                    fatal=True)
    st.separators.add(pcr)
    if ev.data in _SEPARATOR_ERROR:
        st.flag(ev, "tpm.separator.error", f"separator value {ev.data.hex()}", fatal=True)
    elif ev.data not in _SEPARATOR_OK:
        st.flag(ev, "tpm.separator.unexpected_value", f"separator data {ev.data[:16].hex()}")


def _driver_config(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, VariableFact)
    rel = fact.variable
    var = UefiVariableData(rel.variable_guid, rel.name, rel.variable_data,
                           rel.data_offset + ev.data_offset, rel.trailing)
    st.decoded[ev.seq] = DecodedEvent(ev.pcr, ev.event_type, ev.data, variable=var)
    if ev.pcr == st.sb_pcr:
        if var.name in st.sb_vars:
            st.flag(ev, "tpm.secureboot.duplicate_variable", var.name, fatal=True)
        if ev.pcr in st.separators:
            st.flag(ev, "tpm.secureboot.variable_after_separator", var.name, fatal=True)
        st.sb_vars.add(var.name)
    elif var.name == "SecureBoot" or var.name in KEY_DATABASES:
        # Read by its name, the last one measured would win: root extends PCR 1 after boot with
        # SecureBoot = 1 or an empty db and the claim is that. No firmware measures them there.
        st.flag(ev, "tpm.secureboot.variable_outside_pcr7", var.name, fatal=True)
        return
    if var.name == "SecureBoot" and var.variable_guid == EFI_GLOBAL_VARIABLE_GUID:
        value = var.variable_data
        if not value:
            st.flag(ev, "tpm.secureboot.variable_empty", "SecureBoot has 0 bytes", fatal=False)
            st.secure_boot = False
        elif len(value) == 1 and value[0] in (0, 1):
            st.secure_boot = value[0] == 1
        else:
            st.flag(ev, "tpm.secureboot.invalid_value", f"SecureBoot = {value[:8].hex()}", fatal=True)
    elif var.name in KEY_DATABASES:
        if fact.entries_error is not None:
            st.flag(ev, "tpm.event.undecodable", fact.entries_error)
        elif fact.key_entries is not None:
            st.dbs.append(KeyDatabase(var.name, var.variable_guid, ev.seq, fact.key_entries))


def _authority(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, AuthorityFact)
    st.authorities.append(Authority(ev.seq, fact.variable, fact.kind, fact.owner, fact.digest,
                                    fact.subject, st.sb_pcr in st.separators))
    st.pending_auth.append(ev.seq)


def _image(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, ImageFact)
    st.apps.append(
        BootApplication(ev.seq, ev.pcr, fact.kind, fact.device_path, fact.file_path,
                        dict(ev.digests), tuple(st.pending_auth))
    )
    st.pending_auth.clear()


def _opaque_code(ev: Event, st: _State) -> None:
    """Code that ran in a code PCR under a label that does not say what it was (an image whose
    load event does not decode, an EV_IPL in PCR 4, a blob or tag in PCR 2): only its digest is
    known, and it stays in the boot chain or driver list like any image."""
    st.apps.append(
        BootApplication(ev.seq, ev.pcr, OPAQUE_CODE, f"{ev.type_name} (label not covered by "
                        "its digest)", None, dict(ev.digests), tuple(st.pending_auth))
    )
    st.pending_auth.clear()


def _boot_variable(ev: Event, fact: Fact, st: _State) -> None:
    if isinstance(fact, BootOption):
        st.options.append(fact)
    elif isinstance(fact, tuple):
        st.boot_order = fact  # type: ignore[assignment]  # a BootOrder reading is tuple[int, ...]


def _ipl(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, DecodedEvent) and fact.ipl is not None
    st.decoded[ev.seq] = fact  # same pcr, type and data as ev: the reading's key
    ipl = fact.ipl
    cmdline = ipl.command_line()
    if cmdline is not None and ev.pcr in st.cmdline_pcrs and cmdline not in st.cmdlines:
        st.cmdlines.append(cmdline)  # GRUB measures each twice (command and command line)
    if ipl.kind in ("grub_cmd", "grub_legacy_cmd"):
        st.grub_cmds += 1
    elif ipl.kind == "shim_mok":
        st.moks.append(ipl.text)


def _action(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, str)
    st.actions.append(fact)
    if ev.pcr == st.sb_pcr and fact == "UEFI Debug Mode":
        st.uefi_debug = True
        st.flag(ev, "tpm.uefi.debug_mode", fact, fatal=False)
    elif ev.pcr == st.sb_pcr and fact == "DMA Protection Disabled":
        st.dma_off = True


def _crtm_version(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, str)
    st.crtm.append(fact)


def _blob(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, BlobFact)
    st.blobs.append((fact.description, fact.base, fact.length))


def _handoff(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, tuple)
    st.tables.extend(fact)  # type: ignore[arg-type]  # handoff readings are table names


def _config_flags(ev: Event, fact: Fact, st: _State) -> None:
    assert isinstance(fact, str)
    st.config_flags.append(fact)


def _event_tag(ev: Event, fact: Fact, st: _State) -> None:
    if isinstance(fact, str):
        st.stub_tags.append(fact)
        if fact == "load_options":
            st.load_options.append(LoadOptions(ev.seq, dict(ev.digests)))
    elif isinstance(fact, SipaFact):
        if ev.pcr in st.separators:
            # The boot manager and winload close PCRs 12-14 with the WBCL separator when they
            # hand over; a later block was extended by the running system, which may describe
            # any module any way (a record naming a signer for a hash the loader measured
            # without one): fatal, never read as the loader's.
            st.flag(ev, "tpm.sipa.after_separator", f"SIPA block at event {ev.seq} after PCR "
                    f"{ev.pcr}'s separator", fatal=True)
        if fact.summary is not None:
            st.sipa_blocks.append((ev, fact.summary))
        elif st.sipa_error is None and fact.fold_error is not None:
            seq = fact.fold_error_seq if fact.fold_error_seq is not None else -1
            st.sipa_error = (seq, fact.fold_error)


def _possible_cmdline(ev: Event, st: _State) -> None:
    """Command lines by content: systemd-stub hashes its UTF-16 command line whole, and the
    label is not hashed, so any event of a command-line PCR whose data is hashed whole and
    could be such a line (even length, no NUL unit before the last) is read as one too."""
    data = ev.data
    if len(data) < 2 or len(data) % 2:
        return
    nul = data.find(b"\x00\x00")
    while nul >= 0 and nul % 2:
        nul = data.find(b"\x00\x00", nul + 1)
    if 0 <= nul < len(data) - 2:
        return  # a NUL before the end: no command line the stub measures looks so
    try:
        text = data.decode("utf-16-le")
    except UnicodeDecodeError:
        st.unverified_strings.append(ev.seq)
        return
    st.possible_cmdlines.append(PossibleCmdline(ev.seq, ev.type_name, text.rstrip("\x00")))


#: Event type -> fold step (types without one are checked and bound, then not interpreted).
_FOLDS: Final[dict[int, Callable[[Event, Fact, _State], None]]] = {
    EventType.EV_SEPARATOR: _separator,
    EventType.EV_EFI_VARIABLE_DRIVER_CONFIG: _driver_config,
    EventType.EV_EFI_VARIABLE_AUTHORITY: _authority,
    **dict.fromkeys(IMAGE_KINDS, _image),
    EventType.EV_EFI_VARIABLE_BOOT: _boot_variable,
    EventType.EV_EFI_VARIABLE_BOOT2: _boot_variable,
    EventType.EV_IPL: _ipl,
    EventType.EV_EFI_ACTION: _action,
    EventType.EV_S_CRTM_VERSION: _crtm_version,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB: _blob,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2: _blob,
    EventType.EV_POST_CODE: _blob,
    EventType.EV_S_CRTM_CONTENTS: _blob,
    EventType.EV_EFI_HANDOFF_TABLES: _handoff,
    EventType.EV_EFI_HANDOFF_TABLES2: _handoff,
    EventType.EV_EVENT_TAG: _event_tag,
    EventType.EV_PLATFORM_CONFIG_FLAGS: _config_flags,
}


def _note(ev: Event, reading: Reading, st: _State) -> bool:
    """Record a reading's flags, quirk and decode error; whether its fact may be folded."""
    for f in reading.flags:
        st.flag(ev, f.reason, f.detail, fatal=f.fatal)
    if reading.quirk is not None:
        st.quirks.append(QuirkUse(reading.quirk, ev.seq))
    if reading.error is not None:
        st.flag(ev, "tpm.event.undecodable", reading.error)
        return False
    return reading.usable


def _windows(st: _State, memo: Memo | None = None) -> sipa.WindowsBootConfig | None:
    """The SIPA blocks merged, with each block's own flags as provenance; None (and one fatal
    anomaly) if any block could not be summarised. With ``memo``, the merge is looked up and
    remembered in ``memo.windows_merges`` by the blocks' exact inputs: each block's (PCR, seq,
    type, data) under the log's registers, which is all its summary and site are made of (a
    fleet's Windows hosts log the same blocks at the same places)."""
    if st.sipa_error is not None:
        seq, message = st.sipa_error
        st.anomalies.append(Anomaly("tpm.event.undecodable", seq, 12, "EV_EVENT_TAG", message,
                                    True))
        return None
    if not st.sipa_blocks:
        return None
    for ev, summary in st.sipa_blocks:
        st.decoded[ev.seq] = DecodedEvent(ev.pcr, ev.event_type, ev.data,
                                          windows_flags=summary.own_flags)
    key: tuple[object, ...] | None = None
    win: sipa.WindowsBootConfig | None = None
    if memo is not None:
        key = (st.registers, *((ev.pcr, ev.seq, ev.event_type, ev.data)
                               for ev, _ in st.sipa_blocks))
        win = memo.windows_merges.get(key)
    if win is None:
        win = sipa.merge_blocks((summary for _, summary in st.sipa_blocks),
                                sites=[(ev.pcr, ev.seq) for ev, _ in st.sipa_blocks])
        if memo is not None and key is not None:
            memo.windows_merges.put(key, win, sum(len(ev.data) for ev, _ in st.sipa_blocks))
    for m in win.loaded_modules:
        if m.conflicts:
            _module_conflict(m, st)
    return win


def _module_conflict(m: sipa.WindowsModule, st: _State) -> None:
    """A non-fatal anomaly at the last describing site of a module whose measurements disagree
    (the rules read its disputed attributes as unknown, so it cannot help a host pass)."""
    site = next(s for s in reversed(m.sites) if s.described)
    seqs = sorted({s.seq for s in m.sites if s.described and s.seq is not None})
    what = "; ".join(f"{c.attribute} {list(c.values)}" for c in m.conflicts)
    st.anomalies.append(Anomaly(
        "tpm.sipa.module_conflict", site.seq if site.seq is not None else -1,
        site.pcr if site.pcr is not None else 13, "EV_EVENT_TAG",
        f"module {m.authenticode_hash.hex()[:16]}… measured at events {seqs} with "
        f"conflicting {what}"[:400], False))


def extract_claims(
    replayed: ReplayResult | Sequence[Event],
    *,
    pcr_values: Mapping[str, Mapping[int, bytes]] | None = None,
    banks: Sequence[str] | None = None,
    measurement_registers: Literal["tpm", "ccel"] = "tpm",
    ima: Iterable[ImaClaim] | None = None,
    memo: Memo | None = None,
    allowed_quirks: Iterable[str] = (),
) -> Claims:
    """Extract :class:`Claims` from replay-verified events.

    Pass the :class:`ReplayResult` of :func:`~services.tpm.replay.verify_replay`: the claims
    are only meaningful for events whose replay matched a quote, and then ``replay_verified``
    is True and banks, PCR values and replay quirks come from it. A plain event sequence is
    accepted for inspection (``replay_verified`` False; ``pcr_values``/``banks`` as given).
    ``measurement_registers="ccel"`` reads an Intel TDX CCEL log (MR 1 holds what PCR 7 would).
    ``allowed_quirks`` are the quirk ids the policy in force accepts
    (``spec.evidence.allowedQuirks``); the fold uses a ``structure`` quirk only when named there
    (:func:`services.tpm.quirks.accepted`), and reports it in ``quirks_applied``; an unknown
    id raises ``Unsupported``, as in :func:`~services.tpm.replay.verify_replay`.

    Each event is read on its own first (:func:`services.tpm.readings.read_events`: type and
    binding checks, decoding; with ``memo``, looked up and remembered there), then folded in
    log order. Never raises
    for bad event data: each undecodable event becomes an :class:`Anomaly` (fatal in the
    fail-closed PCRs, see the module docstring).
    """
    allowed = frozenset(allowed_quirks)
    if not allowed <= QUIRK_IDS:
        raise Unsupported(f"unknown quirk id(s) {sorted(allowed - QUIRK_IDS)} (known: "
                          f"{sorted(QUIRK_IDS)})")
    if isinstance(replayed, ReplayResult):
        events: Sequence[Event] = replayed.verified_events
        verified, pcrs = True, replayed.pcrs
        bank_names = tuple(replayed.banks)
        replay_quirks = [QuirkUse(q, -1) for q in replayed.applied_quirks]
    else:
        events, verified, pcrs = replayed, False, pcr_values or {}
        bank_names = tuple(banks) if banks is not None else tuple(pcrs)
        replay_quirks = []
    if not verified:  # verify_replay's events are the extending ones already
        events = [ev for ev in events if ev.event_type != _NO_ACTION and ev.pcr != PCR_NOT_EXTENDED]
    st = _State(_FAIL_CLOSED[measurement_registers], _SECURE_BOOT_PCR[measurement_registers],
                _CMDLINE_PCRS[measurement_registers], measurement_registers, events, allowed)
    st.quirks.extend(replay_quirks)
    folds = _FOLDS
    code_pcrs = _CODE_PCRS[measurement_registers]
    not_code = _NOT_CODE[measurement_registers]
    for ev, reading in zip(events, read_events(events, measurement_registers, memo),
                            strict=True):
        usable = reading.plain or _note(ev, reading, st)
        if ev.pcr in code_pcrs and not (usable and not reading.opaque
                                        and ev.event_type in not_code):
            # Code by default: whatever its (unhashed) label says, an event of a code PCR that
            # is not a separator or action string meeting its contract is code that ran, and
            # must not vanish from the boot chain.
            if usable and type(reading.fact) is ImageFact:
                _image(ev, reading.fact, st)
            else:
                _opaque_code(ev, st)
            continue
        if ev.pcr in st.cmdline_pcrs:
            if ev.event_type == _IPL and (reading.opaque or not usable):
                st.unverified_strings.append(ev.seq)  # what it says cannot be confirmed
                continue
            if ev.event_type != _IPL and usable and not reading.opaque:
                _possible_cmdline(ev, st)
        if not usable:
            continue
        fold = folds.get(ev.event_type)
        if fold is not None:
            fold(ev, reading.fact, st)
    win = _windows(st, memo)
    return Claims(
        replay_verified=verified,
        banks=bank_names,
        pcrs={b: dict(v) for b, v in pcrs.items()},
        secure_boot=st.secure_boot,
        uefi_debug_mode=st.uefi_debug,
        dma_protection_disabled=st.dma_off,
        key_databases=tuple(st.dbs),
        authorities=tuple(st.authorities),
        boot_applications=tuple(st.apps),
        boot_order=st.boot_order,
        boot_options=tuple(st.options),
        kernel_cmdlines=tuple(st.cmdlines),
        grub_commands=st.grub_cmds,
        shim_mok_variables=tuple(st.moks),
        efi_actions=tuple(st.actions),
        s_crtm_version=tuple(st.crtm),
        firmware_blobs=tuple(st.blobs),
        handoff_tables=tuple(st.tables),
        platform_config_flags=tuple(st.config_flags),
        linux_efi_stub_tags=tuple(st.stub_tags),
        windows=win,
        quirks_applied=tuple(st.quirks),
        anomalies=tuple(st.anomalies),
        ima=tuple(ima) if ima is not None else None,
        unverified_boot_strings=tuple(st.unverified_strings),
        kernel_load_options=tuple(st.load_options),
        possible_cmdlines=tuple(st.possible_cmdlines),
        decoded=st.decoded,
    )
