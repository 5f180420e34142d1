"""The policy engine on the real corpus: derive, check, Secure Boot pair, Windows flags."""

from __future__ import annotations

import dataclasses

import pytest

from services.verifier.policy import ids
from services.verifier.policy.derive import derive_policy
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.evaluate import evaluate, prepare, subject
from services.verifier.policy.loader import load_policy
from services.verifier.policy.results import Outcome
from tests.unit.policy_helpers import (
    banks_of,
    golden,
    manifest,
    platform_group,
    real_log_ids,
    rule_policy_text,
)

FAILS_CLOSED = {"C03", "C04"}  # real TDX CCEL logs with a duplicate separator (firmware bug)


def _derivable() -> list[str]:
    return [i for i in real_log_ids() if i not in FAILS_CLOSED]


@pytest.mark.parametrize("entry_id", _derivable())
def test_from_log_then_check_same_log_passes(entry_id: str) -> None:
    g = golden(entry_id)
    derived = derive_policy([g])
    assert load_policy(derived.text).digest == derived.policy.digest
    verdict = evaluate(prepare(derived.policy), g.subject())
    assert verdict.passed, [r.message for r in verdict.failed]
    assert verdict.result(ids.EVIDENCE_ANOMALIES) is not None
    outcomes = {r.outcome for r in verdict.results}
    assert Outcome.PASS in outcomes
    # provenance comments name the file and the event
    if g.claims.key_databases:
        assert f"{g.source} event {g.claims.key_databases[0].seq}" in derived.text


@pytest.mark.parametrize("entry_id", sorted(FAILS_CLOSED))
def test_log_that_fails_closed_cannot_be_golden(entry_id: str) -> None:
    assert manifest(), "corpus missing"
    with pytest.raises(PolicyError, match=r"tpm\.separator\.duplicate"):
        derive_policy([golden(entry_id)])


def test_secure_boot_on_policy_fails_secure_boot_off_log() -> None:
    on, off = golden("A36"), golden("A31")  # both Google Cloud VMs; SB on vs off (manifest)
    assert manifest()["A36"]["independent_features"]["secureboot_enabled"] is True
    assert manifest()["A31"]["independent_features"]["secureboot_enabled"] is False
    prepared = prepare(derive_policy([on]).policy)
    verdict = evaluate(prepared, off.subject())
    assert not verdict.passed
    sb = verdict.result(ids.SECUREBOOT_ENABLED)
    assert sb is not None and sb.outcome is Outcome.FAIL
    assert "Secure Boot is off" in sb.message and "SecureBoot variable = 00" in sb.message
    assert sb.event is not None and sb.event.pcr == 7
    assert sb.event.type == "EV_EFI_VARIABLE_DRIVER_CONFIG"
    assert sb.event.digest.startswith("sha256:")
    assert evaluate(prepared, on.subject()).passed


def test_any_of_sets_across_several_golden_logs() -> None:
    # two COS builds on the same GCE firmware, and a laptop (another firmware build)
    logs = [golden("A36"), golden("A34"), golden("A24")]
    derived = derive_policy(logs)
    prepared = prepare(derived.policy)
    for g in logs:
        assert evaluate(prepared, g.subject()).passed, g.source
    groups = derived.policy.spec.reference_groups
    assert len(groups) == 2  # A36 and A34 share one firmware build
    assert f"firmware build of {logs[0].source}, {logs[1].source}" in derived.text
    assert evaluate(prepared, golden("A31").subject()).passed is False


@pytest.mark.parametrize("entry_id", ["W03", "W04"])
def test_windows_flags_judged_and_flipped(entry_id: str) -> None:
    g = golden(entry_id)
    assert g.claims.windows is not None
    assert g.claims.windows.test_signing is False
    doc = rule_policy_text(banks_of(g) + "  debug:\n    testSigning: false\n"
                           "    kernelDebugger: false\n"
                           "    bootDebugging: false\n  codeIntegrity:\n    enabled: true\n"
                           # W04 measures one driver image under two names (issue 19)
                           "  evidence:\n    allowedAnomalies: [tpm.sipa.module_conflict]\n")
    prepared = prepare(load_policy(doc))
    ok = evaluate(prepared, g.subject())
    assert ok.passed, [r.message for r in ok.failed]
    ts = ok.result(ids.DEBUG_TEST_SIGNING)
    assert ts is not None and ts.outcome is Outcome.PASS
    assert ts.event is not None and ts.event.pcr in (12, 13, 14)
    flipped = dataclasses.replace(g.claims, windows=dataclasses.replace(g.claims.windows,
                                                                      test_signing=True))
    bad = evaluate(prepared, subject(flipped, g.events, active_banks=g.log.banks))
    assert not bad.passed
    assert [r.rule_id for r in bad.failed] == [ids.DEBUG_TEST_SIGNING]
    assert "Test signing is on" in bad.failed[0].message


