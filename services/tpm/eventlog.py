"""TCG PC Client boot event logs: bytes in, an *untrusted* :class:`EventLog` out.

Two wire formats (TCG PC Client Platform Firmware Profile (PFP) spec 1.05 rev 23, section 10):

* **SHA1 format** (``TCG_PCR_EVENT``, section 10.2.1; the TCG 1.2 / EFI 1.x log)::

      UINT32 pcrIndex | UINT32 eventType | BYTE digest[20] | UINT32 eventSize | event[eventSize]

* **Crypto-agile format** (section 10.2.2): a first ``TCG_PCR_EVENT`` (PCR 0, ``EV_NO_ACTION``,
  zero digest) whose data is a ``TCG_EfiSpecIDEventStruct`` with signature
  ``"Spec ID Event03\\0"`` (section 10.4.5.1) declaring the banks and their digest sizes,
  followed by ``TCG_PCR_EVENT2`` entries::

      UINT32 pcrIndex | UINT32 eventType | TPML_DIGEST_VALUES digests | UINT32 eventSize | event

  ``TPML_DIGEST_VALUES`` = ``UINT32 count`` then ``count`` x (``UINT16 hashAlg``,
  ``BYTE digest[size-of-hashAlg]``); the sizes come from the Spec ID event, so an algorithm
  the log did not declare is a malformed log.

All integers are little-endian. The same format carries Intel TDX CCEL logs (the "PCR index" is
then the measurement-register index, 1..4 = RTMR0..3).

Nothing returned here is trusted: digests are only what the host claims, and ``event_type`` and
``data`` are not even covered by the digest (PFP 10.2; go-attestation's
``docs/event-log-disclosure.md``). Events become evidence only once
:func:`services.tpm.replay.verify_replay` reproduces quoted PCR values with them.

Parsing is one linear pass; every size and count is checked against :class:`Limits` before it is
used, and any inconsistency raises :class:`MalformedLog` with the byte offset, event index and
field name.

Trust decisions and their reasons: ``docs/design/eventlog-trust.md``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Literal, NamedTuple

from services.tpm.algorithms import alg_by_id, bank_name
from services.tpm.errors import LimitExceeded, MalformedLog
from services.tpm.limits import DEFAULT_LIMITS, Limits
from services.tpm.memo import Memo

__all__ = [
    "PCR_NOT_EXTENDED",
    "SPEC_ID_SIGNATURE",
    "STARTUP_LOCALITY_SIGNATURE",
    "DeclaredAlgorithm",
    "Event",
    "EventLog",
    "EventType",
    "SpecIdEvent",
    "event_type_name",
    "parse_event_log",
    "startup_locality_of",
]

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
"""``TCG_EfiSpecIDEventStruct.signature`` of a crypto-agile log (PFP 10.4.5.1)."""
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
"""``TCG_EfiStartupLocalityEvent.Signature`` (PFP 10.4.5.3)."""
PCR_NOT_EXTENDED = 0xFFFFFFFF
"""PCR index Windows uses for log-only events (e.g. its trailing EV_NO_ACTION); never extended."""

_SHA1_HEADER = struct.Struct("<II20sI")  # TCG_PCR_EVENT up to and including eventSize
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_U32X3 = struct.Struct("<III")
_U16 = struct.Struct("<H")
_SPEC_ID_FIXED = struct.Struct("<16sIBBBBI")  # signature .. numberOfAlgorithms
_ALG_SIZE = struct.Struct("<HH")
_MAX_DIGEST_SIZE = 64


class EventType(IntEnum):
    """Event types of PFP spec table 9 (section 10.4.1) and the EFI additions.

    ``Event.event_type`` is a plain ``int``: values outside this enum are kept as they are (see
    :func:`event_type_name`). The type is *not* covered by the digest; never trust it alone.
    """

    EV_PREBOOT_CERT = 0x00000000
    EV_POST_CODE = 0x00000001
    EV_UNUSED = 0x00000002
    EV_NO_ACTION = 0x00000003
    EV_SEPARATOR = 0x00000004
    EV_ACTION = 0x00000005
    EV_EVENT_TAG = 0x00000006
    EV_S_CRTM_CONTENTS = 0x00000007
    EV_S_CRTM_VERSION = 0x00000008
    EV_CPU_MICROCODE = 0x00000009
    EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
    EV_TABLE_OF_DEVICES = 0x0000000B
    EV_COMPACT_HASH = 0x0000000C
    EV_IPL = 0x0000000D
    EV_IPL_PARTITION_DATA = 0x0000000E
    EV_NONHOST_CODE = 0x0000000F
    EV_NONHOST_CONFIG = 0x00000010
    EV_NONHOST_INFO = 0x00000011
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
    EV_POST_CODE2 = 0x00000013
    EV_EFI_EVENT_BASE = 0x80000000
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_GPT_EVENT2 = 0x8000000D
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2
    EV_EFI_SPDM_DEVICE_POLICY = 0x800000E3
    EV_EFI_SPDM_DEVICE_AUTHORITY = 0x800000E4


_TYPE_NAMES: dict[int, str] = {t.value: t.name for t in EventType}


def event_type_name(value: int) -> str:
    """The spec name of an event type, or ``"0x%08x"`` for a value outside the spec."""
    return _TYPE_NAMES.get(value) or f"0x{value:08x}"


class Event(NamedTuple):
    """One ``TCG_PCR_EVENT`` / ``TCG_PCR_EVENT2`` entry. UNTRUSTED until replayed.

    ``offset`` / ``data_offset`` are byte offsets in the parsed log; events a quirk synthesises
    (see :mod:`services.tpm.quirks`) have both set to ``-1``. A named tuple rather than a frozen
    dataclass: every event of every log is built once, and a tuple is built 3x faster than a
    frozen instance (whose fields can only be set through ``object.__setattr__``); it is as
    immutable. Copy with a change through ``_replace``.
    """

    seq: int
    """0-based index in the log."""
    offset: int
    """Byte offset of the entry (its ``pcrIndex`` field)."""
    pcr: int
    """PCR (or CCEL MR) index; ``0xFFFFFFFF`` marks Windows' log-only events."""
    event_type: int
    """Untrusted: not covered by the digest."""
    digests: Mapping[str, bytes]
    """Bank name -> digest, as the host claims."""
    data: bytes
    """The event data (``event[eventSize]``)."""
    data_offset: int
    """Byte offset of ``data`` in the log."""

    @property
    def type_name(self) -> str:
        """The spec name of :attr:`event_type` (``"0x%08x"`` if outside the spec)."""
        return event_type_name(self.event_type)

    @property
    def extends(self) -> bool:
        """Whether replay extends this event: not EV_NO_ACTION and not PCR 0xFFFFFFFF."""
        return self.event_type != EventType.EV_NO_ACTION and self.pcr != PCR_NOT_EXTENDED


