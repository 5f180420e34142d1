"""``hostgate ima show|verify`` run through the root CLI on corpus lists."""

from __future__ import annotations

import json
from pathlib import Path

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


# -- issue 18, item 5: a file that is not an IMA list is named, not parsed at -------------------

_BOOT_LOG_HINT = ("a TCG boot event log (binary_bios_measurements); read it with "
                  "`hostgate log show`")


@pytest.mark.parametrize("entry", ["A32", "S06", "W04"])  # crypto-agile, TPM 1.2 BIOS, SHA-1 UEFI
def test_a_boot_log_given_to_ima_is_named(entry: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_eventlog_corpus import BY_ID, CORPUS

    path = str(CORPUS / BY_ID[entry]["file"])
    assert main(["ima", "show", path]) == ExitCode.BAD_INPUT
    assert capsys.readouterr().err.splitlines() == [
        f"hostgate: error: {path} is not a Linux IMA measurement list: it looks like "
        f"{_BOOT_LOG_HINT}"]


@pytest.mark.parametrize(("data", "kind"), [
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
    (b'{"sha256": {"10": "00"}}\n', "a JSON document"),
    (b"\x1f\x8b\x08\x00" + bytes(64), "a gzip-compressed file (decompress it first)"),
])
def test_other_files_given_to_ima_are_named(data: bytes, kind: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "not-a-list"
    path.write_bytes(data)
    pcrs = json.dumps({"sha1": {"10": "00" * 20}})
    assert main(["ima", "verify", "--json", str(path), "--pcrs", pcrs]) == ExitCode.BAD_INPUT
    captured = capsys.readouterr()
    message = f"{path} is not a Linux IMA measurement list: it looks like {kind}"
    assert captured.err.splitlines() == [f"hostgate: error: {message}"]
    assert json.loads(captured.out)["error"] == {"type": "NotAnImaList", "message": message}


def test_a_broken_ima_list_keeps_the_parsers_own_error(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An ASCII list with a bad entry is an IMA list: the entry is named, not the file's kind."""
    path = tmp_path / "ascii_runtime_measurements"
    path.write_bytes(b"10 " + b"ab" * 20 + b" ima-ng sha1:zz\n")
    assert main(["ima", "show", str(path)]) == ExitCode.BAD_INPUT
    assert capsys.readouterr().err.splitlines() == [
        "hostgate: error: ima-ng entry has too few fields (at byte offset 51, event 0)"]
