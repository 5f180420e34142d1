"""What one boot event says on its own: the pure half of claim extraction.

:func:`~services.tpm.claims.extract_claims` works in two steps. This module is the first: for
one event, :func:`read_event` runs every check and decoder whose outcome depends on the event
alone (its type against its PCR, the binding of its data to its digests, the decoding of its
data) and returns a :class:`Reading`. The second step, the fold in :mod:`services.tpm.claims`,
applies readings in log order to what depends on the rest of the log (separators already seen,
duplicate Secure Boot variables, the authorities pending for the next image, sequence numbers).

A reading is a function of (measurement registers, PCR, type, data, digests) only and holds no
byte offset or sequence number. A fleet measures the same firmware, key databases, boot loaders
and Windows builds on every host, so most events of a log were seen before, byte for byte: a
caller's :class:`~services.tpm.memo.Memo` (``memo=``) remembers readings keyed by exactly those
values (:func:`reading_key`). A reading that names offsets of one log (a failed decoding) is
never remembered.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from services.tpm import sipa
from services.tpm.algorithms import SHA_BANKS, hash_constructor
from services.tpm.binding_consequences import data_decides
from services.tpm.bindings import BindingResult, bound_payload, check_binding_of_payload
from services.tpm.claim_records import UNVERIFIED_DATA, BootOption, DecodedEvent, KeyEntry
from services.tpm.errors import MalformedInput, Unsupported
from services.tpm.eventlog import Event, EventType
from services.tpm.ipl import LINUX_EFI_INITRD_TAG, LINUX_EFI_LOAD_OPTIONS_TAG, IplString, decode_ipl
from services.tpm.memo import Memo
from services.tpm.pcr_types import (
    EFI_ACTION_STRINGS,
    ERROR_SEPARATORS,
    SEPARATOR_VALUES,
    TOLERANT_PCRS,
    WBCL_SEPARATOR,
    allowed_types,
    content_problem,
)
from services.tpm.uefi import (
    KEY_DATABASES,
    UefiVariableData,
    decode_boot_order,
    decode_firmware_blob,
    decode_firmware_blob2,
    decode_handoff_tables,
    decode_handoff_tables2,
    decode_image_load_event,
    decode_load_option,
    decode_signature_data,
    decode_signature_lists,
    decode_uefi_variable_data,
    decode_utf16_string,
    guid_name,
)

__all__ = [
    "CERT_AUTHORITIES",
    "IMAGE_KINDS",
    "AuthorityFact",
    "BlobFact",
    "Fact",
    "Flag",
    "ImageFact",
    "Reading",
    "SipaFact",
    "VariableFact",
    "read_event",
    "read_events",
    "reading_key",
]

Registers = Literal["tpm", "ccel"]

_KEY_BY_DIGEST_ABOVE: Final = 1024
"""Longer data is keyed by its SHA-256 (cheaper to compare, and the key holds 32 bytes)."""
_MEMO_VALUE_MAX: Final = 256 * 1024
"""Largest key database value whose entries a memo remembers (real dbx: ~25 KiB)."""

_KNOWN_TYPES: Final = frozenset(int(t) for t in EventType)
_WINDOWS_PCRS: Final = frozenset({12, 13, 14})
_LINUX_STUB_PCR: Final = {"tpm": 9, "ccel": 3}
"""The only register the Linux EFI stub measures its tagged events into (libstub: PCR 9; a
CCEL maps PCR 9 to MR 3). A Linux tag id anywhere else is read as what that PCR holds."""
_BOOT_OPTION: Final = re.compile(r"^Boot[0-9A-Fa-f]{4}$")
#: Authority variables whose value is an EFI_SIGNATURE_DATA (or shim's bare certificate);
#: others (SbatLevel, MokListTrusted, MokSBState...) are recorded by value digest.
CERT_AUTHORITIES: Final = frozenset({"db", "dbx", "MokList", "MokListRT", "Shim", "vendor_db"})
IMAGE_KINDS: Final[dict[int, str]] = {
    EventType.EV_EFI_BOOT_SERVICES_APPLICATION: "application",
    EventType.EV_EFI_BOOT_SERVICES_DRIVER: "boot_driver",
    EventType.EV_EFI_RUNTIME_SERVICES_DRIVER: "runtime_driver",
}


# --- facts: an event's decoded data, offset-free ------------------------------------------
@dataclass(frozen=True, slots=True)
class VariableFact:
    """EV_EFI_VARIABLE_DRIVER_CONFIG. ``variable.data_offset`` is relative to the event's data
    (the fold rebases it). ``key_entries`` for a key database; ``entries_error`` if its
    signature lists do not decode (the Secure Boot checks of the fold still apply)."""

    variable: UefiVariableData
    key_entries: tuple[KeyEntry, ...] | None = None
    entries_error: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorityFact:
    """EV_EFI_VARIABLE_AUTHORITY: the entry (or variable, ``kind`` "variable") that authorised
    the next image."""

    variable: str
    kind: str
    owner: str
    digest: bytes
    subject: str | None


@dataclass(frozen=True, slots=True)
class ImageFact:
    """EV_EFI_BOOT_SERVICES_APPLICATION / *_DRIVER: what was loaded, from where."""

    kind: str
    device_path: str
    file_path: str | None


@dataclass(frozen=True, slots=True)
class BlobFact:
    """A firmware blob (description, base, length) or a POST code / CRTM string."""

    description: str | None
    base: int
    length: int


@dataclass(frozen=True, slots=True)
class SipaFact:
    """A Windows SIPA block in PCR 12-14: its summary, or why it could not be summarised (the
    fold then reports it the way a failed fold of all blocks is reported)."""

    summary: sipa.BlockSummary | None
    fold_error: str | None = None
    fold_error_seq: int | None = None


Fact = (
    VariableFact | AuthorityFact | ImageFact | BlobFact | SipaFact | BootOption | DecodedEvent
    | tuple[int, ...] | tuple[str, ...] | str | None
)
"""Per event type: see :data:`_READERS` (``tuple[int, ...]`` is a BootOrder, ``tuple[str, ...]``
handoff table names, ``str`` an action, CRTM version, config flags or Linux EFI-stub tag; an
EV_IPL reads as its provenance record, a :class:`DecodedEvent` holding the decoded string)."""


@dataclass(frozen=True, slots=True)
class Flag:
    """An anomaly an event shows on its own; the fold adds its seq and PCR. ``fatal`` None:
    fatal exactly when the event's PCR is a fail-closed one."""

    reason: str
    detail: str
    fatal: bool | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """What :func:`read_event` found. ``usable`` False: a type or binding check failed and the
    data must not be interpreted (``flags`` say why). ``error``: the data does not decode as its
    type says (the detail of a ``tpm.event.undecodable`` anomaly). ``opaque``: the type's digest
    is not over the event's data (an image, a blob, a file), so only the digest says what was
    measured (``services.tpm.pcr_types.CODE_PCRS`` counts such events as code)."""

    flags: tuple[Flag, ...] = ()
    usable: bool = True
    quirk: str | None = None
    fact: Fact = None
    error: str | None = None
    opaque: bool = False
    plain: bool = field(init=False)
    """Usable, with no flag, quirk or error: the fold only has to apply :attr:`fact`."""

    def __post_init__(self) -> None:
        plain = self.usable and not self.flags and self.quirk is None and self.error is None
        object.__setattr__(self, "plain", plain)

    @property
    def rememberable(self) -> bool:
        """False when the reading names byte offsets or events of one log."""
        if self.error is not None:
            return False
        fact = self.fact
        if type(fact) is VariableFact:
            return fact.entries_error is None
        if type(fact) is SipaFact:
            return fact.fold_error is None
        return True


