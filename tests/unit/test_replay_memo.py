"""Remembered PCR extends (``services.tpm.replay._EXTENDS``) and Spec ID events never change a
parse or a replay.

Real data: every real TCG boot log of the corpus, parsed and replayed in every bank with the
Spec ID events and extends of all earlier logs in memory, must give the log and values the same
log gives with every cache off; a changed digest must still change the replayed value and be
reported; the memo stays bounded.
"""

from __future__ import annotations

import dataclasses

import pytest

from services.tpm import parse_event_log, replay, verify_replay
from services.tpm._cache import caching_disabled, clear_all
from services.tpm.errors import ReplayMismatch
from services.tpm.eventlog import _SPEC_IDS, EventLog
from services.tpm.replay import _EXTENDS, _extend_memo
from tests.unit.policy_helpers import CORPUS, manifest, real_log_ids


def _log(entry_id: str) -> EventLog:
    entry = manifest().get(entry_id)
    if entry is None:
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    return parse_event_log((CORPUS / entry["file"]).read_bytes())


def _sha256_log() -> EventLog:
    return next(log for log in map(_log, real_log_ids()) if "sha256" in log.banks)


def test_every_log_parsed_and_replayed_after_all_others_equals_uncached() -> None:
    raw = {i: (CORPUS / manifest()[i]["file"]).read_bytes() for i in real_log_ids()}
    with caching_disabled():
        plain = {i: parse_event_log(data) for i, data in raw.items()}
        values = {i: replay(log) for i, log in plain.items()}
    clear_all()
    for _ in range(2):  # first sight (earlier logs remembered), then everything remembered
        for i, data in raw.items():
            log = parse_event_log(data)
            assert log == plain[i], i
            assert replay(log) == values[i], i
    assert sum(len(memo) for memo in _EXTENDS.values()) > 0
    assert len(_SPEC_IDS) > 0


def test_a_changed_digest_is_not_masked_by_remembered_extends() -> None:
    log = _sha256_log()
    quoted = replay(log)
    verify_replay(log, quoted)  # every extend of the clean log is now remembered
    victim = next(ev for ev in log.events if ev.extends and ev.pcr in quoted["sha256"])
    flipped = victim.digests["sha256"][:-1] + bytes([victim.digests["sha256"][-1] ^ 1])
    forged = victim._replace(digests={**victim.digests, "sha256": flipped})
    events = tuple(forged if ev is victim else ev for ev in log.events)
    tampered = dataclasses.replace(log, events=events)
    with pytest.raises(ReplayMismatch) as err:
        verify_replay(tampered, quoted)
    assert victim.pcr in err.value.invalid_pcrs["sha256"]
    verify_replay(log, quoted)  # the clean log still verifies with the forged extend remembered


def test_caching_disabled_bypasses_the_memo() -> None:
    # Plant a wrong value for one real extend: the cached replay must use it (the memo is
    # really consulted), the uncached one must not.
    log = _sha256_log()
    with caching_disabled():
        want = replay(log, banks=["sha256"])
    clear_all()
    replay(log, banks=["sha256"])
    memo = _EXTENDS["sha256"].table()
    step = next(iter(memo))
    memo[step] = bytes(32)
    try:
        assert replay(log, banks=["sha256"]) != want
        with caching_disabled():
            assert replay(log, banks=["sha256"]) == want
    finally:
        clear_all()
    assert replay(log, banks=["sha256"]) == want


def test_the_memo_is_emptied_when_it_outgrows_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    logs = [_log(i) for i in real_log_ids()]
    clear_all()
    _extend_memo("sha256")
    memo = _EXTENDS["sha256"]
    monkeypatch.setattr(memo, "maxsize", 8)
    most = 0
    for log in logs:
        if "sha256" not in log.banks:
            continue
        replay(log, banks=["sha256"])
        extends = sum(1 for ev in log.events if ev.extends)
        assert len(memo) <= 8 + extends  # emptied before a batch, which adds its own
        most = max(most, len(memo))
    assert most > 8  # the bound was actually reached, so emptying was exercised