#: ``Event(...)`` without the named tuple's Python-level ``__new__`` frame (the parsers' hot
#: path): ``_new_event(Event, (seq, offset, pcr, event_type, digests, data, data_offset))``.
_new_event: Final = tuple.__new__


def _digest_builder(names: tuple[str, ...]) -> Callable[[tuple[Any, ...]], dict[str, bytes]]:
    """A function mapping the fast-path struct values (pcr, type, count, alg, digest, ..., size)
    to a digest dict."""
    if len(names) == 1:
        (a,) = names
        return lambda v: {a: v[4]}
    if len(names) == 2:
        a, b = names
        return lambda v: {a: v[4], b: v[6]}
    if len(names) == 3:
        a, b, c = names
        return lambda v: {a: v[4], b: v[6], c: v[8]}
    return lambda v: dict(zip(names, v[4:-1:2], strict=False))


@dataclass(frozen=True, slots=True)
class DeclaredAlgorithm:
    """One ``TCG_EfiSpecIdEventAlgorithmSize`` entry of the Spec ID event."""

    alg_id: int
    bank: str
    digest_size: int


@dataclass(frozen=True, slots=True)
class SpecIdEvent:
    """The decoded ``TCG_EfiSpecIDEventStruct`` (PFP 10.4.5.1) of a crypto-agile log. Untrusted."""

    platform_class: int
    spec_version: tuple[int, int, int]
    """(major, minor, errata)."""
    uintn_size: int
    algorithms: tuple[DeclaredAlgorithm, ...]
    vendor_info: bytes


