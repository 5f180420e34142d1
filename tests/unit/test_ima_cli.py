"""``hostgate ima show|verify`` run through the root CLI on corpus lists."""

from __future__ import annotations

import json

import pytest

from services.cli import main
from services.errors import ExitCode
from tests.unit.test_ima_corpus import corpus_dir, manifest


def _path(entry_id: str) -> str:
    return str(corpus_dir() / manifest()[entry_id]["file"])


def test_ima_show_json_replays_like_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ima", "show", "--json", _path("I07")]) == 0
    doc = json.loads(capsys.readouterr().out)
    m = manifest()["I07"]["ima"]
    assert len(doc["entries"]) == m["entries"]
    assert sum(e["violation"] for e in doc["entries"]) == m["violations"]
    assert doc["replayed_pcrs"]["sha1"]["10"] == m["replayed_pcr_sha1_template_hash_bank"]["10"]


def test_ima_show_truncated_binary_needs_the_quirk_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ima", "show", _path("J06")]) == ExitCode.BAD_INPUT
    assert "byte offset 991" in capsys.readouterr().err
    assert main(["ima", "show", "--truncated-tail", _path("J06")]) == 0
    assert "9 entries (binary)" in capsys.readouterr().out


def test_ima_verify_against_pcrs(capsys: pytest.CaptureFixture[str]) -> None:
    good = manifest()["I08"]["ima"]["replayed_pcr_sha1_template_hash_bank"]["10"]
    assert (
        main(
            ["ima", "verify", "--json", _path("I08"), "--pcrs", json.dumps({"sha1": {"10": good}})]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["verified_entries"] == 5553
    bad = json.dumps({"sha1": {"10": "00" * 20}})
    assert main(["ima", "verify", _path("I08"), "--pcrs", bad]) == ExitCode.CHECK_FAILED
    assert "does not replay" in capsys.readouterr().err
