"""``hostgate policy from-log|check|show`` through argparse, on real corpus logs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.verifier import cli_policy
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.loader import load_policy
from tests.unit.policy_helpers import CORPUS, manifest


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hostgate")
    cli_policy.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def _log(entry_id: str) -> str:
    if not manifest():
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    return str(CORPUS / manifest()[entry_id]["file"])


def test_from_log_check_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["policy", "from-log", _log("A36"), _log("A34"), "--id", "cos-fleet",
                 "--policy-version", "7"]) == 0
    text = capsys.readouterr().out
    assert "# A36__go-tpm-tools__gce-cos-85-no-nonce.bin event 4" in text
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(text)
    policy = load_policy(text)
    assert policy.metadata.id == "cos-fleet" and f"# digest: {policy.digest}" in text

    assert _run(["policy", "check", str(policy_file), _log("A36"), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["passed"] is True and verdict["policy"]["digest"] == policy.digest
    assert verdict["evidence"]["mode"].startswith("log-only")

    assert _run(["policy", "check", str(policy_file), _log("A31"), "--json"]) == 1
    failed = json.loads(capsys.readouterr().out)
    rules = {r["rule"]: r for r in failed["results"]}
    assert rules["policy.secureboot.enabled"]["outcome"] == "fail"
    assert rules["policy.secureboot.enabled"]["event"]["seq"] == 3

    assert _run(["policy", "check", str(policy_file), _log("A31")]) == 1
    table = capsys.readouterr().out
    assert "policy.secureboot.enabled" in table and "FAIL" in table

    assert _run(["policy", "show", str(policy_file), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["digest"] == policy.digest
    assert _run(["policy", "show", str(policy_file)]) == 0
    normalised = capsys.readouterr().out
    assert load_policy(normalised).digest == policy.digest
    assert "event 4" not in normalised  # provenance comments are not part of the policy


def test_check_refuses_a_malformed_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: hostgate/v1\nkind: AttestationPolicy\nmetadata: {id: x, "
                   "version: 1}\nspec:\n  secureBot: {enabled: true}\n")
    with pytest.raises(PolicyError) as info:
        _run(["policy", "check", str(bad), _log("A36")])
    assert info.value.line == 5 and "did you mean 'secureBoot'" in str(info.value)


def test_from_log_refuses_a_log_that_fails_closed() -> None:
    with pytest.raises(PolicyError, match="fails closed"):
        _run(["policy", "from-log", _log("C03")])


def test_the_readme_example_policy_passes_the_log_it_names(tmp_path: Path) -> None:
    """README's example policy (its ```yaml block under "## Policies") is what it says: it loads
    and passes ``hostgate policy check`` against the real RHEL 9 log A40."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Policies", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = tmp_path / "readme.yaml"
    policy.write_text(block)
    (log,) = (CORPUS / "logs").glob("A40__*")
    out = subprocess.run([sys.executable, "-m", "services.cli", "policy", "check", str(policy),
                          str(log), "--json"], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert json.loads(out.stdout)["passed"] is True
