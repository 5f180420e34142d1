"""IMA measurement lists from the shared corpus: parse, template hashes, replay, boot_aggregate.

Expected values come from ``manifest.json`` (``ima.*`` and ``expected_from_source_repos``); the
files are read in place from ``$HOSTGATE_CORPUS`` (default ``../shared/corpus`` from the repo).
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from services.tpm import ima, ima_replay
from services.tpm.errors import DigestMismatch, MalformedImaList, ReplayMismatch

REPO = Path(__file__).resolve().parents[2]


def corpus_dir() -> Path:
    return (REPO / os.environ.get("HOSTGATE_CORPUS", "../shared/corpus")).resolve()


@cache
def manifest() -> dict[str, dict[str, Any]]:
    data = json.loads((corpus_dir() / "manifest.json").read_text())
    return {e["id"]: e for e in data["entries"]}


def ima_ids(category: str) -> list[str]:
    return sorted(i for i, e in manifest().items() if e["category"] == category)


def load(entry_id: str) -> bytes:
    return (corpus_dir() / manifest()[entry_id]["file"]).read_bytes()


def test_corpus_has_ima_lists() -> None:
    # Guard: the parametrised tests below must not silently collect nothing.
    assert len(ima_ids("ima-ascii")) >= 3
    assert len(ima_ids("ima-binary")) >= 4


@pytest.mark.parametrize("entry_id", ima_ids("ima-ascii"))
def test_ascii_list_replays_to_manifest(entry_id: str) -> None:
    m = manifest()[entry_id]["ima"]
    lst = ima.parse_ascii(load(entry_id))
    assert len(lst.entries) == m["entries"]
    assert sum(e.violation for e in lst.entries) == m["violations"]
    assert {e.template_name for e in lst.entries} == set(m["templates"])
    ima_replay.check_template_hashes(lst)
    replayed = ima_replay.replay(lst, banks=("sha1", "sha256"))
    expected = {
        int(k): bytes.fromhex(v) for k, v in m["replayed_pcr_sha1_template_hash_bank"].items()
    }
    assert replayed["sha1"] == expected
    # The quoted-PCR check accepts the replay and returns every entry as verified.
    verified = ima_replay.verify_replay(lst, replayed)
    assert len(verified.entries) == m["entries"] and verified.unquoted_tail == 0
    boot = lst.entries[0]
    assert boot.path == "boot_aggregate"
    ba_hex = m["boot_aggregate"].rpartition(":")[2]
    assert boot.file_hash is not None and boot.file_hash.hex() == ba_hex


@pytest.mark.parametrize("entry_id", ima_ids("ima-binary"))
def test_binary_list_replays_to_manifest(entry_id: str) -> None:
    entry = manifest()[entry_id]
    m = entry["ima"]
    counts = [
        x["value"] for x in entry["expected_from_source_repos"] if x["kind"] == "ima_entry_count"
    ]
    lst = ima.parse_binary(load(entry_id), quirks=[ima.QUIRK_TRUNCATED_TAIL])
    assert len(lst.entries) == (counts[0] if counts else m["entries"])
    replayed = ima_replay.replay(lst)
    expected = {
        int(k): bytes.fromhex(v) for k, v in m["replayed_pcr_sha1_template_hash_bank"].items()
    }
    assert replayed["sha1"] == expected
    assert sum(not e.violation for e in lst.entries) == m["template_hash_ok"]
    ima_replay.check_template_hashes(lst)


@pytest.mark.parametrize("entry_id", ["J04", "J06"])
def test_quirk_ima_truncated_tail_is_off_by_default(entry_id: str) -> None:
    data = load(entry_id)
    with pytest.raises(MalformedImaList) as info:
        ima.parse_binary(data)
    lst = ima.parse_binary(data, quirks=[ima.QUIRK_TRUNCATED_TAIL])
    # The error points at the first byte of the incomplete entry, which the quirk drops.
    assert info.value.seq == len(lst.entries)
    assert len(data) - lst.truncated_tail == lst.entries[-1].offset + _entry_len(lst.entries[-1])
    assert lst.quirks_applied == {ima.QUIRK_TRUNCATED_TAIL}


def _entry_len(e: ima.ImaEntry) -> int:
    return 4 + 20 + 4 + len(e.template_name) + 4 + len(e.template_data)


def test_invalidated_sha1_list_j03_is_a_truncated_entry() -> None:
    # sml-ima-ng-sha1-invalidated: one ima-ng entry whose template data is one byte short.
    with pytest.raises(MalformedImaList) as info:
        ima.parse_binary(load("J03"))
    assert info.value.offset == 38 and info.value.seq == 0 and info.value.field == "template_data"


def test_invalidated_sig_list_j05_extends_ff_for_violation() -> None:
    lst = ima.parse_binary(load("J05"))
    boot, violation = lst.entries
    assert not boot.violation and violation.violation
    assert violation.template_name == "ima-sig" and violation.path == "/init"
    assert violation.file_hash == bytes(32) and violation.signature is None
    # The violation goes into the PCR as 0xFF..., in every bank, not as H(template data).
    for bank, size in (("sha1", 20), ("sha256", 32)):
        assert ima_replay.template_digest(violation, bank) == b"\xff" * size
    import hashlib

    pcr = hashlib.sha1(bytes(20) + hashlib.sha1(boot.template_data).digest()).digest()
    pcr = hashlib.sha1(pcr + b"\xff" * 20).digest()
    assert ima_replay.replay(lst, banks=("sha1",))["sha1"][10] == pcr


def test_sha256_bank_replay_hashes_template_data_with_sha256() -> None:
    lst = ima.parse_binary(load("J06"), quirks=[ima.QUIRK_TRUNCATED_TAIL])
    import hashlib

    pcr = bytes(32)
    for e in lst.entries:
        pcr = hashlib.sha256(pcr + hashlib.sha256(e.template_data).digest()).digest()
    assert ima_replay.replay(lst, banks=("sha256",))["sha256"][10] == pcr
    assert lst.entries[1].file_hash_alg == "sha256" and lst.entries[1].path == "/init"


def test_tampered_ascii_path_fails_template_hash() -> None:
    data = load("I06").replace(b" /bin/sh\n", b" /bin/zsh\n", 1)
    lst = ima.parse_ascii(data)
    with pytest.raises(DigestMismatch) as info:
        ima_replay.check_template_hashes(lst)
    assert info.value.seq == 2


def test_verify_replay_rejects_other_quote_and_names_pcr10() -> None:
    lst = ima.parse_ascii(load("I06"))
    quoted = {"sha1": {10: bytes(20)}}
    with pytest.raises(ReplayMismatch) as info:
        ima_replay.verify_replay(lst, quoted)
    assert info.value.first == ("sha1", 10)


def test_verify_replay_unquoted_tail_only_when_allowed() -> None:
    lst = ima.parse_ascii(load("I06"))
    head = ima.ImaList(lst.entries[:500], "ascii")
    quoted = ima_replay.replay(head)
    with pytest.raises(ReplayMismatch):
        ima_replay.verify_replay(lst, quoted)
    verified = ima_replay.verify_replay(lst, quoted, allow_unquoted_tail=True)
    assert len(verified.entries) == 500 and verified.unquoted_tail == len(lst.entries) - 500


def test_boot_aggregate_i08_matches_paired_bios_log_a47() -> None:
    # kunpengsecl's IMA list (legacy template, SHA-1) next to its binary_bios_measurements:
    # the kernel hashed PCR0..7 of the SHA-1 bank. PCR values: the manifest's independent replay.
    paired = manifest()["A47"]
    ba = [
        x
        for x in paired["expected_from_source_repos"]
        if x["kind"].startswith("ima_boot_aggregate")
    ]
    pcrs = {
        bank: {int(k): bytes.fromhex(v) for k, v in vals.items()}
        for bank, vals in paired["independent_replay"]["replayed_pcrs"].items()
    }
    lst = ima.parse_ascii(load("I08"))
    assert ima_replay.verify_boot_aggregate(lst, pcrs) == "sha1"
    assert ima_replay.boot_aggregate(pcrs["sha1"], "sha1").hex() == ba[0]["value"]
    changed = dict(pcrs["sha1"]) | {7: bytes(20)}
    with pytest.raises(ima_replay.BootAggregateMismatch):
        ima_replay.verify_boot_aggregate(lst, {"sha1": changed})


def test_boot_aggregate_i08_with_t1_replay_of_a47() -> None:
    import importlib

    from services.tpm import eventlog

    # the module (the package re-exports a function of the same name)
    replay_mod = importlib.import_module("services.tpm.replay")
    log = eventlog.parse_event_log(load("A47"))
    pcrs = replay_mod.replay(log)
    assert ima_replay.verify_boot_aggregate(ima.parse_ascii(load("I08")), pcrs) == "sha1"


@pytest.mark.parametrize("entry_id", ["I06", "I07"])
def test_zero_boot_aggregate_fails_closed(entry_id: str) -> None:
    lst = ima.parse_ascii(load(entry_id))
    pcrs = {"sha1": dict.fromkeys(range(10), bytes(20))}
    with pytest.raises(ima_replay.BootAggregateMismatch, match="all zeros"):
        ima_replay.verify_boot_aggregate(lst, pcrs)


def test_boot_aggregate_non_sha1_bank_covers_pcr8_and_9() -> None:
    pcrs = {i: bytes([i]) * 32 for i in range(10)}
    import hashlib

    assert (
        ima_replay.boot_aggregate(pcrs, "sha256")
        == hashlib.sha256(b"".join(pcrs[i] for i in range(10))).digest()
    )
    sha1 = {i: bytes([i]) * 20 for i in range(10)}
    assert (
        ima_replay.boot_aggregate(sha1, "sha1")
        == hashlib.sha1(b"".join(sha1[i] for i in range(8))).digest()
    )
