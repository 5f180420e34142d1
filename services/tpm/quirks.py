"""Every firmware quirk hostgate knows, in one table: what it accepts, where, how, and why.

Real firmware and tools log something other than what the spec says they extend. A quirk is a
named, documented row of :data:`QUIRKS`, never a silent tolerance, and every row says:

* its **layer**: ``replay`` (the log's events do not replay to the quoted PCRs until the quirk
  rewrites a copy of the log: :func:`services.tpm.replay.verify_replay`), ``binding`` (an
  event's data hashes to its digest only when framed the quirk's way:
  :func:`services.tpm.bindings.check_binding`), ``ima`` (the IMA list's shape:
  :func:`services.tpm.ima.parse_binary`) or ``structure`` (an event the claims fold refuses
  for *where* it sits in the log, not for its bytes: the quirk names the register the firmware
  meant it for, :func:`services.tpm.claims.extract_claims`; its digest still counts in the
  replay where it was logged, so it never makes a different measurement pass);
* its **acceptance**: ``policy`` (used only when the policy in force names it in
  ``spec.evidence.allowedQuirks``) or ``reported`` (used wherever it applies, because it only
  re-frames bytes the digest still covers, and never makes a different measurement pass);
* its **provenance**: the corpus logs that show it and where the fact comes from.

The rules every layer keeps, whatever the acceptance: a quirk is tried only after the plain
check failed, only where its row says it may apply (its PCRs, its event types), only on a copy,
and every quirk used is reported (``Claims.quirks_applied``, hence the verdict's claims). A
``policy`` quirk the policy does not name leaves the check refused, and where the refused event
has the quirk's exact shape the refusal names the defect and the quirk (:func:`refusal`).
:func:`accepted` is the one acceptance rule; callers never decide it themselves.

Ids are a wire contract (they appear in verdicts, policies and logs): never rename one, add a
new one instead. ``docs/design/eventlog-trust.md`` section 4 shows this table; a test keeps the
two equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from services.tpm.algorithms import hash_constructor
from services.tpm.errors import MalformedInput, Unsupported
from services.tpm.eventlog import Event, EventLog, EventType
from services.tpm.uefi import decode_uefi_variable_data

__all__ = [
    "QUIRKS",
    "QUIRK_BOOT_VARIABLE_DATA_ONLY",
    "QUIRK_IDS",
    "QUIRK_SHIM_AUTHORITY_EXTRA_BYTE",
    "QUIRK_TDX_DUPLICATE_SEPARATOR",
    "QUIRK_TRUNCATED_TAIL",
    "Acceptance",
    "Layer",
    "Quirk",
    "accepted",
    "of_layer",
    "quirk_by_id",
    "refusal",
]

EBS_INVOCATION = b"Exit Boot Services Invocation"
EBS_SUCCESS = b"Exit Boot Services Returned with Success"
EBS_FAILURE = b"Exit Boot Services Returned with Failure"


class Layer(StrEnum):
    """Which check a quirk relaxes."""

    REPLAY = "replay"
    BINDING = "binding"
    IMA = "ima"
    STRUCTURE = "structure"


class Acceptance(StrEnum):
    """How a quirk comes to be used (see the module docstring)."""

    POLICY = "policy"
    REPORTED = "reported"


@dataclass(frozen=True, slots=True)
class Quirk:
    """One firmware workaround: what it changes, where, how it is accepted and why it is
    believed. Exactly one of ``apply`` (replay), ``payload`` (binding) and ``placement``
    (structure) is set for those layers; an ``ima`` quirk is a switch of the IMA parser."""

    id: str
    layer: Layer
    acceptance: Acceptance
    affected_pcrs: frozenset[int]
    """PCRs the quirk may change the outcome for (``replay``: every mismatching PCR must be
    one; empty: any PCR whose events it applies to)."""
    description: str
    corpus: tuple[str, ...]
    """Corpus ids of the real logs that show it (empty: known from the reference only)."""
    reference: str
    apply: Callable[[EventLog], EventLog] | None = None
    """``replay``, pure: returns a new log (the input is never modified)."""
    payload: Callable[[Event], bytes | None] | None = None
    """``binding``, pure: the bytes this firmware hashed for ``event``, or None where the quirk
    does not apply to it."""
    placement: Callable[[Sequence[Event], Event, str], int | None] | None = None
    """``structure``, pure: given the log's extending events in order, an event among them the
    fold refuses for where it sits, and the log's registers (``"tpm"``, or ``"ccel"`` for an
    Intel TDX CCEL log), the register the firmware meant the event for; None where the event
    is not exactly the quirk's shape."""
    reason: str = ""
    """``structure``: the fatal anomaly of the claims fold (``services.tpm.claims.REASONS``)
    the quirk answers."""
    defect: str = ""
    """``structure``: the defect in a few words, for the refusal without the quirk."""


