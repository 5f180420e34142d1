"""The host trust-state machine: an Enum, one transition table, one function that checks it.

::

    PENDING ──PASS──▶ TRUSTED ──PASS (renew)──▶ TRUSTED
       │                 │ FAIL / INCIDENT_UNRESOLVED          ▲
       │ FAIL /          ▼                                     │ PASS (incident resolved after the
       └─INCIDENT_UNRESOLVED─▶ QUARANTINED ──PASS_BLOCKED──▶ QUARANTINED   last failure, and the
                                   │                                       pass after the resolution)
                                   └──────────────PASS──────────────────────┘

A host leaves QUARANTINED only on ``PASS``, which the core derives (``release_allowed``) when
its incident is resolved (REMEDIATED or CLOSED on ``attest.incidents.v1``), the resolution is
later than the host's last failure, and the passing verdict was appraised after the resolution.
Any other pass is ``PASS_BLOCKED``. Every (state, trigger) pair missing from ``TRANSITIONS`` is
refused by ``check_transition``. ``UNKNOWN`` (a state a newer writer knows) allows nothing.

Identity. The first verdict binds the host to its EK (``ek_key_sha256``, ``services.ekid``). A
verdict naming another EK is ``EK_MISMATCH``: every state goes QUARANTINED, nothing is issued,
and ``ek_mismatch_at`` blocks every later pass until an operator releases the host
(``hostgate identity release``, seen here as the collector's ``IdentityEvent`` RELEASED). The
release (``RELEASE``) resets the EK binding, revokes what the old TPM holds and leaves the host
REVOKED (it must attest again), or QUARANTINED (``RELEASE_BLOCKED``) while a failure still
waits for its incident's resolution: a release never launders a failed attestation.

``HostTrustState`` is the value the issuer keeps per host (Avro ``hostgate.IssuerHostState``);
``public_record`` projects it to ``hostgate.HostState`` for ``attest.hosts.v1``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Final

from cryptography import x509

from services.issuer.errors import InvalidTransition, IssuanceError

#: Most unexpired certificates tracked per host; beyond it the oldest is revoked (SUPERSEDED).
MAX_HELD: Final = 16
#: Most revoked, unexpired certificates a state record may carry (a corrupt/hostile record
#: beyond it is refused).
MAX_REVOKED: Final = 1024
#: How long a revoked certificate stays in the state after it expired (so at least one CRL
#: issued after its expiry still lists it; RFC 5280, 3.3).
REVOKED_RETENTION: Final = dt.timedelta(hours=24)
#: Incident statuses that count as resolved (the incidents stage's ``IncidentStatus.resolved``).
RESOLVED_STATUSES: Final = frozenset({"REMEDIATED", "CLOSED"})


class HostTrust(Enum):
    """Trust state of a host (Avro enum ``hostgate.HostTrust``)."""

    UNKNOWN = "UNKNOWN"
    PENDING = "PENDING"
    TRUSTED = "TRUSTED"
    QUARANTINED = "QUARANTINED"
    REVOKED = "REVOKED"


class Trigger(Enum):
    """What can move a host."""

    PASS = "PASS"
    """A passing verdict that may (re)issue a credential."""
    PASS_BLOCKED = "PASS_BLOCKED"
    """A passing verdict while the incident is unresolved, or older than its resolution."""
    FAIL = "FAIL"
    """A failing verdict (or one whose result this version does not understand)."""
    INCIDENT_UNRESOLVED = "INCIDENT_UNRESOLVED"
    """An incident event leaving the host's incident unresolved (opened, updated, regressed...)."""
    INCIDENT_RESOLVED = "INCIDENT_RESOLVED"
    """An incident event marking it REMEDIATED or CLOSED."""
    OPERATOR_REVOKE = "OPERATOR_REVOKE"
    """An operator revoked the host's credentials (retired host); it must attest again."""
    EK_MISMATCH = "EK_MISMATCH"
    """A verdict for the host named an EK other than the one it is bound to (suspicious)."""
    RELEASE = "RELEASE"
    """An operator released the host's identity (new TPM): EK binding reset, must attest."""
    RELEASE_BLOCKED = "RELEASE_BLOCKED"
    """The same, while a failure still waits for its incident's resolution."""


