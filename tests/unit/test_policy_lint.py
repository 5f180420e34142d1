"""``hostgate policy lint`` and the quote-fact rules, on real corpus claims."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from services.verifier.policy import ids
from services.verifier.policy.derive import derive_policy
from services.verifier.policy.evaluate import QuoteFacts, evaluate, prepare
from services.verifier.policy.lint import admits_any_host, findings
from services.verifier.policy.loader import load_policy
from services.verifier.policy.results import Outcome
from tests.unit.policy_helpers import golden, policy_text, rule_policy_text

REPO = Path(__file__).resolve().parents[2]


def test_a_derived_policy_asks_something_and_lint_finds_no_error() -> None:
    policy = derive_policy([golden("A36"), golden("W03")]).policy
    assert not admits_any_host(policy.spec)
    found = findings(policy)
    assert [f for f in found if f.severity == "error"] == []
    coverage = next(f for f in found if f.field == "spec.banks" and f.severity == "info")
    assert "12, 13, 14" in coverage.message


def test_lint_names_each_open_section() -> None:
    policy = load_policy(policy_text("  secureBoot: {enabled: true}\n"))
    fields = {f.field: f.severity for f in findings(policy)}
    assert fields["spec.secureBoot.db"] == "warning"
    assert fields["spec.bootChain.applications"] == "warning"
    assert fields["spec.referenceGroups"] == "warning"
    assert "spec.secureBoot.enabled" not in fields


def test_lint_of_a_permissive_policy_warns_and_without_the_flag_errors(tmp_path: Path) -> None:
    lax = load_policy(rule_policy_text("  banks: {require: [sha1]}\n"))
    severities = {(f.field, f.severity) for f in findings(lax)}
    assert ("spec", "warning") in severities
    assert ("spec.banks.require", "warning") in severities  # SHA-1 alone
    path = tmp_path / "open.yaml"
    path.write_text(policy_text("  debug: {kernelDebugger: false}\n"))
    out = subprocess.run([sys.executable, "-m", "services.cli", "policy", "lint", str(path),
                          "--json"], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["findings"][0]["severity"] == "error"
    assert "spec.permissive" in doc["findings"][0]["message"]


def test_clock_safe_and_firmware_rules_read_the_quote_facts() -> None:
    g = golden("A36")
    doc = rule_policy_text("  tpm:\n    clockSafe: true\n    firmwareVersion: {minimum: 5}\n")
    prepared = prepare(load_policy(doc))
    subj = dataclasses.replace(g.subject(), quote=QuoteFacts(clock_safe=True,
                                                             firmware_version=7))
    ok = evaluate(prepared, subj)
    assert ok.passed, [r.message for r in ok.failed]
    unsafe = evaluate(prepared, dataclasses.replace(subj, quote=QuoteFacts(False, 7)))
    r = unsafe.result(ids.TPM_CLOCK_SAFE)
    assert r is not None and r.outcome is Outcome.FAIL and "not safe" in r.message
    log_only = evaluate(prepared, g.subject())  # no quote: nothing to confirm them from
    assert {r.rule_id for r in log_only.failed} == {ids.TPM_CLOCK_SAFE,
                                                    ids.TPM_FIRMWARE_VERSION}


def test_lint_warns_once_per_accepted_quirk_naming_it_and_its_layer() -> None:
    policy = load_policy(policy_text("  secureBoot: {enabled: true}\n  evidence:\n    "
                                     "allowedQuirks: [tdx-duplicate-separator, "
                                     "ebs-invocation-success]\n"))
    found = [f for f in findings(policy) if f.field == "spec.evidence.allowedQuirks"]
    assert [f.severity for f in found] == ["warning", "warning"]
    messages = sorted(f.message for f in found)
    assert "ebs-invocation-success (replay layer)" in messages[0]
    assert "tdx-duplicate-separator (structure layer)" in messages[1]
    assert not any(f.field == "spec.evidence.allowedQuirks"
                   for f in findings(load_policy(policy_text("  secureBoot: {enabled: true}\n"))))
