"""Windows Boot Configuration Log (WBCL): SIPA events inside EV_EVENT_TAG, with latches.

Windows boot manager / winload measure their configuration into PCRs 12-14 as
``EV_EVENT_TAG`` events (TCG PC Client PFP 1.05, 10.4.2 ``TCG_PCClientTaggedEvent``:
``taggedEventID u32, taggedEventDataSize u32, taggedEventData``). Each tagged event is itself
a SIPA event: ``SIPAEventType u32, SIPAEventSize u32, payload``. A type whose class bits
(``type & 0x000F0000``) are ``0x00010000`` is a *container* whose payload is a further sequence
of SIPA events (e.g. ``SIPAEVENT_TRUSTBOUNDARY`` 0x40010001, ``SIPAEVENT_LOADEDMODULE_AGGREGATION``
0x40010003, ``SIPAEVENT_ELAM_AGGREGATION`` 0x40010002).

Event type numbers: Microsoft's ``wbcl.h`` (Windows SDK) as transcribed in
google/go-attestation ``attest/win_events.go`` (facts only). Payload layouts of
``SIPAEVENT_SI_POLICY`` and the revocation lists: ``wbcl.h``
``SIPAEVENT_SI_POLICY_PAYLOAD`` / ``SIPAEVENT_REVOCATION_LIST_PAYLOAD``.

Latch semantics (as go-attestation's ``WinEvents``): a flag that weakens security when set
(boot debugging, kernel debugger, hypervisor debug, test signing, flight signing, safe mode,
WinPE) counts as on if *any* measurement says on; a flag that strengthens security when set
(code integrity) counts as off if *any* measurement says off. ``None`` = never measured.

DEP: ``SIPAEVENT_DATAEXECUTIONPREVENTION`` carries a UINT64 that hostgate reads as the BCD
``nx`` policy enumeration (0 OptIn, 1 OptOut, 2 AlwaysOff, 3 AlwaysOn), not as a boolean as
go-attestation does: both real Windows logs in the corpus (W03, W04) measure 0, the Windows
client default OptIn, which a boolean reading would call "DEP off". ``dep`` therefore latches
off only when AlwaysOff (2) is ever measured; the raw values are kept in ``dep_policy``.

Transfer control: ``SIPAEVENT_TRANSFER_CONTROL`` (UINT32) values are kept raw in
``transfer_control``. go-attestation reads the last one as ``ColdBoot`` (1: the boot manager
handed over to winload, not winresume); hostgate derives no cold-boot flag yet: W04 measures
1 and then 5 (a Hyper-V boot, so plausibly a later hand-over to the hypervisor loader, not a
resume), and a flag read from an unknown value would be a guess. No policy field reads it.

Loaded modules: the loader measures each image it loads once per boundary it crosses (in the
corpus: its Authenticode hash and image base in PCR 12, its path, size, hash algorithm,
validation and signer in PCR 13). :func:`merge_blocks` makes one :class:`WindowsModule` per
Authenticode hash, with every measurement site (PCR, event seq, image base). A measurement that
describes the image (anything beyond hash and image base) is compared with every other one:
attributes they give different values (absence counting as a value) are a
:class:`ModuleConflict`, and the merged attribute is then None (unknown), never one side's
value; :attr:`WindowsModule.signer` is None when the signer is in dispute. A module with no
Authenticode hash is never merged with another.

Containers are walked recursively, bounded by :data:`MAX_SIPA_DEPTH` and
:data:`MAX_SIPA_EVENTS`; unknown SIPA types are kept as opaque leaves (they are covered by the
tagged event's digest, so skipping their meaning is safe). Untrusted until replay-verified.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.tpm._datareader import DataReader, decode_utf16
from services.tpm.algorithms import SHA_BANKS
from services.tpm.errors import LimitExceeded, MalformedEventData

__all__ = [
    "FLAG_ATTRIBUTES",
    "MAX_SIPA_DEPTH",
    "MAX_SIPA_EVENTS",
    "BlockSummary",
    "LoadedModule",
    "ModuleConflict",
    "ModuleSite",
    "SiPolicy",
    "SipaEvent",
    "TaggedEvent",
    "WindowsBootConfig",
    "WindowsModule",
    "decode_sipa_events",
    "decode_tagged_event",
    "fold_windows_config",
    "merge_blocks",
    "merge_modules",
    "summarise_block",
]

MAX_SIPA_DEPTH: Final = 8
"""Deepest container nesting accepted (real WBCLs nest 2-3 deep; go-attestation uses 8)."""
MAX_SIPA_EVENTS: Final = 16384
"""Most SIPA events in one tagged event (the largest real block in the corpus has ~2,000)."""

SIPA_TYPE_MASK: Final = 0x000F0000
SIPA_CONTAINER: Final = 0x00010000

# SIPA event types (wbcl.h; numbers as in go-attestation win_events.go).
TRUST_BOUNDARY: Final = 0x40010001
ELAM_AGGREGATION: Final = 0x40010002
LOADED_MODULE_AGGREGATION: Final = 0x40010003
BOOT_COUNTER: Final = 0x00020002
TRANSFER_CONTROL: Final = 0x00020003
BITLOCKER_UNLOCK: Final = 0x00020005
BOOT_DEBUGGING: Final = 0x00040001
BOOT_REVOCATION_LIST: Final = 0x00040002
OS_KERNEL_DEBUG: Final = 0x00050001
CODE_INTEGRITY: Final = 0x00050002
TEST_SIGNING: Final = 0x00050003
DATA_EXECUTION_PREVENTION: Final = 0x00050004
SAFE_MODE: Final = 0x00050005
WIN_PE: Final = 0x00050006
SYSTEM_ROOT: Final = 0x00050009
HYPERVISOR_LAUNCH_TYPE: Final = 0x0005000A
HYPERVISOR_DEBUG: Final = 0x0005000D
SI_POLICY: Final = 0x0005000F
VSM_LAUNCH_TYPE: Final = 0x00050012
OS_REVOCATION_LIST: Final = 0x00050013
FLIGHT_SIGNING: Final = 0x00050021
FILE_PATH: Final = 0x00070001
IMAGE_SIZE: Final = 0x00070002
HASH_ALGORITHM_ID: Final = 0x00070003
AUTHENTICODE_HASH: Final = 0x00070004
AUTHORITY_ISSUER: Final = 0x00070005
AUTHORITY_SERIAL: Final = 0x00070006
IMAGE_BASE: Final = 0x00070007
AUTHORITY_PUBLISHER: Final = 0x00070008
AUTHORITY_SHA1_THUMBPRINT: Final = 0x00070009
IMAGE_VALIDATED: Final = 0x0007000A
ELAM_KEYNAME: Final = 0x00090001
VBS_HVCI_POLICY: Final = 0x000A0007

#: Windows CALG_* ids (wincrypt.h) of the hashes SIPA uses, low byte -> bank name: CALG_SHA1,
#: CALG_SHA_256, CALG_SHA_384, CALG_SHA_512 (the SHA banks, in order) and CALG_MD5.
_CALG: Final = {**dict(zip((0x04, 0x0C, 0x0D, 0x0E), SHA_BANKS, strict=True)), 0x03: "md5"}


@dataclass(frozen=True, slots=True)
class TaggedEvent:
    """``TCG_PCClientTaggedEvent``: id, data and the data's absolute offset in the log."""

    event_id: int
    data: bytes
    data_offset: int