@dataclass(frozen=True)
class EventLog:
    """A parsed event log. UNTRUSTED: only :func:`~services.tpm.replay.verify_replay` vouches."""

    format: Literal["sha1", "crypto-agile"]
    banks: tuple[str, ...]
    """Banks the log carries: from the Spec ID event, or ``("sha1",)`` for SHA1-format logs."""
    spec_id: SpecIdEvent | None
    events: tuple[Event, ...]
    """Every event, EV_NO_ACTION ones (never extended) included; ``events[0]`` is the header."""
    trailing_padding: int
    """Bytes of 0x00 or 0xFF padding after the last event (ignored)."""
    size: int = 0
    """Length of the parsed input in bytes."""


def startup_locality_of(event: Event) -> int | None:
    """The locality of a ``StartupLocality`` EV_NO_ACTION event (PFP 10.4.5.3), else ``None``."""
    if (
        event.event_type == EventType.EV_NO_ACTION
        and len(event.data) == 17
        and event.data.startswith(STARTUP_LOCALITY_SIGNATURE)
    ):
        return event.data[16]
    return None


def _malformed(message: str, offset: int, seq: int, field: str) -> MalformedLog:
    return MalformedLog(message, offset=offset, seq=seq, field=field)


def _need(data: bytes, offset: int, count: int, seq: int, field: str, what: str) -> None:
    if offset + count > len(data):
        left = max(len(data) - offset, 0)
        raise _malformed(f"truncated {what}: need {count} bytes, {left} left", offset, seq, field)


def _parse_spec_id(body: bytes, body_offset: int, limits: Limits) -> SpecIdEvent:
    """Decode ``TCG_EfiSpecIDEventStruct``; offsets in errors are absolute."""
    _need(body, 0, _SPEC_ID_FIXED.size, 0, "TCG_EfiSpecIDEventStruct", "Spec ID event")
    _sig, platform_class, minor, major, errata, uintn, count = _SPEC_ID_FIXED.unpack_from(body)
    count_offset = body_offset + 24
    if count == 0:
        raise _malformed("Spec ID event declares no algorithms", count_offset, 0,
                         "numberOfAlgorithms")
    if count > limits.max_digests_per_event:
        raise LimitExceeded(
            f"Spec ID event declares {count} algorithms (limit {limits.max_digests_per_event})",
            offset=count_offset, seq=0, field="numberOfAlgorithms",
        )
    pos = _SPEC_ID_FIXED.size
    algorithms: list[DeclaredAlgorithm] = []
    seen: set[int] = set()
    for i in range(count):
        field = f"digestSizes[{i}]"
        if pos + _ALG_SIZE.size > len(body):
            raise _malformed("Spec ID event data ends inside the algorithm table",
                             body_offset + pos, 0, field)
        alg_id, size = _ALG_SIZE.unpack_from(body, pos)
        known = alg_by_id(alg_id)
        if alg_id in seen:
            raise _malformed(f"algorithm 0x{alg_id:04x} declared twice", body_offset + pos, 0,
                             field)
        if known is not None and known.digest_size != size:
            raise _malformed(
                f"{known.name} declared with digest size {size}, must be {known.digest_size}",
                body_offset + pos + 2, 0, field + ".digestSize",
            )
        if not 1 <= size <= _MAX_DIGEST_SIZE:
            raise _malformed(f"digest size {size} out of range 1..{_MAX_DIGEST_SIZE}",
                             body_offset + pos + 2, 0, field + ".digestSize")
        seen.add(alg_id)
        algorithms.append(DeclaredAlgorithm(alg_id, bank_name(alg_id), size))
        pos += _ALG_SIZE.size
    if pos >= len(body):
        raise _malformed("Spec ID event data ends before vendorInfoSize", body_offset + pos, 0,
                         "vendorInfoSize")
    vendor_size = body[pos]
    if pos + 1 + vendor_size != len(body):
        raise _malformed(
            f"vendorInfoSize {vendor_size} does not match the {len(body) - pos - 1} bytes left "
            "in the Spec ID event's eventSize",
            body_offset + pos, 0, "vendorInfoSize",
        )
    return SpecIdEvent(
        platform_class=platform_class,
        spec_version=(major, minor, errata),
        uintn_size=uintn,
        algorithms=tuple(algorithms),
        vendor_info=body[pos + 1 :],
    )