_H, _T = HostTrust, Trigger
TRANSITIONS: Final[Mapping[tuple[HostTrust, Trigger], HostTrust]] = {
    (_H.PENDING, _T.PASS): _H.TRUSTED,
    (_H.PENDING, _T.FAIL): _H.QUARANTINED,
    (_H.PENDING, _T.INCIDENT_UNRESOLVED): _H.QUARANTINED,
    (_H.PENDING, _T.INCIDENT_RESOLVED): _H.PENDING,
    (_H.TRUSTED, _T.PASS): _H.TRUSTED,
    (_H.TRUSTED, _T.FAIL): _H.QUARANTINED,
    (_H.TRUSTED, _T.INCIDENT_UNRESOLVED): _H.QUARANTINED,
    (_H.TRUSTED, _T.INCIDENT_RESOLVED): _H.TRUSTED,
    (_H.TRUSTED, _T.OPERATOR_REVOKE): _H.REVOKED,
    (_H.QUARANTINED, _T.PASS): _H.TRUSTED,
    (_H.QUARANTINED, _T.PASS_BLOCKED): _H.QUARANTINED,
    (_H.QUARANTINED, _T.FAIL): _H.QUARANTINED,
    (_H.QUARANTINED, _T.INCIDENT_UNRESOLVED): _H.QUARANTINED,
    (_H.QUARANTINED, _T.INCIDENT_RESOLVED): _H.QUARANTINED,
    (_H.REVOKED, _T.PASS): _H.TRUSTED,
    (_H.REVOKED, _T.FAIL): _H.QUARANTINED,
    (_H.REVOKED, _T.INCIDENT_UNRESOLVED): _H.QUARANTINED,
    (_H.REVOKED, _T.INCIDENT_RESOLVED): _H.REVOKED,
    (_H.REVOKED, _T.OPERATOR_REVOKE): _H.REVOKED,
    (_H.PENDING, _T.EK_MISMATCH): _H.QUARANTINED,
    (_H.TRUSTED, _T.EK_MISMATCH): _H.QUARANTINED,
    (_H.QUARANTINED, _T.EK_MISMATCH): _H.QUARANTINED,
    (_H.REVOKED, _T.EK_MISMATCH): _H.QUARANTINED,
    (_H.PENDING, _T.RELEASE): _H.PENDING,
    (_H.TRUSTED, _T.RELEASE): _H.REVOKED,
    (_H.QUARANTINED, _T.RELEASE): _H.REVOKED,
    (_H.REVOKED, _T.RELEASE): _H.REVOKED,
    (_H.QUARANTINED, _T.RELEASE_BLOCKED): _H.QUARANTINED,
}
"""Every allowed (state, trigger) → next state. PASS_BLOCKED outside QUARANTINED is missing on
purpose: an unresolved incident always quarantines first, so it would mean corrupt state."""