def decode_tagged_event(data: bytes, *, base: int = 0, seq: int | None = None) -> TaggedEvent:
    """Decode EV_EVENT_TAG data; ``taggedEventDataSize`` must fill the data exactly."""
    r = DataReader(data, base=base, seq=seq)
    event_id = r.u32("taggedEventID")
    size = r.u32("taggedEventDataSize")
    if size != r.remaining:
        raise r.error(
            f"taggedEventDataSize {size} but {r.remaining} bytes follow", "taggedEventDataSize",
            at=4,
        )
    offset = r.offset
    return TaggedEvent(event_id, r.rest(), offset)


@dataclass(frozen=True, slots=True)
class SipaEvent:
    """One SIPA event: type, absolute payload offset, payload (leaves) or children (containers)."""

    type: int
    offset: int
    payload: bytes
    children: tuple[SipaEvent, ...] = ()

    @property
    def is_container(self) -> bool:
        """Whether this type's class bits mark a container."""
        return self.type & SIPA_TYPE_MASK == SIPA_CONTAINER

    def walk(self) -> Iterator[SipaEvent]:
        """This event and every descendant, depth first (depth is bounded at decode time)."""
        yield self
        for child in self.children:
            yield from child.walk()


def decode_sipa_events(
    data: bytes, *, base: int = 0, seq: int | None = None
) -> tuple[SipaEvent, ...]:
    """Decode a sequence of SIPA events (e.g. a whole EV_EVENT_TAG's data), recursing into
    containers. Raises ``LimitExceeded`` beyond :data:`MAX_SIPA_DEPTH` nesting or
    :data:`MAX_SIPA_EVENTS` events, ``MalformedEventData`` on a size that overruns its parent."""
    budget = [MAX_SIPA_EVENTS]
    return _sequence(data, 0, len(data), base, seq, 0, budget)


