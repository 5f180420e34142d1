"""Named, documented workarounds for firmware that logs something other than what it extends.

A quirk is never applied silently: :func:`services.tpm.replay.verify_replay` tries one only after
a plain replay has failed, only if the caller allowed its id, only if every mismatching PCR is one
the quirk may affect, and only on a copy of the log. The verdict records the ids it applied.

Each entry cites the real log that showed it (corpus id) and where the fact comes from. Ids are a
wire contract (they appear in verdicts and logs): never rename one, add a new one instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from services.tpm.algorithms import hash_constructor
from services.tpm.errors import Unsupported
from services.tpm.eventlog import Event, EventLog, EventType

__all__ = ["QUIRKS", "QUIRK_IDS", "Quirk", "quirk_by_id"]

EBS_INVOCATION = b"Exit Boot Services Invocation"
EBS_SUCCESS = b"Exit Boot Services Returned with Success"
EBS_FAILURE = b"Exit Boot Services Returned with Failure"


@dataclass(frozen=True, slots=True)
class Quirk:
    """One firmware workaround: what it changes, for which PCRs, and why it is believed."""

    id: str
    affected_pcrs: frozenset[int]
    description: str
    reference: str
    apply: Callable[[EventLog], EventLog]
    """Pure: returns a new log (the input is never modified)."""


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

QUIRKS: tuple[Quirk, ...] = (
    Quirk(
        id="ebs-invocation-success",
        affected_pcrs=frozenset({5}),
        description=(
            "Firmware extended the 'Exit Boot Services Invocation' and 'Exit Boot Services "
            "Returned with Success' EV_EFI_ACTION events into PCR 5 but did not log them "
            "(the log is read before ExitBootServices). Appends both to PCR 5."
        ),
        reference=_EBS_REFERENCE,
        apply=lambda log: _append_actions(log, 5, EBS_INVOCATION, EBS_SUCCESS),
    ),
    Quirk(
        id="ebs-invocation-failure",
        affected_pcrs=frozenset({5}),
        description=(
            "As ebs-invocation-success, but ExitBootServices failed once: appends 'Exit Boot "
            "Services Invocation' and 'Exit Boot Services Returned with Failure' to PCR 5."
        ),
        reference=_EBS_REFERENCE,
        apply=lambda log: _append_actions(log, 5, EBS_INVOCATION, EBS_FAILURE),
    ),
    Quirk(
        id="ebs-invocation-failure-success",
        affected_pcrs=frozenset({5}),
        description=(
            "As ebs-invocation-success, after one failed attempt: appends 'Exit Boot Services "
            "Invocation', '... Returned with Failure' and '... Returned with Success' to PCR 5."
        ),
        reference=_EBS_REFERENCE,
        apply=lambda log: _append_actions(log, 5, EBS_INVOCATION, EBS_FAILURE, EBS_SUCCESS),
    ),
)

QUIRK_IDS: frozenset[str] = frozenset(q.id for q in QUIRKS)
_BY_ID = {q.id: q for q in QUIRKS}


def quirk_by_id(quirk_id: str) -> Quirk | None:
    """The quirk with this id, or ``None``."""
    return _BY_ID.get(quirk_id)
