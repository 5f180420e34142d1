"""The incident state machine: every (status, trigger) pair, valid and invalid, table-driven,
both through ``check_transition`` and through the stage's ``decide`` with real commands."""

from __future__ import annotations

import itertools

import pytest

from services.incidents.core import COMMAND, VERDICT
from services.incidents.lifecycle import (
    IncidentStatus,
    InvalidTransition,
    LifecycleEvent,
    Trigger,
    check_transition,
)
from tests.unit.incidents_support import T0, Driver, command, verdict

S, T, E = IncidentStatus, Trigger, LifecycleEvent

# The specification, written out independently of services.incidents.lifecycle.TRANSITIONS.
EXPECTED = {
    (S.OPEN, T.ACKNOWLEDGE): (S.ACKNOWLEDGED, E.ACKNOWLEDGED),
    (S.ACKNOWLEDGED, T.ROOT_CAUSE): (S.ROOT_CAUSED, E.ROOT_CAUSED),
    (S.ROOT_CAUSED, T.REMEDIATE): (S.REMEDIATED, E.REMEDIATED),
    (S.REMEDIATED, T.CLOSE): (S.CLOSED, E.CLOSED),
    (S.OPEN, T.FAILURE): (S.OPEN, E.UPDATED),
    (S.ACKNOWLEDGED, T.FAILURE): (S.ACKNOWLEDGED, E.UPDATED),
    (S.ROOT_CAUSED, T.FAILURE): (S.ROOT_CAUSED, E.UPDATED),
    (S.REMEDIATED, T.FAILURE): (S.ACKNOWLEDGED, E.REGRESSED),
}
ALL_PAIRS = list(itertools.product(IncidentStatus, Trigger))


@pytest.mark.parametrize(("status", "trigger"), ALL_PAIRS,
                         ids=[f"{s.value}-{t.value}" for s, t in ALL_PAIRS])
def test_check_transition_allows_exactly_the_specified_pairs(status: IncidentStatus,
                                                             trigger: Trigger) -> None:
    if (status, trigger) in EXPECTED:
        assert check_transition(status, trigger) == EXPECTED[(status, trigger)]
    else:
        with pytest.raises(InvalidTransition, match=f"{trigger.value} is not allowed in status "
                                                    f"{status.value}"):
            check_transition(status, trigger)


def test_closed_is_final_and_resolved_means_remediated_or_closed() -> None:
    assert not [t for t in Trigger if (S.CLOSED, t) in EXPECTED]
    with pytest.raises(InvalidTransition, match="the incident is final"):
        check_transition(S.CLOSED, T.ACKNOWLEDGE)
    assert {s for s in IncidentStatus if s.resolved} == {S.REMEDIATED, S.CLOSED}


PATH = [(T.ACKNOWLEDGE, S.ACKNOWLEDGED), (T.ROOT_CAUSE, S.ROOT_CAUSED),
        (T.REMEDIATE, S.REMEDIATED), (T.CLOSE, S.CLOSED)]


def _driver_in(status: IncidentStatus) -> tuple[Driver, str]:
    """A driver whose host-a incident is in ``status``, reached by real commands."""
    d = Driver()
    d.feed(VERDICT, verdict("host-a", 1))
    inc = d.incident("host-a")
    assert inc is not None
    n = 100
    for trigger, reached in PATH:
        if d.incident("host-a")["status"] == status.value:  # type: ignore[index]
            break
        n += 1
        d.feed(COMMAND, command("host-a", inc["incident_id"], trigger.value, n=n, at=T0 + n))
        assert d.incident("host-a")["status"] == reached.value  # type: ignore[index]
    return d, str(inc["incident_id"])


COMMAND_PAIRS = [(s, t) for s, t in ALL_PAIRS if t is not T.FAILURE]


@pytest.mark.parametrize(("status", "trigger"), COMMAND_PAIRS,
                         ids=[f"{s.value}-{t.value}" for s, t in COMMAND_PAIRS])
def test_stage_applies_or_rejects_each_command_in_each_status(status: IncidentStatus,
                                                              trigger: Trigger) -> None:
    d, incident_id = _driver_in(status)
    before = d.incident("host-a")
    result = d.feed(COMMAND, command("host-a", incident_id, trigger.value, n=999, at=T0 + 999))
    (out,) = result.decision.outputs
    if (status, trigger) in EXPECTED:
        new_status, event = EXPECTED[(status, trigger)]
        assert out.subject == "hostgate.IncidentEvent"
        assert (out.record["event"], out.record["status"]) == (event.value, new_status.value)
        assert out.record["resolved"] == new_status.resolved
        assert d.incident("host-a")["status"] == new_status.value  # type: ignore[index]
    else:
        assert out.subject == "hostgate.RemediationRejected"
        expected_reason = "INCIDENT_CLOSED" if status is S.CLOSED else "INVALID_TRANSITION"
        assert out.record["reason"] == expected_reason
        assert out.record["status"] == status.value
        assert result.decision.state_updates == ()
        assert d.incident("host-a") == before