# --- readers: event -> fact; raise MalformedInput naming offsets in this log ----------------
def _variable_fact(ev: Event, memo: Memo | None) -> VariableFact:
    var = decode_uefi_variable_data(ev.data, base=ev.data_offset, seq=ev.seq)
    relative = UefiVariableData(var.variable_guid, var.name, var.variable_data,
                                var.data_offset - ev.data_offset, var.trailing)
    if var.name not in KEY_DATABASES:
        return VariableFact(relative)
    try:
        entries = _key_entries(var, ev.seq, memo)
    except MalformedInput as exc:
        return VariableFact(relative, entries_error=str(exc))
    return VariableFact(relative, entries)


def _key_entries(var: UefiVariableData, seq: int, memo: Memo | None) -> tuple[KeyEntry, ...]:
    """The entries of a PK/KEK/db/dbx value; ``memo.key_entries`` by the value's SHA-256 (the
    same database appears in many variables' readings: PCR 7 and, on some firmware, PCR 1; one
    tuple per value also lets a verdict write its JSON once)."""
    value = var.variable_data
    key = None
    if memo is not None and len(value) <= _MEMO_VALUE_MAX:
        key = hashlib.sha256(value).digest()
        found = memo.key_entries.get(key)
        if found is not None:
            return found
    lists = decode_signature_lists(value, base=var.data_offset, seq=seq, memo=memo)
    entries = tuple(
        KeyEntry(e.kind, e.owner, e.digest, e.subject) for lst in lists for e in lst.entries
    )
    if key is not None and memo is not None:
        memo.key_entries.put(key, entries, len(value))
    return entries


