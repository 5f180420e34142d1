"""Find the event behind a claim, so a failed rule can name it (pcr, seq, type, digest, summary).

Claims carry event sequence numbers for most records (key databases, authorities, boot
applications, anomalies). For folded values (the SecureBoot variable, Windows flags, kernel
command lines) :class:`EventIndex` walks the same replay-verified events and reads what claim
extraction already decoded from each (``Claims.decoded``, checked to be that very event: same
PCR, type and data); only an event the claims did not decode (e.g. one whose binding failed) is
decoded again here with the ``services.tpm`` decoders, so the answer is the same either way. It
only ever *adds detail*: a rule's outcome never depends on it, so evidence without events gives
the same verdict outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from operator import attrgetter
from typing import Final

from services.tpm import sipa
from services.tpm.claims import DecodedEvent
from services.tpm.errors import MalformedInput
from services.tpm.eventlog import Event, EventType
from services.tpm.ipl import IplString, decode_ipl
from services.tpm.readings import CERT_AUTHORITIES
from services.tpm.uefi import (
    EFI_GLOBAL_VARIABLE_GUID,
    UefiVariableData,
    decode_uefi_variable_data,
)
from services.verifier.policy.results import EventRef
from services.wire.banks import BANK_PREFERENCE

_SUMMARY_MAX: Final = 160
_WINDOWS_PCRS: Final = frozenset({12, 13, 14})
_SEQ: Final = attrgetter("seq")
_PCR7_VARIABLE_TYPES: Final = frozenset({EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
                                         EventType.EV_EFI_VARIABLE_AUTHORITY})


def shorten(text: str, limit: int = _SUMMARY_MAX) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class EventIndex:
    """Replay-verified events by sequence number, plus lookups for folded claims."""

    def __init__(self, events: Iterable[Event],
                 decoded: Mapping[int, DecodedEvent] | None = None) -> None:
        self._by_seq: dict[int, Event] = {ev.seq: ev for ev in events}
        self._ordered: tuple[Event, ...] = tuple(sorted(self._by_seq.values(), key=_SEQ))
        self._decoded: Mapping[int, DecodedEvent] = decoded if decoded is not None else {}
        self._windows: tuple[tuple[int, sipa.WindowsBootConfig], ...] | None = None
        self._flags: tuple[tuple[int, Mapping[str, object]], ...] | None = None

    def _prior(self, ev: Event) -> DecodedEvent | None:
        """What claim extraction decoded from exactly this event, if anything."""
        found = self._decoded.get(ev.seq)
        return found if found is not None and found.matches(ev) else None

    def _variable(self, ev: Event) -> UefiVariableData:
        prior = self._prior(ev)
        if prior is not None and prior.variable is not None:
            return prior.variable
        return decode_uefi_variable_data(ev.data, base=ev.data_offset, seq=ev.seq)

    def _ipl(self, ev: Event) -> IplString:
        prior = self._prior(ev)
        if prior is not None and prior.ipl is not None:
            return prior.ipl
        return decode_ipl(ev.data, ev.pcr, base=ev.data_offset, seq=ev.seq)

    def __bool__(self) -> bool:
        return bool(self._by_seq)

    @property
    def events(self) -> tuple[Event, ...]:
        return self._ordered

    def ref(self, seq: int, summary: str, *, pcr: int | None = None,
            type_name: str | None = None) -> EventRef | None:
        """An :class:`EventRef` for event ``seq`` (None if unknown and no pcr/type given)."""
        ev = self._by_seq.get(seq)
        if ev is None:
            if pcr is None or seq < 0:
                return None
            return EventRef(pcr=pcr, seq=seq, type=type_name or "", digest="",
                            summary=shorten(summary))
        return EventRef(pcr=ev.pcr, seq=ev.seq, type=ev.type_name, digest=strongest_digest(ev),
                        summary=shorten(summary))

    def secure_boot_event(self) -> tuple[int, bytes] | None:
        """(seq, value) of the last SecureBoot variable measured in PCR 7."""
        found: tuple[int, bytes] | None = None
        for ev in self._ordered:
            if ev.pcr != 7 or ev.event_type != EventType.EV_EFI_VARIABLE_DRIVER_CONFIG:
                continue
            try:
                var = self._variable(ev)
            except MalformedInput:
                continue
            if var.name == "SecureBoot" and var.variable_guid == EFI_GLOBAL_VARIABLE_GUID:
                found = (ev.seq, var.variable_data)
        return found

    def pcr7_variables(self) -> tuple[tuple[int, str], ...]:
        """(seq, name) of every UEFI variable measured in PCR 7: each driver-config event, and
        each authority event that does not name a signing authority's database
        (``CERT_AUTHORITIES``: those are signers, judged by the signer rules). An authority
        event is bound and decoded like a driver-config one and its label is not hashed, so a
        variable relabelled as an authority is still a variable PCR 7 measured."""
        out: list[tuple[int, str]] = []
        for ev in self._ordered:
            if ev.pcr != 7 or ev.event_type not in _PCR7_VARIABLE_TYPES:
                continue
            try:
                var = (self._variable(ev) if ev.event_type != EventType.EV_EFI_VARIABLE_AUTHORITY
                       else decode_uefi_variable_data(ev.data, base=ev.data_offset, seq=ev.seq,
                                                      allow_trailing=True))
            except MalformedInput:
                out.append((ev.seq, "<undecodable>"))
                continue
            if ev.event_type == EventType.EV_EFI_VARIABLE_AUTHORITY and \
                    var.name in CERT_AUTHORITIES:
                continue
            out.append((ev.seq, var.name))
        return tuple(out)

    def windows_flag_event(self, attr: str, value: object) -> int | None:
        """Seq of the first SIPA block (EV_EVENT_TAG in PCR 12-14) that measured ``attr`` as
        ``value`` (an attribute of :class:`~services.tpm.sipa.WindowsBootConfig`)."""
        if attr in sipa.FLAG_ATTRIBUTES:
            for seq, flags in self._block_flags():
                if flags.get(attr) == value:
                    return seq
            return None
        for seq, cfg in self._windows_blocks():
            if getattr(cfg, attr, None) == value:
                return seq
        return None

    def _block_flags(self) -> tuple[tuple[int, Mapping[str, object]], ...]:
        """Each SIPA block's own latched flags: from the claims' provenance where it has the
        block, else by decoding and folding the block on its own (as :meth:`_windows_blocks`)."""
        if self._flags is None:
            out: list[tuple[int, Mapping[str, object]]] = []
            for ev in self._ordered:
                if ev.pcr not in _WINDOWS_PCRS or ev.event_type != EventType.EV_EVENT_TAG:
                    continue
                prior = self._prior(ev)
                if prior is not None and prior.windows_flags is not None:
                    out.append((ev.seq, prior.windows_flags))
                    continue
                try:
                    block = sipa.decode_sipa_events(ev.data, base=ev.data_offset, seq=ev.seq)
                    cfg = sipa.fold_windows_config([(ev.seq, block)])
                except MalformedInput:
                    continue
                out.append((ev.seq, {a: getattr(cfg, a) for a in sipa.FLAG_ATTRIBUTES}))
            self._flags = tuple(out)
        return self._flags

    def _windows_blocks(self) -> tuple[tuple[int, sipa.WindowsBootConfig], ...]:
        """Each SIPA block folded on its own (decoded once per index)."""
        if self._windows is None:
            out: list[tuple[int, sipa.WindowsBootConfig]] = []
            for ev in self._ordered:
                if ev.pcr not in _WINDOWS_PCRS or ev.event_type != EventType.EV_EVENT_TAG:
                    continue
                try:
                    block = sipa.decode_sipa_events(ev.data, base=ev.data_offset, seq=ev.seq)
                    out.append((ev.seq, sipa.fold_windows_config([(ev.seq, block)])))
                except MalformedInput:
                    continue
            self._windows = tuple(out)
        return self._windows

    def cmdline_event(self, line: str) -> int | None:
        """Seq of the EV_IPL event whose decoded kernel command line is ``line``."""
        for ev in self._ordered:
            if ev.event_type != EventType.EV_IPL:
                continue
            try:
                ipl = self._ipl(ev)
            except MalformedInput:
                continue
            if ipl.command_line() == line:
                return ev.seq
        return None


def strongest_digest(ev: Event) -> str:
    """``alg:hex`` of the event's digest in the strongest bank it carries."""
    for bank in BANK_PREFERENCE:
        value = ev.digests.get(bank)
        if value is not None:
            return f"{bank}:{value.hex()}"
    for bank in sorted(ev.digests):
        return f"{bank}:{ev.digests[bank].hex()}"
    return ""
