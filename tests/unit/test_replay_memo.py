"""Remembered PCR extends (``Memo.extends``) and Spec ID events (``Memo.spec_ids``) never change
a parse or a replay.

Real data: every real TCG boot log of the corpus, parsed and replayed in every bank with the
Spec ID events and extends of all earlier logs in a memo, must give the log and values the same
log gives with no memo; a changed digest must still change the replayed value and be reported;
the memo stays bounded.
"""

from __future__ import annotations

import dataclasses

import pytest

from services.tpm import parse_event_log, replay, verify_replay
from services.tpm.errors import ReplayMismatch
from services.tpm.eventlog import EventLog
from services.tpm.memo import Bound, Memo
from tests.unit.policy_helpers import CORPUS, manifest, real_log_ids


def _log(entry_id: str) -> EventLog:
    entry = manifest().get(entry_id)
    if entry is None:
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    return parse_event_log((CORPUS / entry["file"]).read_bytes())


def _sha256_log() -> EventLog:
    return next(log for log in map(_log, real_log_ids()) if "sha256" in log.banks)


def test_every_log_parsed_and_replayed_after_all_others_equals_no_memo() -> None:
    raw = {i: (CORPUS / manifest()[i]["file"]).read_bytes() for i in real_log_ids()}
    plain = {i: parse_event_log(data) for i, data in raw.items()}
    values = {i: replay(log) for i, log in plain.items()}
    memo = Memo()
    for _ in range(2):  # first sight (earlier logs remembered), then everything remembered
        for i, data in raw.items():
            log = parse_event_log(data, memo=memo)
            assert log == plain[i], i
            assert replay(log, memo=memo) == values[i], i
            assert verify_replay(log, values[i], memo=memo) == verify_replay(log, values[i]), i
    assert len(memo.extends("sha256")) > 0
    assert len(memo.spec_ids) > 0


def test_a_changed_digest_is_not_masked_by_remembered_extends() -> None:
    log = _sha256_log()
    quoted = replay(log)
    memo = Memo()
    verify_replay(log, quoted, memo=memo)  # every extend of the clean log is now remembered
    victim = next(ev for ev in log.events if ev.extends and ev.pcr in quoted["sha256"])
    flipped = victim.digests["sha256"][:-1] + bytes([victim.digests["sha256"][-1] ^ 1])
    forged = victim._replace(digests={**victim.digests, "sha256": flipped})
    events = tuple(forged if ev is victim else ev for ev in log.events)
    tampered = dataclasses.replace(log, events=events)
    with pytest.raises(ReplayMismatch) as err:
        verify_replay(tampered, quoted, memo=memo)
    assert victim.pcr in err.value.invalid_pcrs["sha256"]
    verify_replay(log, quoted, memo=memo)  # the clean log still verifies, the forgery remembered


def test_the_memo_is_consulted_and_no_memo_computes() -> None:
    # Plant a wrong value for one real extend: the replay with the memo must use it (the memo is
    # really consulted), the one without must not.
    log = _sha256_log()
    want = replay(log, banks=["sha256"])
    memo = Memo()
    assert replay(log, banks=["sha256"], memo=memo) == want
    table = memo.extends("sha256")
    step = next(iter(table._data))
    table.put(step, bytes(32), 64)
    assert replay(log, banks=["sha256"], memo=memo) != want
    assert replay(log, banks=["sha256"]) == want
    assert replay(log, banks=["sha256"], memo=Memo()) == want


def test_the_memo_stays_within_its_bound() -> None:
    logs = [_log(i) for i in real_log_ids()]
    memo = Memo({"extends": Bound(8, 10_000)})
    table = memo.extends("sha256")
    seen = 0
    for log in logs:
        if "sha256" not in log.banks:
            continue
        assert replay(log, banks=["sha256"], memo=memo) == replay(log, banks=["sha256"])
        assert len(table) <= 8 and table.weight <= 10_000
        seen += sum(1 for ev in log.events if ev.extends)
    assert seen > 8  # the bound was actually reached, so eviction was exercised
    assert len(table) == 8