def _authority_fact(ev: Event, memo: Memo | None) -> AuthorityFact:
    var = decode_uefi_variable_data(ev.data, base=ev.data_offset, seq=ev.seq, allow_trailing=True)
    value = var.variable_data
    if var.name in CERT_AUTHORITIES:
        e = decode_signature_data(value, base=var.data_offset, seq=ev.seq, memo=memo)
        return AuthorityFact(var.name, e.kind, e.owner, e.digest, e.subject)
    return AuthorityFact(var.name, "variable", var.variable_guid,
                         hashlib.sha256(value).digest(), None)


def _image_fact(ev: Event, memo: Memo | None) -> ImageFact:
    img = decode_image_load_event(ev.data, base=ev.data_offset, seq=ev.seq, memo=memo)
    return ImageFact(IMAGE_KINDS[ev.event_type], img.device_path.text, img.device_path.file_path)


def _boot_variable_fact(ev: Event, memo: Memo | None) -> BootOption | tuple[int, ...] | None:
    var = decode_uefi_variable_data(ev.data, base=ev.data_offset, seq=ev.seq)
    if var.name == "BootOrder":
        return decode_boot_order(var.variable_data, base=var.data_offset, seq=ev.seq)
    if _BOOT_OPTION.match(var.name):
        opt = decode_load_option(var.variable_data, base=var.data_offset, seq=ev.seq, memo=memo)
        return BootOption(var.name, opt.description, opt.device_path.text, opt.active)
    return None


def _action_fact(ev: Event, _memo: Memo | None) -> str:
    return ev.data.decode("ascii", "replace")


def _crtm_version_fact(ev: Event, _memo: Memo | None) -> str:
    """EV_S_CRTM_VERSION (PFP 10.4.1): UTF-16 text (UEFI), ASCII (some TCG 1.2 BIOSes), or
    binary such as a GUID (kept as hex). An empty UTF-16 string (``00 00``) is ``""``."""
    data = ev.data
    ascii_text = data.rstrip(b"\x00")
    if len(data) >= 2 and len(data) % 2 == 0 and data[1:2] == b"\x00":
        return decode_utf16_string(data, base=ev.data_offset, seq=ev.seq)
    if ascii_text and all(0x20 <= b < 0x7F for b in ascii_text):
        return ascii_text.decode("ascii")
    return data.hex()


def _blob_fact(ev: Event, _memo: Memo | None) -> BlobFact:
    if ev.event_type == EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2:
        b = decode_firmware_blob2(ev.data, base=ev.data_offset, seq=ev.seq)
    elif len(ev.data) == 16:
        b = decode_firmware_blob(ev.data, base=ev.data_offset, seq=ev.seq)
    elif ev.event_type == EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB:
        b = decode_firmware_blob(ev.data, base=ev.data_offset, seq=ev.seq)  # raises: wrong size
    else:  # EV_POST_CODE / EV_S_CRTM_CONTENTS carrying a string such as "ACPI DATA"
        return BlobFact(ev.data.split(b"\x00", 1)[0].decode("ascii", "replace"), 0, 0)
    return BlobFact(b.description, b.blob_base, b.blob_length)


def _handoff_fact(ev: Event, _memo: Memo | None) -> tuple[str, ...]:
    if ev.event_type == EventType.EV_EFI_HANDOFF_TABLES2:
        t = decode_handoff_tables2(ev.data, base=ev.data_offset, seq=ev.seq)
    else:
        t = decode_handoff_tables(ev.data, base=ev.data_offset, seq=ev.seq)
    return tuple(guid_name(g) for g, _ in t.tables)


def _config_flags_fact(ev: Event, _memo: Memo | None) -> str:
    """EV_PLATFORM_CONFIG_FLAGS is vendor-defined (PFP 10.4.1): printable ASCII is kept as
    text ("FeatureTME=0", "ACPI DATA"), anything else as hex, both cut at 256 bytes."""
    data = ev.data[:256]
    text = data.rstrip(b"\x00")
    if text and all(0x20 <= b < 0x7F for b in text):
        return text.decode("ascii")
    return data.hex()


