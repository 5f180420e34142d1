"""The demo's self-check and report rendering (``services.demo.report``), on hand-built outcomes.

The outcomes mirror what the demo observes on the topics (see ``apply_record``); the records
folded in below have the field names of the real Avro schemas."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.agent.hooks import hook_for
from services.agent.tamper import PROFILES
from services.demo.orchestrator import (
    DEFAULT_HOSTS,
    DEFAULT_TAMPERS,
    Attribution,
    DemoConfig,
    Watcher,
    apply_record,
    is_final,
    parse_tampers,
    plan,
    wants_credential,
)
from services.demo.report import (
    EXPECTED_REASONS,
    REFUSED_AS,
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
# refused at intake: a SOC finding about the record, no incident, no trust state
AK_OK = HostOutcome("h-02", "fedora-40-shim", "wrong_ak", rejection="BAD_SIGNATURE",
                    rejection_detail="not signed by the enrolled AK",
                    rejections=("BAD_SIGNATURE",), answers=1)


def test_every_profile_has_an_expected_reason() -> None:
    assert set(EXPECTED_REASONS) == set(PROFILES)
    attacks = {n for n, p in PROFILES.items() if p.evidence.is_attack}
    assert set(REFUSED_AS) == attacks == {"foreign_partition", "borrowed_host_id",
                                          "challenge_flood"}
    for name, allowed in REFUSED_AS.items():  # the expected reason is one records may get
        assert EXPECTED_REASONS[name] <= {f"intake.{r}" for r in allowed}, name
    assert all(hook_for(n) is None for n in attacks)  # attacks are not evidence hooks


def test_judge_accepts_the_right_outcomes() -> None:
    run = _run(CLEAN_OK, SB_OK, AK_OK)
    assert [j.ok for j in run.judgements()] == [True, True, True]
    assert run.ok and run.counts() == {"TRUSTED": 1, "QUARANTINED": 1, "REJECTED": 1}


@pytest.mark.parametrize(("host", "why"), [
    (HostOutcome("c", "i", None, verdict="FAIL", failed_rules=(RuleFailure("r", "s"),)),
     "clean host did not pass"),
    (HostOutcome("c", "i", None, verdict="PASS"), "trusted with a certificate"),
    (HostOutcome("t", "i", "secure_boot_off", verdict="PASS"), "passed"),
    (HostOutcome("t", "i", "secure_boot_off", verdict="FAIL",
                 failed_rules=(RuleFailure("verifier.policy.none_in_force", "s"),),
                 trust="QUARANTINED", incident_id="x"), "expected one of"),
    (HostOutcome("t", "i", "wrong_ak", rejection="BAD_SIGNATURE", trust="TRUSTED",
                 cert_serial="ab"), "refused at intake (BAD_SIGNATURE) but TRUSTED"),
    # an intake rejection changes no trust state and opens no incident
    (HostOutcome("t", "i", "wrong_ak", rejection="BAD_SIGNATURE", trust="QUARANTINED",
                 incident_id="inc-2"), "but incident inc-2 was opened"),
    (HostOutcome("t", "i", "quote_fewer_pcrs", rejection="SELECTION_MISMATCH",
                 trust="QUARANTINED"), "refused at intake (SELECTION_MISMATCH) but QUARANTINED"),
    (HostOutcome("t", "i", "pcr_bank_downgrade", verdict="FAIL",
                 failed_rules=(RuleFailure("verifier.banks.downgrade", "s"),),
                 trust="QUARANTINED", incident_id="x"), "expected one of intake.SELECTION_MISMATCH"),
    # a verifier profile must fail appraisal, and be quarantined for it
    (HostOutcome("t", "i", "boot_app_relabelled", verdict="FAIL",
                 failed_rules=(RuleFailure("policy.bootchain.applications", "s"),)),
     "failed appraisal but is not quarantined"),
    (HostOutcome("t", "i", "sha1_only_log", verdict="PASS"), "passed"),
    (HostOutcome("t", "i", "stale_quote", verdict="PASS", rejection="STALE_NONCE",
                 rejections=("STALE_NONCE",)), "passed appraisal"),
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
                           trust="TRUSTED", cert_serial="ab", rejection="REPLAYED_NONCE",
                           rounds=2, answers=2)
    j = judge(replayed, issuer_running=True)
    assert j.ok and "honest round passed" in j.why
    # the refused replay must not have quarantined it or opened an incident
    assert not judge(replace(replayed, trust="QUARANTINED", incident_id="inc-3"),
                     issuer_running=True).ok
    selection = HostOutcome("t", "i", "quote_fewer_pcrs", rejection="SELECTION_MISMATCH",
                            rejections=("SELECTION_MISMATCH",), answers=1)
    assert judge(selection, issuer_running=True).ok
    assert is_final(selection, issuer_running=True)


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
    assert h.answers == 2 and h.trust == "TRUSTED" and h.rejections == ("REPLAYED_NONCE",)
    # the refused replay changes no trust state: the host keeps its honest round's credential
    assert wants_credential(h) and not is_final(h, issuer_running=True)
    opened = replace(h, credential_opened=True, credential_detail="ab")
    assert is_final(opened, issuer_running=True) and judge(opened, issuer_running=True).ok
    # a failed verdict after a trusted state is a quarantine on its way
    failed = replace(h, verdict="FAIL")
    assert not is_final(failed, issuer_running=True) and not wants_credential(failed)


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
    assert "cert 1f2e" in page and "inc-1" in page
    assert "credential opened in TPM" in page and "yes (serial 1f2e)" in page
    assert doc["hosts"][0]["credential_opened"] == {"ok": True, "detail": "1f2e"}
    assert doc["hosts"][1]["credential_opened"] == {"ok": None, "detail": ""}


def test_plan_uses_unique_run_ids_and_fitting_images() -> None:
    specs = plan(DemoConfig(seed=3), "run1")  # the default: 20 hosts, half of them tampered
    assert len(specs) == DEFAULT_HOSTS == 20 and len({s.host_id for s in specs}) == 20
    assert all(s.host_id.startswith("demo-run1-") for s in specs)
    tampered = {s.tamper: s.image for s in specs if s.tamper}
    assert list(tampered) != [n for n, _ in DEFAULT_TAMPERS[:10]]  # shuffled by the seed...
    assert set(tampered) == {n for n, _ in DEFAULT_TAMPERS[:10]} == {  # ...the first ten
        "secure_boot_off", "kernel_debugger_on", "boot_app_relabelled", "challenge_flood",
        "forged_log", "borrowed_host_id", "windows_events_dropped", "quote_fewer_pcrs",
        "wrong_ak", "foreign_partition"}
    new = {n for n in tampered if n not in (
        "secure_boot_off", "kernel_debugger_on", "forged_log", "wrong_ak")}
    assert len(new) >= 3  # the attacks of the soundness issue are in the default mix
    for name in ("kernel_debugger_on", "windows_events_dropped"):
        assert tampered[name] == "windows-server-2022"
    assert tampered["boot_app_relabelled"] != "windows-server-2022"
    clean = [s for s in specs if s.tamper is None]
    assert {s.image for s in clean} == {"ubuntu-24.04-shim", "fedora-40-shim",
                                        "windows-server-2022"}  # TRUSTED shown on each image
    assert {s.target for s in specs if s.target} <= {s.host_id for s in clean}
    assert [s.tamper for s in plan(DemoConfig(seed=3), "x")] == [s.tamper for s in specs]
    small = plan(DemoConfig(hosts=12, seed=3), "run4")  # a smaller fleet takes the first six
    assert {s.tamper for s in small if s.tamper} == {n for n, _ in DEFAULT_TAMPERS[:6]}
    with pytest.raises(HostgateError):
        parse_tampers(["no_such_profile=1"])


# --- protocol attacks: records naming another host ------------------------------------------
VICTIM = replace(CLEAN_OK, host_id="h-03", named_by=("h-04",))
FLOOD = HostOutcome("h-04", "fedora-40-shim", "challenge_flood", target="h-03", attack_sent=3,
                    rejection="UNAUTHENTICATED", rejections=("UNAUTHENTICATED",) * 3, answers=3)
BORROWED = HostOutcome("h-05", "ubuntu-24.04-shim", "borrowed_host_id", target="h-03",
                       attack_sent=2, rejections=("UNAUTHENTICATED", "UNAUTHENTICATED"),
                       rejection="UNAUTHENTICATED", answers=2,
                       attack_heard=("enrolment REFUSED: UNAUTHENTICATED",))
FOREIGN = HostOutcome("h-06", "fedora-40-shim", "foreign_partition", attack_sent=2,
                      rejections=("WRONG_PARTITION",) * 2, rejection="WRONG_PARTITION", answers=2)


def test_an_attack_whose_records_are_all_refused_and_whose_victim_is_trusted_passes() -> None:
    run = _run(CLEAN_OK, VICTIM, FLOOD, BORROWED, FOREIGN)
    judged = dict(zip([h.host_id for h in run.hosts], run.judgements(), strict=True))
    assert all(j.ok for j in judged.values()), judged
    assert "3 records refused at intake (3 UNAUTHENTICATED)" in judged["h-04"].why
    assert "h-03, whose id they name, still TRUSTED" in judged["h-04"].why
    assert "2 UNAUTHENTICATED" in judged["h-05"].why
    assert "unharmed by the refused records h-04" in judged["h-03"].why
    assert run.counts() == {"TRUSTED": 2, "REJECTED": 3}
    for h in (FLOOD, BORROWED, FOREIGN):
        assert is_final(h, issuer_running=True)


@pytest.mark.parametrize(("attacker", "victim", "why"), [
    # the victim was harmed: refused (its own request counted against it), or not trusted
    (FLOOD, replace(VICTIM, rejection="RATE_LIMITED", rejections=("RATE_LIMITED",)),
     "but h-03, whose id they name: clean host rejected at intake (1 RATE_LIMITED)"),
    (BORROWED, replace(VICTIM, trust=None, cert_serial=None), "but h-03, whose id they name"),
    (FLOOD, None, "is not in the run"),
    # a record the collector did not refuse (or not yet): never a pass
    (replace(FLOOD, rejections=("UNAUTHENTICATED",) * 2), VICTIM,
     "only 2 of the 3 records the challenge_flood attack wrote were refused"),
    (replace(FLOOD, rejections=("UNAUTHENTICATED", "UNAUTHENTICATED", "RATE_LIMITED")), VICTIM,
     "records refused for RATE_LIMITED, expected UNAUTHENTICATED"),
    (replace(BORROWED, rejections=("EK_CHANGED", "EK_CHANGED")), VICTIM,
     "refused for EK_CHANGED, expected UNAUTHENTICATED"),
    (replace(BORROWED, attack_got_through=("ENROLLED under 'h-03'",)), VICTIM,
     "the collector accepted part of the borrowed_host_id attack: ENROLLED under 'h-03'"),
    (replace(FLOOD, attack_sent=None, error="AgentTimeout: broker"), VICTIM,
     "the challenge_flood attack did not run: AgentTimeout: broker"),
    (replace(FOREIGN, verdict="PASS", trust="TRUSTED"), None, "attacker got verdict PASS"),
])
def test_an_attack_is_refused_only_when_all_of_it_is(
        attacker: HostOutcome, victim: HostOutcome | None, why: str) -> None:
    j = judge(attacker, issuer_running=True, victim=victim)
    assert not j.ok and why in j.why, j.why


def test_an_attacker_is_final_when_every_record_it_wrote_is_answered() -> None:
    running = replace(FLOOD, attack_sent=None, rejections=(), answers=0)
    assert not is_final(running, issuer_running=True)
    assert not is_final(replace(FLOOD, rejections=("UNAUTHENTICATED",)), issuer_running=True)
    assert is_final(replace(running, error="DemoError: h-03 did not enrol"), issuer_running=True)
    assert is_final(replace(FLOOD, rejections=(), attack_got_through=("nonce",)),
                    issuer_running=True)


def _rejection(host: str, offset: int, reason: str = "UNAUTHENTICATED") -> dict[str, object]:
    return {"host_id": host, "reason": reason, "detail": f"refused record at offset {offset}",
            "source": {"topic": "attest.requests.v1", "partition": 2, "offset": offset}}


def test_rejections_of_an_attackers_records_are_the_attackers_not_the_victims() -> None:
    rows = {"victim": HostOutcome("victim", "img", None, named_by=("attacker",)),
            "attacker": HostOutcome("attacker", "img", "challenge_flood", target="victim")}
    attribution = Attribution(in_flight={"victim": 1})
    watcher = Watcher("unused:9092", rows, attribution)
    # while the attack is still writing, a rejection naming the victim waits...
    watcher.fold_rejection("victim", _rejection("victim", 10))
    assert rows["victim"].answers == rows["attacker"].answers == 0
    assert attribution.route("victim", _rejection("victim", 10)) is None
    # ...until the attacker reported what it wrote: then it is the attacker's
    attribution.reported("attacker", "victim", [("attest.requests.v1", 2, 10),
                                                ("attest.requests.v1", 2, 11)])
    watcher.release_deferred()
    watcher.fold_rejection("victim", _rejection("victim", 11))
    # a rejection of a record the attacker did not write stays the victim's
    watcher.fold_rejection("victim", _rejection("victim", 12, "RATE_LIMITED"))
    assert rows["attacker"].rejections == ("UNAUTHENTICATED", "UNAUTHENTICATED")
    assert rows["victim"].rejections == ("RATE_LIMITED",)


def test_a_hosts_rejections_keep_their_order_when_some_were_kept_back() -> None:
    """The attack reports while the watcher waits for a batch: the rejection kept back before
    it is still folded before the one that arrives with the batch."""
    rows = {"victim": HostOutcome("victim", "img", None, named_by=("attacker",)),
            "attacker": HostOutcome("attacker", "img", "borrowed_host_id", target="victim")}
    attribution = Attribution(in_flight={"victim": 1})
    watcher = Watcher("unused:9092", rows, attribution)
    watcher.fold_rejection("victim", _rejection("victim", 20, "EK_CHANGED"))
    attribution.reported("attacker", "victim", [("attest.requests.v1", 2, 20),
                                                ("attest.requests.v1", 2, 21)])
    watcher.fold_rejection("victim", _rejection("victim", 21))  # owner known, yet behind
    assert rows["attacker"].rejections == ()
    watcher.release_deferred()
    assert rows["attacker"].rejections == ("EK_CHANGED", "UNAUTHENTICATED")


def test_plan_gives_each_attack_a_clean_victim_under_the_run_ids() -> None:
    cfg = DemoConfig(hosts=8, seed=5, tampers=(("challenge_flood", 1), ("borrowed_host_id", 1),
                                                ("foreign_partition", 1)))
    specs = plan(cfg, "run2")
    by_id = {s.host_id: s for s in specs}
    attackers = [s for s in specs if s.tamper in ("challenge_flood", "borrowed_host_id")]
    assert len(attackers) == 2
    for a in attackers:
        assert a.target in by_id and by_id[a.target].tamper is None
    assert len({a.target for a in attackers}) == 2  # distinct victims while there are enough
    assert next(s for s in specs if s.tamper == "foreign_partition").target is None
    assert all(s.target is None for s in specs if s.tamper is None)
    with pytest.raises(HostgateError, match="no clean host"):
        plan(DemoConfig(hosts=1, tampers=(("challenge_flood", 1),)), "run3")


def test_reports_show_whose_id_an_attackers_records_name() -> None:
    run = _run(CLEAN_OK, VICTIM, FLOOD)
    doc = json.loads(json.dumps(to_json(run)))
    flood = doc["hosts"][2]
    assert flood["target"] == "h-03" and flood["rejections"] == ["UNAUTHENTICATED"] * 3
    assert flood["attack"] == {"sent": 3, "heard": [], "got_through": []}
    assert doc["hosts"][1]["named_by"] == ["h-04"] and doc["hosts"][0]["attack"] is None
    page = render_html(run)
    assert "challenge_flood → h-03" in page and "3 records naming <code>h-03</code>" in page
    assert "records naming this host were written by h-04" in page
