"""``hostgate log show|verify`` on real corpus logs, through argparse as the root CLI does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from services.errors import ConfigError, HostgateError
from services.tpm import cli
from services.tpm.errors import MalformedLog, ReplayMismatch
from tests.unit.test_eventlog_corpus import BY_ID, CORPUS


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hostgate")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def log_path(entry_id: str) -> str:
    return str(CORPUS / BY_ID[entry_id]["file"])


def test_show_json_matches_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["log", "show", log_path("A32"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    truth = BY_ID["A32"]["expected_from_source_repos"][0]["value"]
    assert doc["pcrs"] == truth
    assert len(doc["events"]) == 25 and doc["events"][0]["type_name"] == "EV_NO_ACTION"


def test_show_table_one_bank(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["log", "show", log_path("A36"), "--bank", "sha384"]) == 0
    out = capsys.readouterr().out
    assert "EV_S_CRTM_VERSION" in out and "sha384" in out and "sha256 " not in out


def test_verify_s08_needs_its_quirk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pcrs = tmp_path / "pcrs.json"
    pcrs.write_text(json.dumps({"sha1": {"5": "31245808d6d35849bc394f6343f2b3ff908ed5e3"}}))
    with pytest.raises(ReplayMismatch, match=r"PCR 5 \(sha1\)"):
        run(["log", "verify", log_path("S08"), "--pcrs", str(pcrs)])
    assert run(["log", "verify", log_path("S08"), "--pcrs", str(pcrs), "--json",
                "--allow-quirk", "ebs-invocation-success"]) == 0
    assert json.loads(capsys.readouterr().out)["applied_quirks"] == ["ebs-invocation-success"]


def test_verify_accepts_tpm2_pcrread_yaml(tmp_path: Path) -> None:
    values = BY_ID["A32"]["expected_from_source_repos"][0]["value"]
    lines = []
    for bank, pcrs in values.items():
        lines.append(f"{bank}:")
        lines += [f"  {p} : 0x{v.upper()}" for p, v in pcrs.items()]
    (tmp_path / "pcrs.yaml").write_text("\n".join(lines) + "\n")
    assert run(["log", "verify", log_path("A32"), "--pcrs", str(tmp_path / "pcrs.yaml")]) == 0


def test_errors_are_hostgate_errors(tmp_path: Path) -> None:
    with pytest.raises(MalformedLog, match="byte offset 68"):
        run(["log", "show", log_path("F05")])
    with pytest.raises(ConfigError):
        run(["log", "show", str(tmp_path / "missing.bin")])
    with pytest.raises(HostgateError):
        run(["log", "verify", log_path("A32"), "--pcrs", '{"sha1": {"0": "zz"}}'])
