"""The demo's self-check and report rendering (``services.demo.report``), on hand-built outcomes.

The outcomes mirror what the demo observes on the topics (see ``apply_record``); the records
folded in below have the field names of the real Avro schemas."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.agent.tamper import PROFILES
from services.demo.orchestrator import (
    DemoConfig,
    apply_record,
    is_final,
    parse_tampers,
    plan,
    wants_credential,
)
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
                       cert_serial="1f2e", credential_opened=True, credential_detail="1f2e",
                       answers=1)
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
    (HostOutcome("c", "i", None, verdict="PASS", trust="TRUSTED", cert_serial="ab"),
     "did not open its credential: not tried"),
    (HostOutcome("c", "i", None, verdict="PASS", trust="TRUSTED", cert_serial="ab",
                 credential_opened=False, credential_detail="CredentialRejected: sealed"),
     "did not open its credential: CredentialRejected"),
    # a replay the collector cannot tie to a used nonce is not the replayed_nonce scenario
    (HostOutcome("t", "i", "replayed_nonce", rejection="UNKNOWN_NONCE", trust="QUARANTINED",
                 incident_id="x"), "expected one of intake.REPLAYED_NONCE"),
    (HostOutcome("t", "i", "stale_quote", rejection="STALE_NONCE", trust="TRUSTED",
                 cert_serial="ab"), "refused at intake (STALE_NONCE) but TRUSTED"),
])
def test_judge_refuses_the_wrong_outcomes(host: HostOutcome, why: str) -> None:
    j = judge(host, issuer_running=True)
    assert not j.ok and why in j.why
    assert not _run(CLEAN_OK, host).ok


def test_protocol_profiles_are_judged_by_their_intake_reason() -> None:
    stale = HostOutcome("t", "i", "stale_quote", rejection="STALE_NONCE",
                        rejection_detail="nonce of challenge 'c' expired 912 ms before", answers=1)
    j = judge(stale, issuer_running=True)
    assert j.ok and "no credential" in j.why  # benign: refused, no incident, no quarantine
    assert is_final(stale, issuer_running=True)
    replayed = HostOutcome("t", "i", "replayed_nonce", verdict="PASS", verdict_id="v1",
                           trust="QUARANTINED", cert_serial="ab", incident_id="inc-3",
                           rejection="REPLAYED_NONCE", rounds=2, answers=2)
    assert judge(replayed, issuer_running=True).ok


def test_a_replaying_host_is_final_only_after_its_second_round_is_judged() -> None:
    h = HostOutcome("h", "img", "replayed_nonce", rounds=2)
    h = apply_record(h, "attest.verdicts.v1", {"result": "PASS", "verdict_id": "v1",
                                                "failed_rules": []})
    h = apply_record(h, "attest.hosts.v1", {"state": "TRUSTED", "cert_serial": "ab",
                                            "incident_id": None})
    h = apply_record(h, "attest.credentials.v1", {"credential_id": "c1", "serial": "ab"})
    assert h.answers == 1 and not wants_credential(h)  # its second round is still to come
    assert not is_final(h, issuer_running=True)
    h = apply_record(h, "attest.rejections.v1", {"reason": "REPLAYED_NONCE",
                                                 "detail": "nonce was already used"})
    assert h.answers == 2 and h.trust == "TRUSTED"
    assert not is_final(h, issuer_running=True)  # the quarantine is on its way
    assert not wants_credential(h)
    h = apply_record(h, "attest.incidents.v1", {"incident_id": "inc-4"})
    h = apply_record(h, "attest.hosts.v1", {"state": "QUARANTINED", "cert_serial": None,
                                            "incident_id": "inc-4"})
    assert is_final(h, issuer_running=True) and judge(h, issuer_running=True).ok


def test_a_trusted_host_is_final_once_it_tried_its_credential() -> None:
    h = HostOutcome("h", "img", None)
    h = apply_record(h, "attest.verdicts.v1", {"result": "PASS", "verdict_id": "v1",
                                                "failed_rules": []})
    h = apply_record(h, "attest.hosts.v1", {"state": "TRUSTED", "cert_serial": "ab",
                                            "incident_id": None})
    assert wants_credential(h) and not is_final(h, issuer_running=True)
    opened = replace(h, credential_opened=True, credential_detail="ab")
    assert is_final(opened, issuer_running=True) and judge(opened, issuer_running=True).ok
    failed = replace(h, credential_opened=False, credential_detail="CredentialNotDelivered")
    assert is_final(failed, issuer_running=True) and not judge(failed, issuer_running=True).ok


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
    assert "credential opened in TPM" in page and "yes (serial 1f2e)" in page
    assert doc["hosts"][0]["credential_opened"] == {"ok": True, "detail": "1f2e"}
    assert doc["hosts"][1]["credential_opened"] == {"ok": None, "detail": ""}


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