def _event_tag_fact(ev: Event, registers: Registers) -> SipaFact | str | None:
    tag = sipa.decode_tagged_event(ev.data, base=ev.data_offset, seq=ev.seq)
    if ev.pcr == _LINUX_STUB_PCR[registers]:
        if tag.event_id == LINUX_EFI_INITRD_TAG:
            return "initrd"
        if tag.event_id == LINUX_EFI_LOAD_OPTIONS_TAG:
            return "load_options"
    if registers != "tpm" or ev.pcr not in _WINDOWS_PCRS:
        return None
    events = sipa.decode_sipa_events(ev.data, base=ev.data_offset, seq=ev.seq)
    try:
        return SipaFact(sipa.summarise_block(ev.seq, events))
    except MalformedInput as exc:
        return SipaFact(None, str(exc), exc.seq)


_READERS: Final[dict[int, Callable[[Event, Memo | None], Fact]]] = {
    EventType.EV_EFI_VARIABLE_DRIVER_CONFIG: _variable_fact,
    EventType.EV_EFI_VARIABLE_AUTHORITY: _authority_fact,
    **dict.fromkeys(IMAGE_KINDS, _image_fact),
    EventType.EV_EFI_VARIABLE_BOOT: _boot_variable_fact,
    EventType.EV_EFI_VARIABLE_BOOT2: _boot_variable_fact,
    EventType.EV_EFI_ACTION: _action_fact,
    EventType.EV_S_CRTM_VERSION: _crtm_version_fact,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB: _blob_fact,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2: _blob_fact,
    EventType.EV_POST_CODE: _blob_fact,
    EventType.EV_S_CRTM_CONTENTS: _blob_fact,
    EventType.EV_EFI_HANDOFF_TABLES: _handoff_fact,
    EventType.EV_EFI_HANDOFF_TABLES2: _handoff_fact,
    EventType.EV_PLATFORM_CONFIG_FLAGS: _config_flags_fact,
}
"""Event type -> reader (EV_IPL and EV_EVENT_TAG are read apart: the first is decoded for its
binding, the second depends on the measurement registers)."""

# --- the reading -------------------------------------------------------------------------
def _type_flags(ev: Event, registers: Registers) -> Reading | None:
    """A non-usable reading, fatal wherever it is, if the event type is outside the spec or
    outside its PCR's row of ``services.tpm.pcr_types`` (the type is not covered by the digest:
    an unexpected label could hide the measurement from every check)."""
    t = ev.event_type
    if t not in _KNOWN_TYPES:
        return Reading((Flag("tpm.event.unknown_type", f"event type 0x{t:08x} in PCR {ev.pcr}",
                             True),), usable=False)
    if t not in allowed_types(registers, ev.pcr):
        return Reading((Flag("tpm.event.unexpected_type", f"{ev.type_name} in PCR {ev.pcr}",
                             True),), usable=False)
    return None


_FIXED_CONTENTS: Final = (*sorted(SEPARATOR_VALUES | ERROR_SEPARATORS), WBCL_SEPARATOR,
                          *sorted(EFI_ACTION_STRINGS))


def _fixed_digests() -> Mapping[str, frozenset[bytes]]:
    """bank -> the digests of every fixed content (:data:`_FIXED_CONTENTS`)."""
    table: dict[str, frozenset[bytes]] = {}
    for bank in SHA_BANKS:
        ctor = hash_constructor(bank)
        table[bank] = frozenset(ctor(content).digest() for content in _FIXED_CONTENTS)
    return MappingProxyType(table)


_FIXED_DIGESTS: Final = _fixed_digests()
"""A constant of the spec's fixed contents, computed once at import (not a cache: it depends
on no input)."""


def _fixed_content(ev: Event) -> bool:
    """Whether ``ev``'s digest, in a bank, is that of a separator value or an EFI action string:
    its data then was one, whatever the (unhashed) label, and a decision reads it (an error
    separator, 'UEFI Debug Mode'), so neither unbound data under an informational label nor a
    label whose data no check hashes (a POST code) may hide it."""
    for bank, digest in ev.digests.items():
        known = _FIXED_DIGESTS.get(bank)
        if known is None:  # a bank outside SHA_BANKS (SM3...): hashed here, if it can be
            try:
                ctor = hash_constructor(bank)
            except Unsupported:
                continue
            known = frozenset(ctor(content).digest() for content in _FIXED_CONTENTS)
        if digest in known:
            return True
    return False


