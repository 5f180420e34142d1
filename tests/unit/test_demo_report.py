"""The demo's self-check and report rendering (``services.demo.report``), on hand-built outcomes.

The outcomes mirror what the demo observes on the topics (see ``apply_record``); the records
folded in below have the field names of the real Avro schemas."""

from __future__ import annotations

import json

import pytest

from services.agent.tamper import PROFILES
from services.demo.orchestrator import DemoConfig, apply_record, is_final, parse_tampers, plan
from services.demo.report import (
    EXPECTED_REASONS,
    DemoRun,
    HostOutcome,
    RuleFailure,
    judge,
    render_html,
    to_json,
)
from services.errors import HostgateError


def _run(*hosts: HostOutcome, issuer: bool = True) -> DemoRun:
    return DemoRun(run_id="r1", started_at="2026-01-01T00:00:00+00:00",
                   finished_at="2026-01-01T00:01:00+00:00", duration_s=60.0, policy_id="p",
                   policy_digest="sha256:" + "ab" * 32, stages=("collector", "verifier"),
                   issuer_running=issuer, hosts=hosts)


CLEAN_OK = HostOutcome("h-00", "fedora-40-shim", None, verdict="PASS", trust="TRUSTED",
                       cert_serial="1f2e")
SB_OK = HostOutcome("h-01", "ubuntu-24.04-shim", "secure_boot_off", verdict="FAIL",
                    failed_rules=(RuleFailure("policy.secureboot.enabled",
                                              "Secure Boot is off.", "PCR 7 event #3 x"),),
                    trust="QUARANTINED", incident_id="inc-1")
AK_OK = HostOutcome("h-02", "fedora-40-shim", "wrong_ak", rejection="BAD_SIGNATURE",
                    rejection_detail="not signed by the enrolled AK", trust="QUARANTINED",
                    incident_id="inc-2")


def test_every_profile_has_an_expected_reason() -> None:
    assert set(EXPECTED_REASONS) == set(PROFILES)


def test_judge_accepts_the_right_outcomes() -> None:
    run = _run(CLEAN_OK, SB_OK, AK_OK)
    assert [j.ok for j in run.judgements()] == [True, True, True]
    assert run.ok and run.counts() == {"TRUSTED": 1, "QUARANTINED": 2}


@pytest.mark.parametrize(("host", "why"), [
    (HostOutcome("c", "i", None, verdict="FAIL", failed_rules=(RuleFailure("r", "s"),)),
     "clean host did not pass"),
    (HostOutcome("c", "i", None, verdict="PASS"), "trusted with a certificate"),
    (HostOutcome("t", "i", "secure_boot_off", verdict="PASS"), "passed"),
    (HostOutcome("t", "i", "secure_boot_off", verdict="FAIL",
                 failed_rules=(RuleFailure("verifier.policy.none_in_force", "s"),),
                 trust="QUARANTINED", incident_id="x"), "expected one of"),
    (HostOutcome("t", "i", "wrong_ak", rejection="BAD_SIGNATURE", trust="TRUSTED"),
     "quarantined"),
    (HostOutcome("t", "i", "forged_log"), "no verdict or rejection"),
])
def test_judge_refuses_the_wrong_outcomes(host: HostOutcome, why: str) -> None:
    j = judge(host, issuer_running=True)
    assert not j.ok and why in j.why
    assert not _run(CLEAN_OK, host).ok


def test_without_an_issuer_a_pass_is_enough() -> None:
    assert judge(HostOutcome("c", "i", None, verdict="PASS"), issuer_running=False).ok


def test_observed_records_fold_into_the_outcome() -> None:
    h = HostOutcome("h", "img", "secure_boot_off")
    h = apply_record(h, "attest.verdicts.v1", {
        "result": "FAIL", "verdict_id": "v1", "failed_rules": [
            {"rule_id": "policy.secureboot.enabled", "sentence": "Secure Boot is off.",
             "event": {"pcr": 7, "seq": 4, "event_type_name": "EV_EFI_VARIABLE_DRIVER_CONFIG",
                       "data_summary": "SecureBoot=0"}}]})
    assert not is_final(h, issuer_running=True)
    h = apply_record(h, "attest.hosts.v1", {"state": "QUARANTINED", "cert_serial": None,
                                            "incident_id": None})
    assert not is_final(h, issuer_running=True)
    h = apply_record(h, "attest.incidents.v1", {"incident_id": "inc-9"})
    assert is_final(h, issuer_running=True) and judge(h, issuer_running=True).ok
    assert h.failed_rules[0].event == ("PCR 7 event #4 EV_EFI_VARIABLE_DRIVER_CONFIG: "
                                       "SecureBoot=0")


def test_json_and_html_report() -> None:
    evil = HostOutcome("h-<b>", "img", "secure_boot_off", verdict="FAIL",
                       failed_rules=(RuleFailure("policy.x", "<script>alert(1)</script>"),))
    run = _run(CLEAN_OK, SB_OK, AK_OK, evil)
    doc = json.loads(json.dumps(to_json(run)))
    assert doc["ok"] is False and [h["check"]["ok"] for h in doc["hosts"]] == [
        True, True, True, False]
    page = render_html(run)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    for external in ("<script", "<link", "src=", "http://", "https://", "url("):
        assert external not in page
    assert "&lt;script&gt;" in page and "h-&lt;b&gt;" in page
    for h in run.hosts[:3]:
        assert f'id="{h.host_id}"' in page
    assert "cert 1f2e" in page and "inc-2" in page


def test_plan_uses_unique_run_ids_and_fitting_images() -> None:
    specs = plan(DemoConfig(hosts=12, seed=3), "run1")
    assert len({s.host_id for s in specs}) == 12
    assert all(s.host_id.startswith("demo-run1-") for s in specs)
    tampered = {s.tamper: s.image for s in specs if s.tamper}
    assert set(tampered) == {"secure_boot_off", "kernel_debugger_on", "unknown_bootloader",
                             "forged_log", "replayed_nonce", "wrong_ak"}
    assert tampered["kernel_debugger_on"] == "windows-server-2022"
    assert tampered["unknown_bootloader"] != "windows-server-2022"
    assert [s.tamper for s in plan(DemoConfig(hosts=12, seed=3), "x")] == [
        s.tamper for s in specs]
    with pytest.raises(HostgateError):
        parse_tampers(["no_such_profile=1"])
