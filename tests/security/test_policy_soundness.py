"""The policy side of soundness: coverage is the policy's (1), policies must ask something (10),
quote facts are claims a policy can check (11), appraisal work is bounded (9).

Attacker (d) is a careless policy author; attacker (a) a host that chooses what it quotes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.agent.fleet import HostSpec
from services.agent.measured_boot import synthesise
from services.tpm.eventlog_builder import TPM_ALG_SHA1, TPM_ALG_SHA256, measure
from services.verifier import reasons as verifier_reasons
from services.verifier.core import appraise
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.loader import load_policy
from tests.security.appraisal_support import (
    FIRMWARE_PCRS,
    appraised,
    collected,
    events_of,
    in_force,
    lab,
    log_of,
)

LINUX = "ubuntu-24.04-shim"
WINDOWS = "windows-server-2022"
REPO = Path(__file__).resolve().parents[2]

HEADER = "apiVersion: hostgate/v1\nkind: AttestationPolicy\nmetadata: {id: p, version: 1}\n"


def _derived(*images: str) -> str:
    golden = [golden_from_log(synthesise(img, 0).log_bytes(), f"golden-{img}") for img in images]
    return derive_policy(golden, policy_id="soundness", version="1").text


# --- 1. coverage belongs to the policy -----------------------------------------------------
def test_derived_policy_requires_every_pcr_its_claims_come_from() -> None:
    policy = load_policy(_derived(LINUX, WINDOWS))
    assert policy.spec.banks is not None
    required = set(policy.spec.banks.require_pcrs)
    assert {8, 9} <= required, "GRUB and kernel measurements (PCRs 8-9) must be required"
    assert {12, 13, 14} <= required, "Windows boot configuration (PCRs 12-14) must be required"


@pytest.mark.swtpm
def test_clean_windows_host_quoting_only_firmware_pcrs_does_not_pass(tmp_path: Path) -> None:
    policy = in_force(_derived(WINDOWS))
    with lab(tmp_path, [HostSpec("cov-1", WINDOWS)]) as fleet:
        host = fleet.host("cov-1")
        full = appraised(host, policy, label="full")
        partial = appraised(host, policy, pcrs=FIRMWARE_PCRS, label="partial")
    assert full.passed, full.reason_ids
    assert not partial.passed


# --- 10. policies must ask something --------------------------------------------------------
@pytest.mark.parametrize("spec", [
    "spec: {}\n",
    "spec:\n  banks: {requirePcrs: [0, 1, 2, 3, 4, 5, 6, 7]}\n",
    "spec:\n  debug: {kernelDebugger: false}\n  evidence: {allowedAnomalies: []}\n",
    "spec:\n  secureBoot: {enabled: false}\n",
])
def test_policy_that_admits_any_host_is_refused(spec: str) -> None:
    with pytest.raises(PolicyError, match="permissive"):
        load_policy(HEADER + spec)


def test_permissive_policy_loads_only_when_it_says_so() -> None:
    policy = load_policy(HEADER + "spec:\n  permissive: true\n")
    assert policy.spec.permissive


def test_lint_explains_what_a_policy_leaves_open(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEADER + "spec:\n  secureBoot: {enabled: true}\n")
    out = subprocess.run([sys.executable, "-m", "services.cli", "policy", "lint", str(path)],
                         capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode in (0, 1), out.stderr
    text = out.stdout.lower()
    assert "boot chain" in text and "reference group" in text, out.stdout


def test_publish_refuses_a_permissive_policy_without_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEADER + "spec:\n  permissive: true\n")
    env = {**os.environ, "HOSTGATE_BOOTSTRAP": "127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-m", "services.cli", "policy", "publish", str(path)],
                         capture_output=True, text=True, cwd=REPO, check=False, timeout=60,
                         env=env)
    assert out.returncode != 0
    assert "--allow-permissive" in out.stderr


# --- 11. quote fields are claims a policy can check -------------------------------------------
@pytest.mark.swtpm
def test_tpm_firmware_version_is_checked(tmp_path: Path) -> None:
    base = _derived(LINUX)
    with lab(tmp_path, [HostSpec("fw-1", LINUX)]) as fleet:
        host = fleet.host("fw-1")
        rec = collected(host)
        from services.tpm.quote import decode_attest

        version = decode_attest(bytes(rec["evidence"]["quote_attest"])).firmware_version
        too_new = in_force(base.replace("\nspec:\n", "\nspec:\n  tpm:\n    firmwareVersion:\n"
                                        f"      minimum: {version + 1}\n", 1))
        exact = in_force(base.replace("\nspec:\n", "\nspec:\n  tpm:\n    clockSafe: true\n"
                                      f"    firmwareVersion:\n      allowed: [{version}]\n", 1))
        refused = appraise(rec, too_new)
        accepted = appraise(rec, exact)
    assert not refused.passed
    assert "policy.tpm.firmware_version" in refused.reason_ids
    assert accepted.passed, accepted.reason_ids


# --- 9. bounded work per record -----------------------------------------------------------------
@pytest.mark.swtpm
def test_evidence_over_the_appraisal_budget_is_a_failed_verdict(tmp_path: Path) -> None:
    """A log that parses (the library's own bounds allow 200,000 events) but holds far more
    events than the verifier appraises in one record: a failed verdict naming the budget, never
    a stalled worker. (Intake's default limits stop such a log earlier; an operator may raise
    them.)"""
    policy = in_force(_derived(LINUX))
    with lab(tmp_path, [HostSpec("work-1", LINUX)]) as fleet:
        host = fleet.host("work-1")
        filler = [measure(16, 0x80000007, i.to_bytes(4, "big"), (TPM_ALG_SHA1, TPM_ALG_SHA256))
                  for i in range(60_000)]
        verdict = appraised(host, policy, log=log_of([*events_of(host), *filler]))
    assert not verdict.passed
    assert verifier_reasons.OVER_BUDGET in verdict.reason_ids