def _spec_id(body: bytes, limits: Limits, memo: Memo | None) -> SpecIdEvent:
    """:func:`_parse_spec_id` of the first event's data (at offset 32), through ``memo``."""
    if memo is None:
        return _parse_spec_id(body, 32, limits)
    key = (body, limits.max_digests_per_event)
    found = memo.spec_ids.get(key)
    if found is None:
        found = _parse_spec_id(body, 32, limits)
        memo.spec_ids.put(key, found, len(body))
    return found


def _check_pcr(pcr: int, offset: int, seq: int, limits: Limits) -> None:
    if pcr > limits.max_pcr_index and pcr != PCR_NOT_EXTENDED:
        raise _malformed(f"PCR index {pcr} out of range 0..{limits.max_pcr_index}", offset, seq,
                         "pcrIndex")


def _check_event_size(size: int, size_offset: int, end: int, seq: int, limits: Limits) -> None:
    if size > limits.max_event_data:
        raise LimitExceeded(
            f"eventSize {size} exceeds the limit of {limits.max_event_data} bytes",
            offset=size_offset, seq=seq, field="eventSize",
        )
    left = end - size_offset - 4
    if size > left:
        raise _malformed(f"eventSize {size} runs past the end of the log ({left} bytes left)",
                         size_offset, seq, "eventSize")


#: Bytes of each padding kind that :func:`_padding_start` compares the log's tail with, a
#: slice at a time (slicing a memoryview copies nothing).
_PADDING: Final = {pad: memoryview(pad * 65536) for pad in (b"\x00", b"\xff")}
_PADDING_PROBE: Final = 64


