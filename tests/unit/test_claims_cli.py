"""``hostgate log claims`` end to end (in-process), on real corpus logs."""

from __future__ import annotations

import json

import pytest

from services.cli import main
from tests.conftest import corpus_path

LOGS = corpus_path() / "logs"


def test_claims_json_unverified(capsys: pytest.CaptureFixture[str]) -> None:
    (path,) = LOGS.glob("W04__*")
    assert main(["log", "claims", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["replay_verified"] is False and doc["secure_boot"] is True
    assert doc["windows"]["test_signing"] is False and doc["failed_closed"] is False


def test_claims_verified_against_pcr7(capsys: pytest.CaptureFixture[str]) -> None:
    (path,) = LOGS.glob("A32__*")
    pcrs = json.dumps(
        {"sha256": {"7": "3b4a4db44b7a872524055364e62e897ae678e0d47ab0809f65c3a4ed77f66ab9"}}
    )
    assert main(["log", "claims", str(path), "--pcrs", pcrs, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["replay_verified"] is True and doc["secure_boot"] is False
    assert [a["reason"] for a in doc["anomalies"]] == ["tpm.secureboot.variable_empty"]


def test_claims_fail_closed_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    (path,) = LOGS.glob("C03__*")
    assert main(["log", "claims", str(path), "--ccel"]) == 3
    assert "FATAL: tpm.separator.duplicate" in capsys.readouterr().out
