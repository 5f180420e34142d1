"""The incidents core with real Avro records: one incident per host with N occurrences,
indicators, out-of-order and malformed commands, deterministic ids, liveness, no key material."""

from __future__ import annotations

import json

import pytest

from services.incidents.config import IncidentsConfig
from services.incidents.core import (
    COMMAND,
    INTAKE_REJECTED,
    VERDICT,
    MisroutedRecord,
    incident_id_for,
)
from services.incidents.model import MAX_INDICATORS
from services.incidents.ocsf import validate
from tests.unit.incidents_support import (
    AK_NAME,
    EK_PUBLIC,
    HOUR,
    T0,
    Driver,
    command,
    rejection,
    verdict,
)


def _events(d: Driver) -> list[tuple[str, str]]:
    return [(o.record["event"], o.record["status"]) for o in d.outputs
            if o.subject == "hostgate.IncidentEvent"]


def test_repeated_failures_make_one_incident_with_n_occurrences() -> None:
    d = Driver()
    for n in range(1, 6):
        d.feed(VERDICT, verdict("host-a", n, at=T0 + n * HOUR, rules=("pcr7.secureboot",
                                                                    f"rule.{n}")))
    inc = d.incident("host-a")
    assert inc is not None
    assert inc["occurrences"] == 5 and inc["status"] == "OPEN"
    assert inc["incident_id"] == incident_id_for("host-a", "v-host-a-1")
    assert {o.record["incident_id"] for o in d.outputs} == {inc["incident_id"]}
    assert _events(d) == [("OPENED", "OPEN")] + [("UPDATED", "OPEN")] * 4
    assert [o.record["occurrences"] for o in d.outputs] == [1, 2, 3, 4, 5]
    # Each occurrence's indicators: rules, evidence coordinates and digest, policy digest.
    assert [i["record_id"] for i in inc["indicators"]] == [f"v-host-a-{n}" for n in range(1, 6)]
    last = inc["indicators"][-1]
    assert [r["rule_id"] for r in last["failed_rules"]] == ["pcr7.secureboot", "rule.5"]
    assert last["failed_rules"][0]["event"]["pcr"] == 7
    assert last["evidence"] == {"topic": "attest.evidence.v1", "partition": 2, "offset": 105}
    assert last["evidence_digest"] == verdict("host-a", 5)["evidence_digest"]
    assert last["policy_digest"] == verdict("host-a", 5)["policy_digest"]
    assert last["record"] == {"topic": "attest.verdicts.v1", "partition": 0, "offset": 4}
    # Times come from the verdicts, never a clock.
    assert [o.record["occurred_at"] for o in d.outputs] == [T0 + n * HOUR for n in range(1, 6)]
    assert inc["opened_at"].timestamp() * 1000 == T0 + HOUR
    # One Detection Finding per failure, one Incident Finding per lifecycle event.
    classes = [f.class_uid for f in d.findings]
    assert classes.count(2004) == 5 and classes.count(2005) == 5
    assert len({f.uid for f in d.findings}) == 10


def test_indicators_are_bounded_keeping_the_first_and_the_latest() -> None:
    d = Driver()
    for n in range(1, 41):
        d.feed(VERDICT, verdict("host-a", n, at=T0 + n))
    inc = d.incident("host-a")
    assert inc is not None and inc["occurrences"] == 40
    ids = [i["record_id"] for i in inc["indicators"]]
    assert len(ids) == MAX_INDICATORS
    assert ids[0] == "v-host-a-1" and ids[-1] == "v-host-a-40" and ids[1] == "v-host-a-26"


def test_a_redelivered_verdict_is_not_a_new_occurrence() -> None:
    d = Driver()
    d.feed(VERDICT, verdict("host-a", 1))
    again = d.feed(VERDICT, verdict("host-a", 1))
    assert again.decision.outputs == () and again.decision.state_updates == ()
    assert d.incident("host-a")["occurrences"] == 1  # type: ignore[index]


