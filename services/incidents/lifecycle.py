"""The incident lifecycle: statuses, what moves an incident between them, checked in one place.

::

    OPEN ──ACKNOWLEDGE──▶ ACKNOWLEDGED ──ROOT_CAUSE──▶ ROOT_CAUSED ──REMEDIATE──▶ REMEDIATED ──CLOSE──▶ CLOSED
      ▲ FAILURE               ▲ FAILURE                 ▲ FAILURE                 │ FAILURE
      └─(stays)               └─(stays)  ◀──────────────┴───────────(regresses)───┘

Operator triggers come from ``RemediationCommand`` records; ``FAILURE`` is automatic (a failed
verdict for the incident's host; an intake rejection is never one, see ``services.incidents.core``).
A failure after ``REMEDIATED`` means the
fix did not hold: the incident goes back to ``ACKNOWLEDGED`` (its root cause is in doubt). A
failure after ``CLOSED`` is not a transition: it opens a new incident. Every (status, trigger)
pair not in ``TRANSITIONS`` is refused by ``check_transition``, the one function that decides.

"Resolved" (what the issuer waits for before trusting the host again, together with a new pass)
means ``REMEDIATED`` or ``CLOSED``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final

from services.errors import HostgateError


class IncidentStatus(Enum):
    """Where an incident stands (Avro enum ``hostgate.IncidentStatus``, minus its UNKNOWN)."""

    OPEN = "OPEN"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    ROOT_CAUSED = "ROOT_CAUSED"
    REMEDIATED = "REMEDIATED"
    CLOSED = "CLOSED"

    @property
    def resolved(self) -> bool:
        """What the issuer reads as resolved: REMEDIATED or CLOSED."""
        return self in (IncidentStatus.REMEDIATED, IncidentStatus.CLOSED)


class Trigger(Enum):
    """What can move an incident: an operator action (Avro ``hostgate.RemediationAction``) or an
    automatic failure of the host."""

    ACKNOWLEDGE = "ACKNOWLEDGE"
    ROOT_CAUSE = "ROOT_CAUSE"
    REMEDIATE = "REMEDIATE"
    CLOSE = "CLOSE"
    FAILURE = "FAILURE"


class LifecycleEvent(Enum):
    """The event a transition emits (Avro enum ``hostgate.IncidentLifecycle``)."""

    OPENED = "OPENED"
    UPDATED = "UPDATED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    ROOT_CAUSED = "ROOT_CAUSED"
    REMEDIATED = "REMEDIATED"
    REGRESSED = "REGRESSED"
    CLOSED = "CLOSED"


S, T, E = IncidentStatus, Trigger, LifecycleEvent

TRANSITIONS: Final[Mapping[tuple[IncidentStatus, Trigger], tuple[IncidentStatus, LifecycleEvent]]] = {
    (S.OPEN, T.ACKNOWLEDGE): (S.ACKNOWLEDGED, E.ACKNOWLEDGED),
    (S.ACKNOWLEDGED, T.ROOT_CAUSE): (S.ROOT_CAUSED, E.ROOT_CAUSED),
    (S.ROOT_CAUSED, T.REMEDIATE): (S.REMEDIATED, E.REMEDIATED),
    (S.REMEDIATED, T.CLOSE): (S.CLOSED, E.CLOSED),
    (S.OPEN, T.FAILURE): (S.OPEN, E.UPDATED),
    (S.ACKNOWLEDGED, T.FAILURE): (S.ACKNOWLEDGED, E.UPDATED),
    (S.ROOT_CAUSED, T.FAILURE): (S.ROOT_CAUSED, E.UPDATED),
    (S.REMEDIATED, T.FAILURE): (S.ACKNOWLEDGED, E.REGRESSED),
}
"""Every allowed (status, trigger) → (new status, event emitted). Nothing else is allowed."""


class InvalidTransition(HostgateError):
    """A trigger the incident's current status does not allow (the caller turns it into a
    visible ``RemediationRejected`` record; nothing changes)."""

    def __init__(self, status: IncidentStatus, trigger: Trigger) -> None:
        self.status = status
        self.trigger = trigger
        allowed = sorted(t.value for (s, t) in TRANSITIONS if s is status)
        hint = f"allowed: {', '.join(allowed)}" if allowed else "the incident is final"
        super().__init__(f"{trigger.value} is not allowed in status {status.value} ({hint})")


def check_transition(
    status: IncidentStatus, trigger: Trigger
) -> tuple[IncidentStatus, LifecycleEvent]:
    """The new status and the event for ``trigger`` in ``status``; ``InvalidTransition`` if the
    pair is not in ``TRANSITIONS``."""
    try:
        return TRANSITIONS[(status, trigger)]
    except KeyError:
        raise InvalidTransition(status, trigger) from None


def parse_status(symbol: str) -> IncidentStatus:
    """An ``IncidentStatus`` from its Avro symbol. UNKNOWN (a newer writer's symbol read with
    the reader default) is refused rather than guessed: ``ValueError``."""
    return IncidentStatus(symbol)
