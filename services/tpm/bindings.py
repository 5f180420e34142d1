"""Data-to-digest binding: does an event's data hash to the digests it was extended with?

Replay proves the *digests* reproduce the quoted PCRs; nothing ties an event's *data* (or its
type) to them. For event types whose data is what was hashed, this module recomputes the
digest in every bank the log carries and reports mismatches, so claims built from the data
cannot be forged by editing the log. Which bytes are hashed, per type (TCG PC Client PFP 1.05
rev 23, section 10.4.1 and 3.3.4):

* EV_SEPARATOR, EV_EFI_ACTION, EV_ACTION, EV_S_CRTM_VERSION, EV_EFI_GPT_EVENT, EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_VARIABLE_AUTHORITY,
  EV_EFI_VARIABLE_BOOT(2): the whole event data;
* EV_EVENT_TAG and EV_COMPACT_HASH in PCRs 11-14 (Windows SIPA blocks, BitLocker): the whole
  event data. (Intel firmware logs EV_COMPACT_HASH in PCR 6 with a digest that is not the
  data's — corpus A29, A30, A53 — so it is not bound there);
* EV_IPL: per boot-loader convention (:mod:`services.tpm.ipl`): GRUB's text after its prefix,
  systemd's UTF-16 command line in PCR 12; other EV_IPL data is not bound.

Everything else (image loads, firmware blobs, POST codes, GRUB file paths, Linux EFI-stub tags)
is measured from content outside the log: ``not_bound``.

Firmware quirks of the ``binding`` layer (:data:`services.tpm.quirks.QUIRKS`: which, why,
which corpus logs) are only tried after the spec's payload failed in *every* bank, and the
result names the quirk, so the claims (and the verdict) report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from services.tpm.algorithms import hash_constructor
from services.tpm.errors import DigestMismatch, Unsupported
from services.tpm.eventlog import Event, EventType
from services.tpm.ipl import decode_ipl
from services.tpm.quirks import (
    QUIRK_BOOT_VARIABLE_DATA_ONLY,
    QUIRK_SHIM_AUTHORITY_EXTRA_BYTE,
    Layer,
    accepted,
    of_layer,
    quirk_by_id,
)

__all__ = [
    "QUIRK_BOOT_VARIABLE_DATA_ONLY",
    "QUIRK_SHIM_AUTHORITY_EXTRA_BYTE",
    "BindingResult",
    "bound_payload",
    "check_binding",
    "check_binding_of_payload",
    "require_binding",
]

_BINDING_QUIRKS: Final = of_layer(Layer.BINDING)

_WHOLE_DATA: Final = frozenset(
    {
        EventType.EV_SEPARATOR,
        EventType.EV_EFI_ACTION,
        EventType.EV_ACTION,
        EventType.EV_S_CRTM_VERSION,
        EventType.EV_EFI_GPT_EVENT,
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        EventType.EV_EFI_VARIABLE_AUTHORITY,
        EventType.EV_EFI_VARIABLE_BOOT,
        EventType.EV_EFI_VARIABLE_BOOT2,
    }
)
_WINDOWS_TAG_PCRS: Final = frozenset({11, 12, 13, 14})
_WINDOWS_TYPES: Final = frozenset({EventType.EV_EVENT_TAG, EventType.EV_COMPACT_HASH})

BindingStatus = Literal["bound", "quirk", "mismatch", "not_bound", "unverifiable"]


@dataclass(frozen=True, slots=True)
class BindingResult:
    """Outcome of checking one event.

    ``bound``: every computable bank matched the spec's payload; ``quirk``: they matched only
    the payload of the named ``quirk``; ``mismatch``: some bank matched neither (``banks``
    lists those banks); ``not_bound``: the type's digest is not over its data;
    ``unverifiable``: no bank's hash is available here.
    """

    seq: int
    status: BindingStatus
    quirk: str | None = None
    banks: tuple[str, ...] = ()


def bound_payload(event: Event) -> bytes | None:
    """The bytes the spec/convention says ``event``'s digests are over, or ``None``.

    May raise ``MalformedEventData`` (only EV_IPL is decoded to find its payload).
    """
    etype = event.event_type
    if etype in _WHOLE_DATA:
        return event.data
    if etype in _WINDOWS_TYPES and event.pcr in _WINDOWS_TAG_PCRS:
        return event.data
    if etype == EventType.EV_IPL:
        return decode_ipl(event.data, event.pcr, base=event.data_offset, seq=event.seq).bound
    return None


def _quirk_payload(event: Event) -> tuple[str, bytes] | None:
    """The first binding quirk that applies to ``event``, with the bytes it says were hashed."""
    for quirk in _BINDING_QUIRKS:
        assert quirk.payload is not None
        payload = quirk.payload(event)
        if payload is not None:
            return quirk.id, payload
    return None


def _matches(event: Event, payload: bytes) -> tuple[list[str], list[str]]:
    """(banks checked, banks that did not match)."""
    checked: list[str] = []
    bad: list[str] = []
    for bank, digest in event.digests.items():
        try:
            ctor = hash_constructor(bank)
        except Unsupported:
            continue
        checked.append(bank)
        if ctor(payload).digest() != digest:
            bad.append(bank)
    return checked, bad


def check_binding(event: Event) -> BindingResult:
    """Check that ``event``'s data hashes to its digests (see module docstring).

    Pure. May raise ``MalformedEventData`` when an EV_IPL cannot be decoded.
    """
    return check_binding_of_payload(event, bound_payload(event))


def check_binding_of_payload(event: Event, payload: bytes | None) -> BindingResult:
    """:func:`check_binding` for a caller that already has ``payload``, which must be exactly
    ``bound_payload(event)`` (for EV_IPL: the ``bound`` of ``decode_ipl`` of the event), so an
    event decoded for its claims is not decoded twice."""
    if payload is None:
        return BindingResult(event.seq, "not_bound")
    checked, bad = _matches(event, payload)
    if not checked:
        return BindingResult(event.seq, "unverifiable")
    if not bad:
        return BindingResult(event.seq, "bound", banks=tuple(checked))
    quirk = _quirk_payload(event)
    if quirk is not None and len(bad) == len(checked):
        _, quirk_bad = _matches(event, quirk[1])
        if not quirk_bad:
            return BindingResult(event.seq, "quirk", quirk[0], tuple(checked))
    return BindingResult(event.seq, "mismatch", banks=tuple(bad))


def require_binding(event: Event, *, allowed_quirks: frozenset[str] = frozenset()) -> None:
    """Raise ``DigestMismatch`` unless ``event`` is bound, or bound via a quirk that
    :func:`services.tpm.quirks.accepted` accepts with ``allowed_quirks`` named."""
    result = check_binding(event)
    quirk = quirk_by_id(result.quirk) if result.quirk is not None else None
    if result.status == "mismatch" or (
        result.status == "quirk" and (quirk is None or not accepted(quirk, allowed_quirks))
    ):
        bank = result.banks[0] if result.banks else "?"
        what = f"via quirk {result.quirk}, not allowed" if result.status == "quirk" else ""
        raise DigestMismatch(
            f"{event.type_name} data does not hash to its digest {what}".strip(),
            seq=event.seq,
            offset=event.data_offset,
            bank=bank,
        )