def test_full_lifecycle_then_a_new_failure_opens_a_new_incident() -> None:
    d = Driver()
    d.feed(VERDICT, verdict("host-a", 1))
    first = d.incident("host-a")["incident_id"]  # type: ignore[index]
    steps = [("ACKNOWLEDGE", "took it"), ("ROOT_CAUSE", "shim downgraded by bootkit"),
             ("REMEDIATE", "reflashed"), ("CLOSE", "post-mortem PM-7 done")]
    for n, (action, reason) in enumerate(steps, start=1):
        d.feed(COMMAND, command("host-a", first, action, n=n, at=T0 + n, reason=reason,
                                actor="bob"))
    inc = d.incident("host-a")
    assert inc is not None and inc["status"] == "CLOSED"
    assert inc["root_cause"] == "shim downgraded by bootkit" and inc["assignee"] == "bob"
    assert inc["applied_commands"] == ["cmd-1", "cmd-2", "cmd-3", "cmd-4"]
    evs = [o.record for o in d.outputs]
    assert [(e["event"], e["resolved"], e["actor"]) for e in evs[1:]] == [
        ("ACKNOWLEDGED", False, "bob"), ("ROOT_CAUSED", False, "bob"),
        ("REMEDIATED", True, "bob"), ("CLOSED", True, "bob")]
    assert [e["occurred_at"] for e in evs[1:]] == [T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    assert [e["command_id"] for e in evs[1:]] == ["cmd-1", "cmd-2", "cmd-3", "cmd-4"]
    d.feed(VERDICT, verdict("host-a", 2, at=T0 + 10))
    new = d.incident("host-a")
    assert new is not None and new["incident_id"] != first and new["status"] == "OPEN"
    assert new["closed_incidents"] == [first] and new["occurrences"] == 1
    late = d.feed(COMMAND, command("host-a", first, "ACKNOWLEDGE", n=9, at=T0 + 11))
    (out,) = late.decision.outputs
    assert (out.subject, out.record["reason"]) == ("hostgate.RemediationRejected",
                                                   "INCIDENT_CLOSED")
    assert late.decision.state_updates == ()


def test_failure_after_remediation_regresses_to_acknowledged() -> None:
    d = Driver()
    d.feed(VERDICT, verdict("host-a", 1))
    inc_id = d.incident("host-a")["incident_id"]  # type: ignore[index]
    for n, action in enumerate(("ACKNOWLEDGE", "ROOT_CAUSE", "REMEDIATE"), start=1):
        d.feed(COMMAND, command("host-a", inc_id, action, n=n))
    d.feed(VERDICT, verdict("host-a", 2, result="PASS"))
    assert d.incident("host-a")["passed_since_remediation"] is True  # type: ignore[index]
    d.feed(VERDICT, verdict("host-a", 3))
    inc = d.incident("host-a")
    assert inc is not None and inc["status"] == "ACKNOWLEDGED" and inc["occurrences"] == 2
    assert inc["passed_since_remediation"] is False
    assert _events(d)[-1] == ("REGRESSED", "ACKNOWLEDGED")


@pytest.mark.parametrize(("action", "incident", "reason"), [
    ("CLOSE", "own", "INVALID_TRANSITION"),
    ("REMEDIATE", "own", "INVALID_TRANSITION"),
    ("ACKNOWLEDGE", "inc-doesnotexist", "NO_SUCH_INCIDENT"),
    ("UNKNOWN", "own", "UNSUPPORTED_ACTION"),
])
def test_out_of_order_or_unknown_commands_are_rejected_and_change_nothing(
        action: str, incident: str, reason: str) -> None:
    d = Driver()
    d.feed(VERDICT, verdict("host-a", 1))
    before = d.incident("host-a")
    inc_id = before["incident_id"] if incident == "own" else incident  # type: ignore[index]
    result = d.feed(COMMAND, command("host-a", inc_id, action, n=1, at=T0 + 5))
    (out,) = result.decision.outputs
    assert out.subject == "hostgate.RemediationRejected"
    assert out.record["reason"] == reason
    assert out.record["rejected_at"] == T0 + 5 and out.record["host_id"] == "host-a"
    assert out.record["command"]["topic"] == "attest.remediation.v1"
    assert result.decision.state_updates == ()
    assert d.incident("host-a") == before
    if reason == "INVALID_TRANSITION":
        assert "allowed: ACKNOWLEDGE" in out.record["detail"]


def test_empty_actor_duplicate_command_and_wrong_key_are_rejected() -> None:
    d = Driver()
    d.feed(VERDICT, verdict("host-a", 1))
    inc_id = d.incident("host-a")["incident_id"]  # type: ignore[index]
    r = d.feed(COMMAND, command("host-a", inc_id, "ACKNOWLEDGE", n=1, actor=" "))
    assert r.decision.outputs[0].record["reason"] == "MISSING_FIELD"
    assert "actor" in r.decision.outputs[0].record["detail"]
    d.feed(COMMAND, command("host-a", inc_id, "ACKNOWLEDGE", n=2))
    r = d.feed(COMMAND, command("host-a", inc_id, "ROOT_CAUSE", n=2))
    assert r.decision.outputs[0].record["reason"] == "DUPLICATE"
    r = d.feed(COMMAND, command("host-a", inc_id, "ROOT_CAUSE", n=3), key="host-b")
    assert r.decision.outputs[0].record["reason"] == "NO_SUCH_INCIDENT"
    assert "keyed by host_id" in r.decision.outputs[0].record["detail"]
    assert d.incident("host-a")["status"] == "ACKNOWLEDGED"  # type: ignore[index]


def test_a_misrouted_verdict_raises_so_the_runtime_dead_letters_it() -> None:
    with pytest.raises(MisroutedRecord, match="key 'host-b' is not host_id 'host-a'"):
        Driver().feed(VERDICT, verdict("host-a", 1), key="host-b")


def test_intake_rejections_are_findings_never_incidents() -> None:
    d = Driver()
    ignored = d.feed(INTAKE_REJECTED, rejection("host-a", 1, reason="RATE_LIMITED"))
    assert ignored.decision.outputs == () and ignored.findings == ()
    assert d.incident("host-a") is None
    # A rejection names a host without proving it sent the record: a finding, no incident.
    r = d.feed(INTAKE_REJECTED, rejection("host-a", 2, reason="REPLAYED_NONCE", at=T0 + 7))
    assert r.decision.outputs == () and r.decision.state_updates == ()
    assert d.incident("host-a") is None
    (finding,) = r.findings
    validate(finding.body)
    assert finding.uid == "det-rej-host-a-2" and finding.time_ms == T0 + 7
    ind = finding.body["evidences"][0]["data"]
    assert ind["source"] == "INTAKE_REJECTION" and ind["policy_sha256"] is None
    assert [r["rule_id"] for r in ind["failed_rules"]] == ["intake.replayed_nonce"]
    assert ind["evidence"] == "attest.evidence.v1[2]@502"
    assert finding.body["metadata"]["correlation_uid"] == "intake-host-a"
    d.feed(VERDICT, verdict("host-a", 3))  # a failed verdict opens the host's incident alone
    inc = d.incident("host-a")
    assert inc is not None and inc["occurrences"] == 1
    assert [i["source"] for i in inc["indicators"]] == ["VERDICT"]


def test_unknown_verdict_result_fails_closed_and_pass_opens_nothing() -> None:
    d = Driver()
    d.feed(VERDICT, verdict("host-p", 1, result="PASS"))
    assert d.incident("host-p") is None and d.outputs == []
    d.feed(VERDICT, verdict("host-u", 1, result="UNKNOWN"))
    assert d.incident("host-u")["status"] == "OPEN"  # type: ignore[index]


def test_ids_and_decisions_are_deterministic() -> None:
    def run() -> tuple[list[object], list[bytes]]:
        d = Driver()
        d.feed(VERDICT, verdict("host-a", 1))
        d.feed(VERDICT, verdict("host-a", 2))
        inc_id = d.incident("host-a")["incident_id"]  # type: ignore[index]
        d.feed(COMMAND, command("host-a", inc_id, "ACKNOWLEDGE", n=1))
        return [(o.id, o.key, dict(o.record)) for o in d.outputs], [f.to_json()
                                                                    for f in d.findings]
    first, second = run(), run()
    assert first == second
    assert incident_id_for("host-a", "v-1") != incident_id_for("host-b", "v-1")
    assert incident_id_for("host-a", "v-1") != incident_id_for("host-a", "v-2")
    assert incident_id_for("host-a", "v-1").startswith("inc-")
    assert len({o[0] for o in first[0]}) == 3  # type: ignore[index]


def test_findings_validate_and_carry_no_key_material() -> None:
    d = Driver()
    d.feed(VERDICT, verdict("host-a", 1))
    d.feed(INTAKE_REJECTED, rejection("host-a", 2))
    inc_id = d.incident("host-a")["incident_id"]  # type: ignore[index]
    d.feed(COMMAND, command("host-a", inc_id, "ACKNOWLEDGE", n=1))
    # verdict: detection + incident finding; rejection: detection only; command: incident
    assert [f.class_uid for f in d.findings] == [2004, 2005, 2004, 2005]
    for f in d.findings:
        validate(f.body)
        text = f.to_json().decode()
        for secret in (EK_PUBLIC, AK_NAME):
            assert secret.hex() not in text and "NOT-FOR-FINDINGS" not in text
        assert json.loads(text) == f.body


def test_liveness_reports_a_silent_host_once_per_silence() -> None:
    window = 6 * HOUR
    d = Driver(config=IncidentsConfig(stale_after_ms=window))
    d.feed(VERDICT, verdict("host-a", 1, result="PASS", at=T0), timestamp_ms=T0)
    d.feed(VERDICT, verdict("host-b", 1, result="PASS", at=T0 + 5 * HOUR),
           timestamp_ms=T0 + 5 * HOUR)
    assert d.findings == []
    r = d.feed(VERDICT, verdict("host-b", 2, result="PASS", at=T0 + 7 * HOUR),
               timestamp_ms=T0 + 7 * HOUR)
    (stale,) = r.findings
    assert stale.host_id == "host-a" and stale.body["finding_info"]["analytic"]["uid"] == \
        "hostgate.liveness.stale"
    assert stale.body["time"] == T0 + 7 * HOUR and stale.body["start_time"] == T0
    validate(stale.body)
    r = d.feed(VERDICT, verdict("host-b", 3, result="PASS", at=T0 + 8 * HOUR),
               timestamp_ms=T0 + 8 * HOUR)
    assert r.findings == ()  # reported once
    d.feed(VERDICT, verdict("host-a", 2, result="PASS", at=T0 + 9 * HOUR),
           timestamp_ms=T0 + 9 * HOUR)
    r = d.feed(VERDICT, verdict("host-b", 4, result="PASS", at=T0 + 16 * HOUR),
               timestamp_ms=T0 + 16 * HOUR)
    assert sorted(f.host_id for f in r.findings) == ["host-a"]


def test_liveness_roster_is_bounded() -> None:
    d = Driver(config=IncidentsConfig(stale_after_ms=HOUR, max_roster=3))
    logs = [d.feed(VERDICT, verdict(f"host-{n}", 1, result="PASS")).decision.log
            for n in range(5)]
    assert [bool(log.get("liveness_roster_full")) for log in logs] == [False] * 3 + [True] * 2
    roster = d.state.get("hosts", "partition-0")
    assert roster is not None and len(roster["hosts"]) == 3