def accepted(quirk: Quirk, named: Collection[str]) -> bool:
    """Whether ``quirk`` may be used when the policy names the quirk ids ``named``."""
    return quirk.acceptance is Acceptance.REPORTED or quirk.id in named


def _append_actions(log: EventLog, pcr: int, *actions: bytes) -> EventLog:
    """A copy of ``log`` with EV_EFI_ACTION events for ``actions`` appended in ``pcr``.

    The synthetic events have ``offset == data_offset == -1`` and a digest per bank the log
    declares (banks hostgate cannot hash are left out, so they stay unreplayable).
    """
    events = list(log.events)
    seq = events[-1].seq + 1 if events else 0
    for text in actions:
        digests: dict[str, bytes] = {}
        for bank in log.banks:
            try:
                digests[bank] = hash_constructor(bank)(text).digest()
            except Unsupported:  # a bank hostgate cannot hash: leave its digest out
                continue
        events.append(Event(seq, -1, pcr, EventType.EV_EFI_ACTION, digests, text, -1))
        seq += 1
    return dataclasses.replace(log, events=tuple(events))


_EBS_REFERENCE = (
    "go-attestation attest/eventlog_workarounds.go (EBS workarounds) and its testdata "
    "ebs_event_missing_eventlog = corpus S08; PFP spec 1.05 section 10.4.4 lists both EBS "
    "EV_EFI_ACTION strings for PCR 5"
)
_EBS_PCR: Final = 5


def _ebs_quirk(quirk_id: str, actions: tuple[bytes, ...], *, description: str,
               corpus: tuple[str, ...] = ()) -> Quirk:
    """A row of the ExitBootServices family: the firmware extended the EV_EFI_ACTION events
    ``actions`` into PCR 5 without logging them, and the quirk appends them to PCR 5. Every row
    of the family is a replay quirk the policy must name, with the same reference."""
    return Quirk(
        id=quirk_id,
        layer=Layer.REPLAY,
        acceptance=Acceptance.POLICY,
        affected_pcrs=frozenset({_EBS_PCR}),
        description=description,
        corpus=corpus,
        reference=_EBS_REFERENCE,
        apply=lambda log: _append_actions(log, _EBS_PCR, *actions),
    )

def refusal(quirk: Quirk, what: str) -> str:
    """The refusal of an event that has ``quirk``'s shape when the policy does not name it:
    ``what`` was refused, as the defect, and the quirk that would accept it."""
    return (f"{what} ({quirk.defect}); a policy may accept it with allowedQuirks: "
            f"[{quirk.id}]")


QUIRK_BOOT_VARIABLE_DATA_ONLY: Final = "boot-variable-data-only"
QUIRK_SHIM_AUTHORITY_EXTRA_BYTE: Final = "shim-authority-extra-byte"
QUIRK_TRUNCATED_TAIL: Final = "ima-truncated-tail"
QUIRK_TDX_DUPLICATE_SEPARATOR: Final = "tdx-duplicate-separator"
_TDX_RTMR0: Final = 1
"""CC measurement register index of RTMR0 (PCRs 1 and 7: the Secure Boot configuration)."""
_TDX_RTMR1: Final = 2
"""CC measurement register index of RTMR1 (PCRs 2-6: the boot applications)."""
_SEPARATOR_ZERO: Final = b"\x00\x00\x00\x00"


def _boot_variable_data(event: Event) -> bytes | None:
    if event.event_type not in (EventType.EV_EFI_VARIABLE_BOOT, EventType.EV_EFI_VARIABLE_BOOT2):
        return None
    try:
        return decode_uefi_variable_data(event.data, base=event.data_offset,
                                         seq=event.seq).variable_data
    except MalformedInput:
        return None


def _tdx_rtmr1_separator(events: Sequence[Event], event: Event, registers: str) -> int | None:
    """RTMR1, where ``event`` is the separator early Intel TDX firmware logged in RTMR0 instead:
    in a CCEL log, the second EV_SEPARATOR of RTMR0, of value 0, while RTMR1 holds none at all.
    Anything else (a TPM log, another register, a third separator, another value, an RTMR1
    that has its own separator) is not this defect: None."""
    if (registers != "ccel" or event.pcr != _TDX_RTMR0
            or event.event_type != EventType.EV_SEPARATOR or event.data != _SEPARATOR_ZERO):
        return None
    before = 0
    for ev in events:
        if ev.event_type != EventType.EV_SEPARATOR:
            continue
        if ev.pcr == _TDX_RTMR1:
            return None
        if ev.pcr == _TDX_RTMR0 and ev.seq < event.seq:
            before += 1
    return _TDX_RTMR1 if before == 1 else None


def _authority_less_last_byte(event: Event) -> bytes | None:
    if event.event_type != EventType.EV_EFI_VARIABLE_AUTHORITY or not event.data:
        return None
    return event.data[:-1]