_SIPA_HEADER: Final = struct.Struct("<II")


def _sequence(
    data: bytes, pos: int, end: int, base: int, seq: int | None, depth: int, budget: list[int]
) -> tuple[SipaEvent, ...]:
    """The SIPA events in ``data[pos:end]`` (``base`` is ``data``'s absolute offset). One
    ``unpack_from`` per header; bounds and error offsets/messages are a bounded reader's."""
    out: list[SipaEvent] = []
    unpack = _SIPA_HEADER.unpack_from
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise LimitExceeded(
                f"more than {MAX_SIPA_EVENTS} SIPA events", offset=base + pos, seq=seq,
                field="SIPAEventType",
            )
        left = end - pos
        if left < 8:
            field_name, at, avail = (
                ("SIPAEventType", pos, left) if left < 4 else ("SIPAEventSize", pos + 4, left - 4)
            )
            raise MalformedEventData(
                f"{field_name} needs 4 bytes but only {avail} remain", offset=base + at, seq=seq,
                field=field_name,
            )
        etype, size = unpack(data, pos)
        body = pos + 8
        if size > end - body:
            raise MalformedEventData(
                f"SIPA event 0x{etype:08x} size {size} overruns its {end - body} bytes",
                offset=base + pos + 4, seq=seq, field="SIPAEventSize",
            )
        pos = body + size
        if etype & SIPA_TYPE_MASK == SIPA_CONTAINER:
            if depth + 1 > MAX_SIPA_DEPTH:
                raise LimitExceeded(
                    f"SIPA containers nested deeper than {MAX_SIPA_DEPTH}", offset=base + body,
                    seq=seq, field="depth",
                )
            children = _sequence(data, body, pos, base, seq, depth + 1, budget)
            out.append(SipaEvent(etype, base + body, b"", children))
        else:
            out.append(SipaEvent(etype, base + body, data[body:pos]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class LoadedModule:
    """A ``SIPAEVENT_LOADEDMODULE_AGGREGATION``: one measurement of an image the Windows loader
    loaded (a block may hold several of one image; :func:`merge_modules` joins them)."""

    file_path: str | None
    authenticode_hash: bytes
    hash_algorithm: str | None
    image_size: int | None
    image_validated: bool | None
    authority_issuer: str | None
    authority_publisher: str | None
    authority_serial: bytes | None
    authority_sha1_thumbprint: bytes | None
    image_base: int | None = None

    @property
    def describes(self) -> bool:
        """Whether this measurement says more than the hash and load address (path, size,
        algorithm, validation or signer): only such measurements are compared for conflicts."""
        return any(getattr(self, a) is not None for a in MODULE_ATTRIBUTES)


MODULE_ATTRIBUTES: Final = ("file_path", "hash_algorithm", "image_size", "image_validated",
                            "authority_issuer", "authority_publisher", "authority_serial",
                            "authority_sha1_thumbprint")
"""The attributes of a loaded module that describe the image (compared across measurements)."""
SIGNER_ATTRIBUTES: Final = frozenset({"image_validated", "authority_issuer",
                                      "authority_publisher", "authority_serial",
                                      "authority_sha1_thumbprint"})
"""The attributes that say who signed a module: a conflict in any leaves it without a signer."""


@dataclass(frozen=True, slots=True)
class ModuleSite:
    """Where a module was measured: the PCR and event seq of the EV_EVENT_TAG holding the
    ``SIPAEVENT_LOADEDMODULE_AGGREGATION`` (None when the caller gave none), the image base it
    names, and whether it described the image (:attr:`LoadedModule.describes`)."""

    pcr: int | None
    seq: int | None
    image_base: int | None
    described: bool


@dataclass(frozen=True, slots=True)
class ModuleConflict:
    """Measurements of one Authenticode hash that disagree on ``attribute``: each distinct
    value as text (bytes in hex; None where a describing measurement did not give it)."""

    attribute: str
    values: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class WindowsModule:
    """One image the Windows loader loaded, merged by Authenticode hash across every SIPA block
    and PCR it was measured in (``sites``, in log order). Each attribute is the value every
    describing measurement gave, or None: never measured, or measured with different values
    (then listed in ``conflicts``)."""

    file_path: str | None
    authenticode_hash: bytes
    hash_algorithm: str | None
    image_size: int | None
    image_validated: bool | None
    authority_issuer: str | None
    authority_publisher: str | None
    authority_serial: bytes | None
    authority_sha1_thumbprint: bytes | None
    sites: tuple[ModuleSite, ...] = ()
    conflicts: tuple[ModuleConflict, ...] = ()

    @property
    def signer(self) -> tuple[str, ...] | None:
        """The names (publisher, then issuer) of the one signer every describing measurement
        gives, or None: none was measured, the loader did not say it validated the image
        (``ImageValidated``), or the measurements disagree on any signer attribute (one
        without a publisher against one with counts). Untrusted unless replay-verified, and
        meaningful only if Secure Boot and code integrity were on (the policy checks both)."""
        if self.image_validated is not True:
            return None
        if any(c.attribute in SIGNER_ATTRIBUTES for c in self.conflicts):
            return None
        names = tuple(x for x in (self.authority_publisher, self.authority_issuer) if x)
        return names or None


@dataclass(frozen=True, slots=True)
class SiPolicy:
    """``SIPAEVENT_SI_POLICY_PAYLOAD``: a code-integrity policy's name, version and digest."""

    name: str
    version: int
    hash_algorithm: str | None
    digest: bytes


@dataclass(frozen=True, slots=True)
class WindowsBootConfig:
    """What the WBCL says about a Windows boot, after latching (see module docstring)."""

    boot_debugging: bool | None = None
    kernel_debugger: bool | None = None
    hypervisor_debug: bool | None = None
    test_signing: bool | None = None
    flight_signing: bool | None = None
    safe_mode: bool | None = None
    win_pe: bool | None = None
    code_integrity: bool | None = None
    dep: bool | None = None
    dep_policy: tuple[int, ...] = ()
    hypervisor_launch_type: tuple[int, ...] = ()
    vsm_launch_type: tuple[int, ...] = ()
    hvci_policy: tuple[int, ...] = ()
    boot_revision_lists: tuple[bytes, ...] = ()
    os_revision_lists: tuple[bytes, ...] = ()
    si_policies: tuple[SiPolicy, ...] = ()
    elam_drivers: tuple[str, ...] = ()
    loaded_modules: tuple[WindowsModule, ...] = ()
    """One record per Authenticode hash (:func:`merge_modules`), in order of first measurement."""
    system_root: tuple[str, ...] = ()
    boot_counter: int | None = None
    transfer_control: tuple[int, ...] = ()
    """``SIPAEVENT_TRANSFER_CONTROL`` values in log order (raw; see the module docstring)."""
    sipa_event_count: int = 0
    unknown_types: tuple[int, ...] = field(default=())


def _int(ev: SipaEvent, seq: int | None, name: str) -> int:
    if not 1 <= len(ev.payload) <= 8:
        raise DataReader(ev.payload, base=ev.offset, seq=seq).error(
            f"{name} payload of {len(ev.payload)} bytes is not an integer", name
        )
    return int.from_bytes(ev.payload, "little")


def _text(ev: SipaEvent, seq: int | None, name: str) -> str:
    raw = ev.payload[: len(ev.payload) & ~1]
    try:  # what decode_utf16 does for even-length text, without building a reader
        return raw.decode("utf-16-le").rstrip("\x00")
    except UnicodeDecodeError:
        pass
    r = DataReader(ev.payload, base=ev.offset, seq=seq)
    return decode_utf16(raw, r, name, at=0)  # raises, naming the offset


def _si_policy(ev: SipaEvent, seq: int | None) -> SiPolicy:
    r = DataReader(ev.payload, base=ev.offset, seq=seq)
    version = r.u64("PolicyVersion")
    name_len = r.u16("PolicyNameLength")
    alg = r.u16("HashAlgID")
    digest_len = r.u32("DigestLength")
    at = r.pos
    name = decode_utf16(r.take(name_len, "PolicyName"), r, "PolicyName", at=at)
    digest = r.take(digest_len, "Digest")
    return SiPolicy(name, version, _CALG.get(alg & 0xFF), digest)


def _revocation(ev: SipaEvent, seq: int | None) -> bytes:
    r = DataReader(ev.payload, base=ev.offset, seq=seq)
    r.take(8, "CreationTime")
    digest_len = r.u32("DigestLength")
    r.u16("HashAlgID")
    return r.take(digest_len, "Digest")


def _module(ev: SipaEvent, seq: int | None) -> LoadedModule:
    vals: dict[int, SipaEvent] = {}
    for child in ev.children:
        vals.setdefault(child.type, child)

    def text(t: int, name: str) -> str | None:
        return _text(vals[t], seq, name) if t in vals else None

    def raw(t: int) -> bytes | None:
        return vals[t].payload if t in vals else None

    alg = _int(vals[HASH_ALGORITHM_ID], seq, "HashAlgorithmID") if HASH_ALGORITHM_ID in vals else None
    return LoadedModule(
        file_path=text(FILE_PATH, "FilePath"),
        authenticode_hash=raw(AUTHENTICODE_HASH) or b"",
        hash_algorithm=_CALG.get(alg & 0xFF) if alg is not None else None,
        image_size=_int(vals[IMAGE_SIZE], seq, "ImageSize") if IMAGE_SIZE in vals else None,
        image_validated=(
            _int(vals[IMAGE_VALIDATED], seq, "ImageValidated") != 0
            if IMAGE_VALIDATED in vals
            else None
        ),
        authority_issuer=text(AUTHORITY_ISSUER, "AuthorityIssuer"),
        authority_publisher=text(AUTHORITY_PUBLISHER, "AuthorityPublisher"),
        authority_serial=raw(AUTHORITY_SERIAL),
        authority_sha1_thumbprint=raw(AUTHORITY_SHA1_THUMBPRINT),
        image_base=_int(vals[IMAGE_BASE], seq, "ImageBase") if IMAGE_BASE in vals else None,
    )


_LATCH_ON: Final = {
    BOOT_DEBUGGING: "boot_debugging",
    OS_KERNEL_DEBUG: "kernel_debugger",
    HYPERVISOR_DEBUG: "hypervisor_debug",
    TEST_SIGNING: "test_signing",
    FLIGHT_SIGNING: "flight_signing",
    SAFE_MODE: "safe_mode",
    WIN_PE: "win_pe",
}
_LATCH_OFF: Final = {CODE_INTEGRITY: "code_integrity"}
_LATCH_OFF_NAMES: Final = frozenset(_LATCH_OFF.values())
#: BCD ``nx`` (BcdOSLoaderInteger_NxPolicy) value meaning DEP is disabled.
NX_ALWAYS_OFF: Final = 2
_LISTS: Final = {
    DATA_EXECUTION_PREVENTION: "dep_policy",
    HYPERVISOR_LAUNCH_TYPE: "hypervisor_launch_type",
    VSM_LAUNCH_TYPE: "vsm_launch_type",
    VBS_HVCI_POLICY: "hvci_policy",
    TRANSFER_CONTROL: "transfer_control",
}


FLAG_ATTRIBUTES: Final = (*_LATCH_ON.values(), *_LATCH_OFF.values(), "dep")
"""The latched boolean attributes of :class:`WindowsBootConfig` (debug flags, code integrity,
DEP): the ones :attr:`BlockSummary.flags` holds per block."""


@dataclass(frozen=True, slots=True)
class BlockSummary:
    """What one SIPA block (the events of one EV_EVENT_TAG) says on its own, latched within the
    block. It holds no offset or sequence number, so a block that recurs byte for byte across a
    fleet (the same Windows build loads the same modules) is summarised once; :func:`merge_blocks`
    folds summaries in log order into one :class:`WindowsBootConfig`."""

    flags: tuple[tuple[str, bool | None], ...]
    """The block's own latched :data:`FLAG_ATTRIBUTES`, in that order."""
    lists: tuple[tuple[int, ...], ...]
    """Values of each :data:`_LISTS` attribute, in that table's order."""
    boot_revision_lists: tuple[bytes, ...]
    os_revision_lists: tuple[bytes, ...]
    si_policies: tuple[SiPolicy, ...]
    elam_drivers: tuple[str, ...]
    loaded_modules: tuple[LoadedModule, ...]
    system_root: tuple[str, ...]
    boot_counter: int | None
    event_count: int
    unknown_types: frozenset[int]

    @property
    def own_flags(self) -> dict[str, bool | None]:
        """:attr:`flags` as a dict (what folding this block alone gives for each flag)."""
        return dict(self.flags)


def summarise_block(seq: int | None, events: tuple[SipaEvent, ...]) -> BlockSummary:
    """The :class:`BlockSummary` of one decoded block. Raises ``MalformedEventData`` (naming
    ``seq`` and the byte offset) for a known SIPA type whose payload does not have its
    documented shape."""
    own: dict[str, bool | None] = dict.fromkeys(FLAG_ATTRIBUTES)
    lists: dict[int, list[int]] = {t: [] for t in _LISTS}
    boot_rev: list[bytes] = []
    os_rev: list[bytes] = []
    policies: list[SiPolicy] = []
    elam: list[str] = []
    modules: list[LoadedModule] = []
    roots: list[str] = []
    unknown: set[int] = set()
    counter: int | None = None
    count = 0
    # depth-first, pre-order (as SipaEvent.walk), without a generator per event
    stack = list(reversed(events))
    while stack:
        ev = stack.pop()
        if ev.children:
            stack.extend(reversed(ev.children))
        count += 1
        t = ev.type
        if t in _LATCH_ON:
            name = _LATCH_ON[t]
            own[name] = bool(own[name]) or _int(ev, seq, name) != 0
        elif t in _LATCH_OFF:
            name = _LATCH_OFF[t]
            on = _int(ev, seq, name) != 0
            mine = own[name]
            own[name] = on if mine is None else (mine and on)
        elif t in _LISTS:
            lists[t].append(_int(ev, seq, _LISTS[t]))
        elif t == SI_POLICY:
            policies.append(_si_policy(ev, seq))
        elif t == BOOT_REVOCATION_LIST:
            boot_rev.append(_revocation(ev, seq))
        elif t == OS_REVOCATION_LIST:
            os_rev.append(_revocation(ev, seq))
        elif t == LOADED_MODULE_AGGREGATION:
            modules.append(_module(ev, seq))
        elif t == ELAM_KEYNAME:
            elam.append(_text(ev, seq, "ElamKeyname"))
        elif t == SYSTEM_ROOT:
            roots.append(_text(ev, seq, "SystemRoot"))
        elif t == BOOT_COUNTER:
            counter = _int(ev, seq, "BootCounter")
        elif not ev.is_container and t & SIPA_TYPE_MASK in (0, 0x000B0000, 0x000F0000):
            unknown.add(t)
    dep_values = lists[DATA_EXECUTION_PREVENTION]
    if dep_values:
        own["dep"] = NX_ALWAYS_OFF not in dep_values
    return BlockSummary(
        flags=tuple(own.items()),
        lists=tuple(tuple(v) for v in lists.values()),
        boot_revision_lists=tuple(boot_rev),
        os_revision_lists=tuple(os_rev),
        si_policies=tuple(policies),
        elam_drivers=tuple(elam),
        loaded_modules=tuple(modules),
        system_root=tuple(roots),
        boot_counter=counter,
        event_count=count,
        unknown_types=frozenset(unknown),
    )


def _shown(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_describing: Final = operator.attrgetter(*MODULE_ATTRIBUTES)
"""A measurement's describing attributes as a tuple (C speed: a Windows log holds hundreds)."""
_NOTHING: Final = (None,) * len(MODULE_ATTRIBUTES)


def merge_modules(
    measured: Iterable[tuple[int | None, int | None, LoadedModule]],
) -> tuple[WindowsModule, ...]:
    """One :class:`WindowsModule` per Authenticode hash from ``(pcr, seq, measurement)`` in log
    order (see the module docstring): sites kept, describing measurements compared, each
    disputed attribute None and listed in ``conflicts``. Measurements without a hash are kept
    apart, one module each (nothing says two of them are one image)."""
    groups: dict[bytes | int, list[tuple[int | None, int | None, LoadedModule]]] = {}
    for i, (pcr, seq, m) in enumerate(measured):
        groups.setdefault(m.authenticode_hash or i, []).append((pcr, seq, m))
    out: list[WindowsModule] = []
    for group in groups.values():
        # Each measurement's describing attributes, read once (a fleet's Windows log holds
        # hundreds of measurements; most hashes are described once or identically).
        rows = [(pcr, seq, m, _describing(m)) for pcr, seq, m in group]
        described = [row for *_, row in rows if row != _NOTHING]
        distinct = list(dict.fromkeys(described))
        conflicts: list[ModuleConflict] = []
        if len(distinct) <= 1:
            agreed: tuple[object, ...] = distinct[0] if distinct else _NOTHING
        else:
            merged: list[object] = []
            for index, attr in enumerate(MODULE_ATTRIBUTES):
                seen = list(dict.fromkeys(row[index] for row in described))
                if len(seen) > 1:
                    shown = sorted({_shown(v) for v in seen},
                                   key=lambda t: (t is not None, t or ""))
                    conflicts.append(ModuleConflict(attr, tuple(shown)))
                merged.append(seen[0] if len(seen) == 1 else None)
            agreed = tuple(merged)
        values = dict(zip(MODULE_ATTRIBUTES, agreed, strict=True))
        out.append(WindowsModule(
            authenticode_hash=group[0][2].authenticode_hash,
            sites=tuple(ModuleSite(pcr, seq, m.image_base, row != _NOTHING)
                        for pcr, seq, m, row in rows),
            conflicts=tuple(conflicts),
            **values,  # type: ignore[arg-type]
        ))
    return tuple(out)


def merge_blocks(
    summaries: Iterable[BlockSummary],
    *,
    sites: Sequence[tuple[int | None, int | None]] | None = None,
) -> WindowsBootConfig:
    """Fold block summaries (in log order) into one latched :class:`WindowsBootConfig`: a
    weakening flag is on if any block says on, code integrity is off if any block says off,
    lists concatenate, the last measured boot counter wins, loaded modules merge by hash
    (:func:`merge_modules`; ``sites`` gives each block's ``(pcr, seq)``, else unknown)."""
    blocks = list(summaries)
    if sites is not None and len(sites) != len(blocks):
        raise ValueError(f"{len(sites)} sites for {len(blocks)} SIPA blocks")
    where = list(sites) if sites is not None else [(None, None)] * len(blocks)
    flags: dict[str, bool | None] = dict.fromkeys(FLAG_ATTRIBUTES)
    for block in blocks:
        for name, value in block.flags:
            if value is None or name == "dep":
                continue
            prior = flags[name]
            if name in _LATCH_OFF_NAMES:
                flags[name] = value if prior is None else (prior and value)
            else:
                flags[name] = bool(prior) or value
    lists = {name: tuple(v for block in blocks for v in block.lists[i])
             for i, name in enumerate(_LISTS.values())}
    if lists["dep_policy"]:
        flags["dep"] = NX_ALWAYS_OFF not in lists["dep_policy"]

    def joined(attribute: str) -> tuple[Any, ...]:
        return tuple(x for block in blocks for x in getattr(block, attribute))

    return WindowsBootConfig(
        **flags,  # type: ignore[arg-type]
        **lists,  # type: ignore[arg-type]
        boot_revision_lists=joined("boot_revision_lists"),
        os_revision_lists=joined("os_revision_lists"),
        si_policies=joined("si_policies"),
        elam_drivers=joined("elam_drivers"),
        loaded_modules=merge_modules((pcr, seq, m) for (pcr, seq), block in zip(
            where, blocks, strict=True) for m in block.loaded_modules),
        system_root=joined("system_root"),
        boot_counter=next((b.boot_counter for b in reversed(blocks)
                           if b.boot_counter is not None), None),
        sipa_event_count=sum(b.event_count for b in blocks),
        unknown_types=tuple(sorted(set().union(*(b.unknown_types for b in blocks)))),
    )


def fold_windows_config(
    blocks: Iterable[tuple[int | None, tuple[SipaEvent, ...]]],
) -> WindowsBootConfig:
    """Fold decoded SIPA blocks (``(event seq, events)`` in log order) into one latched
    :class:`WindowsBootConfig` (module sites name the seq, no PCR). Raises
    ``MalformedEventData`` for a known SIPA type whose payload does not have its documented
    shape. Only meaningful for replay-verified events."""
    listed = list(blocks)
    return merge_blocks((summarise_block(seq, events) for seq, events in listed),
                        sites=[(None, seq) for seq, _ in listed])