def _padding_start(data: bytes) -> int:
    """Offset from which the rest of ``data`` is all 0x00 or all 0xFF (``len(data)`` if none).

    Only the last byte's kind can pad. A TDX CCEL region is mostly padding (256 KiB where the
    events take 10 KiB), and ``bytes.rstrip`` walks it a byte at a time (about 1 ms), so the
    tail is compared with ``memcmp`` instead: chunks doubling from the end while they are all
    padding, then halving inside the first chunk that is not (O(padding) bytes compared, all
    in C), and ``rstrip`` only on the last few bytes.
    """
    last = data[-1:]
    pad = _PADDING.get(last)
    if pad is None:
        return len(data)
    limit = len(pad)
    size = len(data)
    padded = 0  # bytes at the end known to be padding
    step, growing = _PADDING_PROBE, True
    while padded < size:
        chunk = min(step, size - padded)
        if data.endswith(pad[:chunk], 0, size - padded):
            padded += chunk
            if growing:
                step = min(step * 2, limit)
        elif chunk <= _PADDING_PROBE:
            start = size - padded - chunk
            return start + len(data[start : size - padded].rstrip(last))
        else:
            growing = False
        if not growing:
            step = max(step // 2, _PADDING_PROBE)
    return 0


def parse_event_log(
    data: bytes, *, limits: Limits = DEFAULT_LIMITS, memo: Memo | None = None
) -> EventLog:
    """Parse a TCG boot event log (SHA1 or crypto-agile format). The result is UNTRUSTED.

    Trailing 0x00/0xFF padding (ACPI TPM2/CCEL regions are read whole) is skipped and counted.
    Raises :class:`MalformedLog` for any structural error and :class:`LimitExceeded` when a
    :class:`Limits` bound is hit; both name the byte offset, event index and field. With
    ``memo``, the decoded Spec ID event (one per firmware build in a fleet) is looked up and
    remembered in ``memo.spec_ids`` by (its exact data, the digest-count limit).
    """
    data = bytes(data)
    size = len(data)
    if size > limits.max_log_bytes:
        raise LimitExceeded(f"log is {size} bytes (limit {limits.max_log_bytes})",
                            offset=limits.max_log_bytes, field="log")
    if size == 0:
        raise MalformedLog("empty event log", offset=0)
    end = _padding_start(data)
    if end == 0:
        raise MalformedLog(f"event log is only padding ({size} bytes of 0x{data[0]:02x})",
                           offset=0)
    _need(data, 0, _SHA1_HEADER.size, 0, "TCG_PCR_EVENT", "first event header")
    pcr, etype, digest, esize = _SHA1_HEADER.unpack_from(data)
    _check_pcr(pcr, 0, 0, limits)
    _check_event_size(esize, 28, size, 0, limits)
    body = data[32 : 32 + esize]
    first = Event(0, 0, pcr, etype, {"sha1": digest}, body, 32)
    # TPM logs put the Spec ID event in PCR 0; TDX CCEL logs in MR index 1 (RTMR0).
    if etype == EventType.EV_NO_ACTION and body.startswith(SPEC_ID_SIGNATURE):
        spec_id = _spec_id(body, limits, memo)
        events = _parse_agile(data, 32 + esize, end, spec_id, first, limits)
        banks = tuple(a.bank for a in spec_id.algorithms)
        fmt: Literal["sha1", "crypto-agile"] = "crypto-agile"
    else:
        spec_id = None
        events = _parse_sha1(data, 32 + esize, end, first, limits)
        banks = ("sha1",)
        fmt = "sha1"
    last = events[-1]
    consumed = last.data_offset + len(last.data) if last.data_offset >= 0 else 32 + esize
    return EventLog(fmt, banks, spec_id, tuple(events), size - consumed, size)


def _parse_sha1(data: bytes, pos: int, end: int, first: Event, limits: Limits) -> list[Event]:
    """Parse ``TCG_PCR_EVENT`` entries from ``pos`` until the padding at ``end``."""
    events = [first]
    size = len(data)
    max_events = limits.max_events
    unpack = _SHA1_HEADER.unpack_from
    seq = 1
    while pos < end:
        if seq >= max_events:
            raise LimitExceeded(f"more than {max_events} events", offset=pos, seq=seq,
                                field="log")
        _need(data, pos, 32, seq, "TCG_PCR_EVENT", "event header")
        pcr, etype, digest, esize = unpack(data, pos)
        _check_pcr(pcr, pos, seq, limits)
        _check_event_size(esize, pos + 28, size, seq, limits)
        start = pos + 32
        pos = start + esize
        events.append(_new_event(Event, (seq, start - 32, pcr, etype, {"sha1": digest},
                                         data[start:pos], start)))
        seq += 1
    return events


def _parse_agile(
    data: bytes, pos: int, end: int, spec_id: SpecIdEvent, first: Event, limits: Limits
) -> list[Event]:
    """Parse ``TCG_PCR_EVENT2`` entries from ``pos`` until the padding at ``end``.

    Fast path: an event whose digests are exactly the Spec ID algorithms in declared order is
    decoded with one precompiled struct; anything else goes through :func:`_parse_event2`,
    which checks field by field and raises the precise error.
    """
    events = [first]
    size = len(data)
    algs = spec_id.algorithms
    n_algs = len(algs)
    expected_ids = tuple(a.alg_id for a in algs)
    digests_of = _digest_builder(tuple(a.bank for a in algs))
    new_event = _new_event
    # header (pcrIndex, eventType, digests.count) + every declared digest + eventSize
    block = struct.Struct("<III" + "".join(f"H{a.digest_size}s" for a in algs) + "I")
    block_len = block.size
    unpack_block = block.unpack_from
    max_events = limits.max_events
    max_pcr = limits.max_pcr_index
    max_data = limits.max_event_data
    append = events.append
    seq = 1
    while pos < end:
        if seq >= max_events:
            raise LimitExceeded(f"more than {max_events} events", offset=pos, seq=seq,
                                field="log")
        fixed_end = pos + block_len
        if fixed_end <= size:
            vals = unpack_block(data, pos)
            pcr, etype, count = vals[0], vals[1], vals[2]
            esize = vals[-1]
            if (
                count == n_algs
                and vals[3:-1:2] == expected_ids
                and (pcr <= max_pcr or pcr == PCR_NOT_EXTENDED)
                and esize <= max_data
                and fixed_end + esize <= size
            ):
                stop = fixed_end + esize
                append(new_event(Event, (seq, pos, pcr, etype, digests_of(vals),
                                         data[fixed_end:stop], fixed_end)))
                pos = stop
                seq += 1
                continue
        event = _parse_event2(data, pos, seq, spec_id, limits)
        append(event)
        pos = event.data_offset + len(event.data)
        seq += 1
    return events


def _parse_event2(data: bytes, pos: int, seq: int, spec_id: SpecIdEvent, limits: Limits) -> Event:
    """Decode one ``TCG_PCR_EVENT2`` at ``pos`` field by field (the reference path)."""
    size = len(data)
    sizes = {a.alg_id: (a.bank, a.digest_size) for a in spec_id.algorithms}
    n_algs = len(sizes)
    entry = pos
    _need(data, pos, 12, seq, "TCG_PCR_EVENT2", "event header")
    pcr, etype, count = _U32X3.unpack_from(data, pos)
    _check_pcr(pcr, pos, seq, limits)
    if count > limits.max_digests_per_event:
        raise LimitExceeded(
            f"digest count {count} exceeds the limit of {limits.max_digests_per_event}",
            offset=pos + 8, seq=seq, field="digests.count")
    if count == 0 or count > n_algs:
        raise _malformed(
            f"digest count {count} is not 1..{n_algs} (the Spec ID event's algorithms)",
            pos + 8, seq, "digests.count")
    pos += 12
    digests: dict[str, bytes] = {}
    for i in range(count):
        _need(data, pos, 2, seq, f"digests[{i}].hashAlg", "digest algorithm")
        alg_id = _U16.unpack_from(data, pos)[0]
        declared = sizes.get(alg_id)
        if declared is None:
            raise _malformed(f"digest algorithm 0x{alg_id:04x} not declared in the Spec ID "
                             "event", pos, seq, f"digests[{i}].hashAlg")
        bank, dsize = declared
        if bank in digests:
            raise _malformed(f"second {bank} digest in one event", pos, seq,
                             f"digests[{i}].hashAlg")
        _need(data, pos + 2, dsize, seq, f"digests[{i}].digest", f"{bank} digest")
        digests[bank] = data[pos + 2 : pos + 2 + dsize]
        pos += 2 + dsize
    _need(data, pos, 4, seq, "eventSize", "eventSize")
    esize = _U32.unpack_from(data, pos)[0]
    _check_event_size(esize, pos, size, seq, limits)
    start = pos + 4
    return Event(seq, entry, pcr, etype, digests, data[start : start + esize], start)