def _binding_flags(result: BindingResult, ev: Event, registers: Registers) -> Reading | None:
    """A non-usable reading if the data is not bound to its digests: fatal where security
    decisions depend on the data (:mod:`services.tpm.binding_consequences`), else a non-fatal
    ``tpm.binding.data_unverified`` (the event counts by its digest, its claims are unverified)."""
    if result.status == "mismatch":
        banks = ", ".join(result.banks)
        if data_decides(registers, ev.pcr, ev.event_type) is not None or _fixed_content(ev):
            return Reading((Flag("tpm.binding.digest_mismatch", f"banks {banks}", True),),
                           usable=False)
        detail = (f"{ev.type_name} data does not hash to its digest (banks {banks}): what it "
                  "says cannot be confirmed, only its digest counts")
        return Reading((Flag(UNVERIFIED_DATA, detail, False),), usable=False)
    if result.status == "unverifiable":
        return Reading((Flag("tpm.binding.unverifiable", "no hashable bank"),), usable=False)
    return None


def _read(ev: Event, registers: Registers, memo: Memo | None) -> Reading:
    refused = _type_flags(ev, registers)
    if refused is not None:
        return refused
    t = ev.event_type
    ipl: IplString | None = None
    try:
        if t == EventType.EV_IPL:
            ipl = decode_ipl(ev.data, ev.pcr, base=ev.data_offset, seq=ev.seq)
            binding = check_binding_of_payload(ev, ipl.bound)
        else:
            binding = check_binding_of_payload(ev, bound_payload(ev))
    except MalformedInput as exc:  # the payload to check cannot be found: nothing is bound
        return Reading(usable=False, error=str(exc))
    refused = _binding_flags(binding, ev, registers)
    if refused is not None:
        return refused
    problem = content_problem(registers, ev.pcr, t, ev.data)
    if problem is not None:  # a label whose content is not what the label promises
        fatal = registers != "tpm" or ev.pcr not in TOLERANT_PCRS
        return Reading((Flag("tpm.event.unexpected_data", problem, fatal),), usable=False)
    quirk = binding.quirk if binding.status == "quirk" else None
    opaque = binding.status == "not_bound"
    if opaque and ev.extends and _fixed_content(ev):
        return Reading((Flag("tpm.event.fixed_content_relabelled",
                             f"{ev.type_name} carries the digest of a separator value or an "
                             "EFI action string", True),), usable=False)
    try:
        if ipl is not None:
            fact: Fact = DecodedEvent(ev.pcr, t, ev.data, ipl=ipl)
        elif t == EventType.EV_EVENT_TAG:
            fact = _event_tag_fact(ev, registers)
        else:
            reader = _READERS.get(t)
            fact = reader(ev, memo) if reader is not None else None
    except MalformedInput as exc:
        return Reading(quirk=quirk, error=str(exc), opaque=opaque)
    return Reading(quirk=quirk, fact=fact, opaque=opaque)


def read_event(ev: Event, registers: Registers, memo: Memo | None = None) -> Reading:
    """The :class:`Reading` of ``ev`` (an extending event) read as a ``registers`` log event
    ("ccel": an Intel TDX CCEL log); see :func:`read_events` for ``memo``."""
    return read_events((ev,), registers, memo)[0]


def reading_key(ev: Event, registers: Registers) -> tuple[object, ...]:
    """The ``memo.readings`` key of ``ev`` (the expression :func:`read_events` inlines):
    registers, PCR, type, the data (its SHA-256 above 1 KiB) and every (bank, digest)."""
    data = ev.data
    content = data if len(data) <= _KEY_BY_DIGEST_ABOVE else hashlib.sha256(data).digest()
    return (registers, ev.pcr, ev.event_type, content, *ev.digests.items())


def read_events(
    events: Iterable[Event], registers: Registers, memo: Memo | None = None
) -> list[Reading]:
    """:func:`read_event` of each of ``events`` (extending events), in order.

    With ``memo``, a reading is looked up in ``memo.readings`` under :func:`reading_key`
    (inlined: this loop runs for every event of every log) and a :attr:`Reading.rememberable`
    one is remembered there (weight: the data's length); the decoders under it use the
    memo's other tables.
    """
    if memo is None:
        return [_read(ev, registers, None) for ev in events]
    table = memo.readings
    remembered, remember = table.get, table.put
    sha256 = hashlib.sha256
    small = _KEY_BY_DIGEST_ABOVE
    out: list[Reading] = []
    append = out.append
    for ev in events:
        data = ev.data
        content = data if len(data) <= small else sha256(data).digest()
        key = (registers, ev.pcr, ev.event_type, content, *ev.digests.items())  # reading_key
        reading = remembered(key)
        if reading is None:
            reading = _read(ev, registers, memo)
            if reading.rememberable:
                remember(key, reading, len(data))
        append(reading)
    return out