def check_transition(host_id: str, state: HostTrust, trigger: Trigger) -> HostTrust:
    """The state ``trigger`` moves ``state`` to, or ``InvalidTransition``."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransition(host_id, state.value, trigger.value) from None


class RevocationReason(Enum):
    """Why a certificate was revoked (Avro enum ``hostgate.RevocationReason``)."""

    UNKNOWN = "UNKNOWN"
    KEY_COMPROMISE = "KEY_COMPROMISE"
    SUPERSEDED = "SUPERSEDED"
    CESSATION_OF_OPERATION = "CESSATION_OF_OPERATION"

    @property
    def crl_reason(self) -> x509.ReasonFlags:
        """The RFC 5280 CRLReason."""
        return {
            RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
            RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
            RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
        }.get(self, x509.ReasonFlags.unspecified)


@dataclass(frozen=True)
class HeldCredential:
    """An unexpired, unrevoked certificate issued to the host."""

    serial: str
    not_after: dt.datetime
    verdict_id: str


@dataclass(frozen=True)
class RevokedCredential:
    """A certificate revoked before it expired."""

    serial: str
    not_after: dt.datetime
    revoked_at: dt.datetime
    reason: RevocationReason


@dataclass(frozen=True)
class HostTrustState:
    """Everything the issuer remembers about one host."""

    host_id: str
    state: HostTrust
    since: dt.datetime
    reason: str
    verdict_id: str | None = None
    cert_serial: str | None = None
    cert_not_after: dt.datetime | None = None
    incident_id: str | None = None
    incident_status: str | None = None
    incident_changed_at: dt.datetime | None = None
    last_failure_at: dt.datetime | None = None
    held: tuple[HeldCredential, ...] = ()
    revoked: tuple[RevokedCredential, ...] = ()
    ek_key_sha256: bytes | None = None
    """The EK this host's verdicts must name (the first verdict binds it; a release resets)."""
    ek_mismatch_at: dt.datetime | None = None
    """When a verdict named another EK: no pass lifts the quarantine until a release."""

    @classmethod
    def pending(cls, host_id: str, at: dt.datetime) -> HostTrustState:
        """A host the issuer has not seen yet."""
        return cls(host_id, HostTrust.PENDING, at, "no verdict yet")

    @property
    def incident_resolved(self) -> bool:
        """True if the host has no incident, or its latest one is REMEDIATED or CLOSED."""
        return self.incident_status is None or self.incident_status in RESOLVED_STATUSES

    def release_allowed(self, appraised_at: dt.datetime) -> bool:
        """May a pass appraised at ``appraised_at`` make this host trusted?

        Yes if its incident is resolved and, when it ever failed, the resolution came after the
        latest failure and the pass after the resolution — and no verdict named another EK
        since the last operator release.
        """
        if self.ek_mismatch_at is not None or not self.incident_resolved:
            return False
        if self.last_failure_at is None and self.state is not HostTrust.QUARANTINED:
            return True
        resolved_at = self.incident_changed_at
        if resolved_at is None or self.incident_status is None:
            return False
        if self.last_failure_at is not None and resolved_at <= self.last_failure_at:
            return False
        return appraised_at > resolved_at

    def failure_pending(self) -> bool:
        """A failure still waiting for its incident's resolution (what a release must keep)."""
        if not self.incident_resolved:
            return True
        if self.last_failure_at is None:
            return False
        resolved_at = self.incident_changed_at
        return resolved_at is None or resolved_at <= self.last_failure_at

    # -- credential bookkeeping -----------------------------------------------------------

    def pruned(self, at: dt.datetime) -> HostTrustState:
        """Drop expired held certificates and revoked ones past their retention."""
        held = tuple(h for h in self.held if h.not_after > at)
        revoked = tuple(r for r in self.revoked if r.not_after + REVOKED_RETENTION > at)
        return replace(self, held=held, revoked=revoked)

    def revoke_all(self, at: dt.datetime, reason: RevocationReason) -> HostTrustState:
        """Move every held certificate to ``revoked``."""
        moved = tuple(RevokedCredential(h.serial, h.not_after, at, reason) for h in self.held)
        return replace(self, held=(), revoked=self.revoked + moved, cert_serial=None,
                       cert_not_after=None)

    def with_credential(self, held: HeldCredential, at: dt.datetime,
                        max_held: int = MAX_HELD) -> HostTrustState:
        """Add a new certificate; the oldest beyond ``max_held`` are revoked as SUPERSEDED."""
        all_held = (*self.held, held)
        excess = max(0, len(all_held) - max_held)
        superseded = tuple(RevokedCredential(h.serial, h.not_after, at,
                                             RevocationReason.SUPERSEDED)
                           for h in all_held[:excess])
        return replace(self, held=all_held[excess:], revoked=self.revoked + superseded,
                       cert_serial=held.serial, cert_not_after=held.not_after)

    # -- records ----------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The ``hostgate.IssuerHostState`` record."""
        return {
            "host_id": self.host_id, "state": self.state.value, "since": self.since,
            "reason": self.reason, "verdict_id": self.verdict_id,
            "cert_serial": self.cert_serial, "cert_not_after": self.cert_not_after,
            "incident_id": self.incident_id, "incident_status": self.incident_status,
            "incident_changed_at": self.incident_changed_at,
            "last_failure_at": self.last_failure_at,
            "held": [{"serial": h.serial, "not_after": h.not_after, "verdict_id": h.verdict_id}
                     for h in self.held],
            "revoked": [{"serial": r.serial, "not_after": r.not_after,
                         "revoked_at": r.revoked_at, "reason": r.reason.value}
                        for r in self.revoked],
            "ek_key_sha256": self.ek_key_sha256, "ek_mismatch_at": self.ek_mismatch_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> HostTrustState:
        """Read a ``hostgate.IssuerHostState`` record (bounded; an unknown state is refused)."""
        held_raw, revoked_raw = record.get("held") or [], record.get("revoked") or []
        if len(held_raw) > MAX_HELD * 2 or len(revoked_raw) > MAX_REVOKED:
            raise IssuanceError(f"state of host {record.get('host_id')!r} holds "
                                f"{len(held_raw)} held / {len(revoked_raw)} revoked entries, "
                                "over the limits", field="held")
        try:
            state = HostTrust(record["state"])
        except ValueError:
            raise IssuanceError(f"state of host {record.get('host_id')!r} is "
                                f"{record.get('state')!r}", field="state") from None
        return cls(
            host_id=record["host_id"], state=state, since=record["since"],
            reason=record["reason"], verdict_id=record.get("verdict_id"),
            cert_serial=record.get("cert_serial"), cert_not_after=record.get("cert_not_after"),
            incident_id=record.get("incident_id"), incident_status=record.get("incident_status"),
            incident_changed_at=record.get("incident_changed_at"),
            last_failure_at=record.get("last_failure_at"),
            held=tuple(HeldCredential(h["serial"], h["not_after"], h["verdict_id"])
                       for h in held_raw),
            revoked=tuple(RevokedCredential(r["serial"], r["not_after"], r["revoked_at"],
                                            _reason(r["reason"])) for r in revoked_raw),
            ek_key_sha256=None if record.get("ek_key_sha256") is None
            else bytes(record["ek_key_sha256"]),
            ek_mismatch_at=record.get("ek_mismatch_at"),
        )

    def public_record(self) -> dict[str, Any]:
        """The ``hostgate.HostState`` record for ``attest.hosts.v1``."""
        trusted = self.state is HostTrust.TRUSTED
        return {
            "host_id": self.host_id, "state": self.state.value,
            "cert_serial": self.cert_serial if trusted else None,
            "cert_not_after": self.cert_not_after if trusted else None,
            "incident_id": self.incident_id if self.state is HostTrust.QUARANTINED else None,
            "verdict_id": self.verdict_id, "since": self.since, "reason": self.reason,
        }


def _reason(value: str) -> RevocationReason:
    try:
        return RevocationReason(value)
    except ValueError:
        return RevocationReason.UNKNOWN


__all__ = [
    "MAX_HELD",
    "TRANSITIONS",
    "HeldCredential",
    "HostTrust",
    "HostTrustState",
    "RevocationReason",
    "RevokedCredential",
    "Trigger",
    "check_transition",
]