def test_windows_rules_not_applicable_only_on_a_proven_linux_boot() -> None:
    rules = "  debug:\n    kernelDebugger: false\n  codeIntegrity:\n    enabled: true\n"
    proven = rules + "  referenceGroups:\n" + platform_group(golden("A36"))
    verdict = evaluate(prepare(load_policy(rule_policy_text(proven))), golden("A36").subject())
    assert verdict.passed, [r.message for r in verdict.failed]
    for rule in (ids.DEBUG_KERNEL_DEBUGGER, ids.CI_ENABLED):
        r = verdict.result(rule)
        assert r is not None and r.outcome is Outcome.NOT_APPLICABLE
    # without a group proving the platform, no Windows configuration is not "not Windows"
    unproven = evaluate(prepare(load_policy(rule_policy_text(rules))), golden("A36").subject())
    for rule in (ids.DEBUG_KERNEL_DEBUGGER, ids.CI_ENABLED):
        r = unproven.result(rule)
        assert r is not None and r.outcome is Outcome.FAIL and "cannot be confirmed" in r.message


def test_verdict_is_deterministic() -> None:
    g = golden("W03")
    derived = derive_policy([g, golden("A36")])
    a = evaluate(prepare(derived.policy), g.subject()).canonical_json()
    b = evaluate(prepare(load_policy(derived.text)), golden("W03").subject()).canonical_json()
    assert a == b
    assert derive_policy([g, golden("A36")]).text == derived.text


def test_golden_logs_without_a_common_bank_are_refused() -> None:
    """W04 carries SHA-1 only, W03 SHA-256 only: no bank could be required of both."""
    with pytest.raises(PolicyError, match="share no bank"):
        derive_policy([golden("W04"), golden("W03")])


def test_unexplained_passes_change_no_outcome_and_no_failure() -> None:
    # The verifier evaluates with explain=False (passed rules left unworded). Every policy
    # derived from a real log, judged against every real log, must give the same outcome per
    # rule and word each failure exactly as the explained evaluation does.
    ids_ = _derivable()
    subjects = {i: golden(i).subject() for i in real_log_ids()}
    for i in real_log_ids():  # Windows logs with every on/off flag inverted: flag failures
        g = golden(i)
        w = g.claims.windows
        if w is None:
            continue
        flags = ("boot_debugging", "kernel_debugger", "test_signing", "code_integrity", "dep")
        inverted = {f: not getattr(w, f) for f in flags if getattr(w, f) is not None}
        claims = dataclasses.replace(g.claims, windows=dataclasses.replace(w, **inverted))
        subjects[f"{i}-inverted"] = subject(claims, g.events, active_banks=g.log.banks)
    failed = passed = unworded = 0
    for policy_id in ids_:
        prepared = prepare(derive_policy([golden(policy_id)]).policy)
        for log_id, explained in subjects.items():
            quiet = dataclasses.replace(explained, explain=False)
            full, terse = evaluate(prepared, explained), evaluate(prepared, quiet)
            assert [(r.rule_id, r.outcome) for r in full.results] == [
                (r.rule_id, r.outcome) for r in terse.results], (policy_id, log_id)
            for a, b in zip(full.results, terse.results, strict=True):
                if a.outcome is Outcome.FAIL:
                    failed += 1
                    assert b == a, (policy_id, log_id, a.rule_id)
                else:
                    passed += a.outcome is Outcome.PASS
                    unworded += b.message == ""
                    assert b.message in ("", a.message), (policy_id, log_id, a.rule_id)
                    assert b.event in (None, a.event), (policy_id, log_id, a.rule_id)
                    assert a.message
    assert failed > 100 and passed > 100 and unworded > 100
