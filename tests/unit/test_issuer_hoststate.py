"""The host trust-state machine: every (state, trigger) pair, and the release rule."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace
from typing import Any

import pytest

from services.issuer.errors import InvalidTransition
from services.issuer.hoststate import (
    HeldCredential,
    HostTrust,
    HostTrustState,
    RevocationReason,
    Trigger,
    check_transition,
)
from tests.unit.issuer_support import APPRAISED

H, T = HostTrust, Trigger
EXPECTED: dict[tuple[HostTrust, Trigger], HostTrust | None] = {
    (H.PENDING, T.PASS): H.TRUSTED,
    (H.PENDING, T.PASS_BLOCKED): None,
    (H.PENDING, T.FAIL): H.QUARANTINED,
    (H.PENDING, T.INCIDENT_UNRESOLVED): H.QUARANTINED,
    (H.PENDING, T.INCIDENT_RESOLVED): H.PENDING,
    (H.PENDING, T.OPERATOR_REVOKE): None,
    (H.TRUSTED, T.PASS): H.TRUSTED,
    (H.TRUSTED, T.PASS_BLOCKED): None,
    (H.TRUSTED, T.FAIL): H.QUARANTINED,
    (H.TRUSTED, T.INCIDENT_UNRESOLVED): H.QUARANTINED,
    (H.TRUSTED, T.INCIDENT_RESOLVED): H.TRUSTED,
    (H.TRUSTED, T.OPERATOR_REVOKE): H.REVOKED,
    (H.QUARANTINED, T.PASS): H.TRUSTED,
    (H.QUARANTINED, T.PASS_BLOCKED): H.QUARANTINED,
    (H.QUARANTINED, T.FAIL): H.QUARANTINED,
    (H.QUARANTINED, T.INCIDENT_UNRESOLVED): H.QUARANTINED,
    (H.QUARANTINED, T.INCIDENT_RESOLVED): H.QUARANTINED,
    (H.QUARANTINED, T.OPERATOR_REVOKE): None,
    (H.REVOKED, T.PASS): H.TRUSTED,
    (H.REVOKED, T.PASS_BLOCKED): None,
    (H.REVOKED, T.FAIL): H.QUARANTINED,
    (H.REVOKED, T.INCIDENT_UNRESOLVED): H.QUARANTINED,
    (H.REVOKED, T.INCIDENT_RESOLVED): H.REVOKED,
    (H.REVOKED, T.OPERATOR_REVOKE): H.REVOKED,
    # A verdict naming another EK quarantines from everywhere; a release resets the identity
    # (REVOKED: attest again), except that a pending failure keeps a quarantine.
    (H.PENDING, T.EK_MISMATCH): H.QUARANTINED,
    (H.TRUSTED, T.EK_MISMATCH): H.QUARANTINED,
    (H.QUARANTINED, T.EK_MISMATCH): H.QUARANTINED,
    (H.REVOKED, T.EK_MISMATCH): H.QUARANTINED,
    (H.PENDING, T.RELEASE): H.PENDING,
    (H.TRUSTED, T.RELEASE): H.REVOKED,
    (H.QUARANTINED, T.RELEASE): H.REVOKED,
    (H.REVOKED, T.RELEASE): H.REVOKED,
    (H.PENDING, T.RELEASE_BLOCKED): None,
    (H.TRUSTED, T.RELEASE_BLOCKED): None,
    (H.QUARANTINED, T.RELEASE_BLOCKED): H.QUARANTINED,
    (H.REVOKED, T.RELEASE_BLOCKED): None,
    **{(H.UNKNOWN, t): None for t in Trigger},
}


def test_the_expectation_table_covers_every_pair() -> None:
    assert set(EXPECTED) == set(itertools.product(HostTrust, Trigger))


@pytest.mark.parametrize(("state", "trigger"), list(EXPECTED), ids=lambda v: str(v.value))
def test_transition(state: HostTrust, trigger: Trigger) -> None:
    want = EXPECTED[(state, trigger)]
    if want is None:
        with pytest.raises(InvalidTransition) as info:
            check_transition("host-1", state, trigger)
        assert str(info.value) == (f"host host-1: trigger {trigger.value} is not allowed in "
                                   f"state {state.value}")
    else:
        assert check_transition("host-1", state, trigger) is want


def _quarantined(**kw: Any) -> HostTrustState:
    base = HostTrustState("h", HostTrust.QUARANTINED, APPRAISED, "failed",
                          last_failure_at=APPRAISED)
    return replace(base, **kw)


M = dt.timedelta(minutes=1)


@pytest.mark.parametrize(("status", "resolved_at", "pass_at", "allowed"), [
    (None, None, APPRAISED + 9 * M, False),             # no incident seen since the failure
    ("OPEN", APPRAISED + M, APPRAISED + 9 * M, False),  # unresolved
    ("ACKNOWLEDGED", APPRAISED + M, APPRAISED + 9 * M, False),
    ("UNKNOWN", APPRAISED + M, APPRAISED + 9 * M, False),  # a status we do not know: fail closed
    ("REMEDIATED", APPRAISED + M, APPRAISED + 9 * M, True),
    ("CLOSED", APPRAISED + M, APPRAISED + 9 * M, True),
    ("REMEDIATED", APPRAISED + M, APPRAISED + M, False),      # pass not *after* the resolution
    ("REMEDIATED", APPRAISED + M, APPRAISED - M, False),      # evidence older than the fix
    ("REMEDIATED", APPRAISED - M, APPRAISED + 9 * M, False),  # resolution predates the failure
])
def test_release_rule(status: str | None, resolved_at: dt.datetime | None,
                      pass_at: dt.datetime, allowed: bool) -> None:
    state = _quarantined(incident_id="inc-1" if status else None, incident_status=status,
                         incident_changed_at=resolved_at)
    assert state.release_allowed(pass_at) is allowed


def test_a_host_that_never_failed_may_pass() -> None:
    assert HostTrustState.pending("h", APPRAISED).release_allowed(APPRAISED)


def test_credential_bookkeeping_supersedes_revokes_and_prunes() -> None:
    state = HostTrustState.pending("h", APPRAISED)
    for i in range(4):
        state = state.with_credential(
            HeldCredential(f"{i:x}", APPRAISED + dt.timedelta(hours=24 + i), f"v{i}"),
            APPRAISED, max_held=3)
    assert [h.serial for h in state.held] == ["1", "2", "3"]
    assert [(r.serial, r.reason) for r in state.revoked] == [("0", RevocationReason.SUPERSEDED)]
    assert state.cert_serial == "3"
    revoked = state.revoke_all(APPRAISED, RevocationReason.KEY_COMPROMISE)
    assert revoked.held == () and revoked.cert_serial is None
    assert [r.serial for r in revoked.revoked] == ["0", "1", "2", "3"]
    # expired certificates leave 'held' at expiry, and 'revoked' 24 h after expiry
    later = state.pruned(APPRAISED + dt.timedelta(hours=25, minutes=30))
    assert [h.serial for h in later.held] == ["2", "3"]
    assert [r.serial for r in later.revoked] == ["0"]
    assert state.pruned(APPRAISED + dt.timedelta(days=3)).revoked == ()
    assert HostTrustState.from_record(revoked.to_record()) == revoked