QUIRKS: tuple[Quirk, ...] = (
    _ebs_quirk(
        "ebs-invocation-success", (EBS_INVOCATION, EBS_SUCCESS), corpus=("S08",),
        description="Firmware extended the 'Exit Boot Services Invocation' and 'Exit Boot "
        "Services Returned with Success' EV_EFI_ACTION events into PCR 5 but did not log them "
        "(the log is read before ExitBootServices). Appends both to PCR 5.",
    ),
    _ebs_quirk(
        "ebs-invocation-failure", (EBS_INVOCATION, EBS_FAILURE),
        description="As ebs-invocation-success, but ExitBootServices failed once: appends "
        "'Exit Boot Services Invocation' and 'Exit Boot Services Returned with Failure' to "
        "PCR 5.",
    ),
    _ebs_quirk(
        "ebs-invocation-failure-success", (EBS_INVOCATION, EBS_FAILURE, EBS_SUCCESS),
        description="As ebs-invocation-success, after one failed attempt: appends 'Exit Boot "
        "Services Invocation', '... Returned with Failure' and '... Returned with Success' to "
        "PCR 5.",
    ),
    Quirk(
        id=QUIRK_BOOT_VARIABLE_DATA_ONLY,
        layer=Layer.BINDING,
        acceptance=Acceptance.REPORTED,
        affected_pcrs=frozenset(),
        description=(
            "EV_EFI_VARIABLE_BOOT(2) digest is over VariableData only, not the whole "
            "UEFI_VARIABLE_DATA (EDK2-derived firmware: OVMF, GCE, Lenovo, Dell...). The load "
            "option read from it is still the bytes the digest covers."
        ),
        corpus=("A23", "A31", "A39", "W03"),
        reference="27 EDK2-derived corpus logs; go-attestation treats Boot#### the same way",
        payload=_boot_variable_data,
    ),
    Quirk(
        id=QUIRK_SHIM_AUTHORITY_EXTRA_BYTE,
        layer=Layer.BINDING,
        acceptance=Acceptance.REPORTED,
        affected_pcrs=frozenset(),
        description=(
            "shim before commit 8a27a4809a6a ('Fix the size of the variable authority event') "
            "logs one byte more than it hashes in EV_EFI_VARIABLE_AUTHORITY; the authority read "
            "is the hashed bytes."
        ),
        corpus=("A30", "A34", "A36", "S10", "A50"),
        reference="go-attestation issue 157; shim commit 8a27a4809a6a",
        payload=_authority_less_last_byte,
    ),
    Quirk(
        id=QUIRK_TRUNCATED_TAIL,
        layer=Layer.IMA,
        acceptance=Acceptance.POLICY,
        affected_pcrs=frozenset(),
        description=(
            "The binary IMA list ends inside an entry (a copy cut at a size limit). The "
            "incomplete last entry is dropped and counted; a quoted PCR that covers it then "
            "does not match, so it never widens what verifies."
        ),
        corpus=("J04", "J06"),
        reference="tpm2-tss test fixtures sml-ima-*.b64, which end with 1 or 6 bytes of a "
                  "next entry",
    ),
    Quirk(
        id=QUIRK_TDX_DUPLICATE_SEPARATOR,
        layer=Layer.STRUCTURE,
        acceptance=Acceptance.POLICY,
        affected_pcrs=frozenset({_TDX_RTMR0}),
        description=(
            "Early Intel TDX firmware (COS 113 guests) logs a second EV_SEPARATOR (value 0) in "
            "MR 1 (RTMR0) and none in MR 2 (RTMR1): the separator of the boot-application "
            "registers is extended into the Secure Boot register. The second separator is "
            "read as RTMR1's; its digest still counts in RTMR0's replay, and any other "
            "duplicate, value or register stays refused."
        ),
        corpus=("C03", "C04"),
        reference="google/go-eventlog refuses it ('duplicate separator at event N', "
                  "ccel/extract_test.go TestExtractFirmwareLogStateFailDuplicateSeparator on "
                  "testdata/eventlogs/ccel/cos-113-intel-tdx-dupe-separator.bin = corpus C03)",
        placement=_tdx_rtmr1_separator,
        reason="tpm.separator.duplicate",
        defect="the duplicate separator of early Intel TDX firmware",
    ),
)

QUIRK_IDS: frozenset[str] = frozenset(q.id for q in QUIRKS)
_BY_ID = {q.id: q for q in QUIRKS}


def quirk_by_id(quirk_id: str) -> Quirk | None:
    """The quirk with this id, or ``None``."""
    return _BY_ID.get(quirk_id)


def of_layer(layer: Layer) -> tuple[Quirk, ...]:
    """The quirks of one layer, in table order (the order they are tried in)."""
    return tuple(q for q in QUIRKS if q.layer is layer)
