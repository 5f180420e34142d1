"""Per-event readings (services/tpm/readings.py) remembered across logs never change a claim.

Real data: every TCG boot log of the corpus, read one after the other with the readings of all
earlier logs in a memo, must give the claims (JSON and provenance) that the same log gives with
no memo; so must mutated copies of real events (data broken, digests kept or re-hashed, types
swapped) placed at other offsets, whose errors must name *their* offsets.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tpm import parse_event_log, replay, sipa, verify_replay
from services.tpm.claims import Claims, extract_claims
from services.tpm.eventlog import Event, EventLog, EventType
from services.tpm.memo import Bound, Memo, MemoTable
from services.tpm.readings import read_event, read_events, reading_key
from tests.unit.policy_helpers import CORPUS, manifest, real_log_ids

_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384,
           "sha512": hashlib.sha512}


def _log(entry_id: str) -> EventLog:
    entry = manifest().get(entry_id)
    if entry is None:
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    return parse_event_log((CORPUS / entry["file"]).read_bytes())


def _registers(log: EventLog) -> str:
    return "ccel" if log.events[0].pcr == 1 and log.banks == ("sha384",) else "tpm"


def _fingerprint(c: Claims) -> tuple[object, ...]:
    """Everything extraction returns: the JSON claims and the provenance by event."""
    return (c.to_json_dict(), {seq: repr(d) for seq, d in sorted(c.decoded.items())})


def _claims_of_events(events: Sequence[Event], log: EventLog, memo: Memo | None = None
                      ) -> Claims:
    return extract_claims(events, banks=log.banks, memo=memo,
                          measurement_registers=_registers(log))  # type: ignore[arg-type]


def test_every_log_read_after_all_others_equals_no_memo() -> None:
    ids = real_log_ids()
    logs = {i: _log(i) for i in ids}
    verified = {i: verify_replay(log, replay(log)) for i, log in logs.items()}
    plain = {i: _fingerprint(extract_claims(verified[i],
                                            measurement_registers=_registers(logs[i])))  # type: ignore[arg-type]
             for i in ids}
    memo = Memo()
    for _ in range(2):  # first sight of each log (with earlier logs remembered), then warm
        for i in ids:
            got = extract_claims(verified[i], measurement_registers=_registers(logs[i]),  # type: ignore[arg-type]
                                 memo=memo)
            assert _fingerprint(got) == plain[i], i
    assert len(memo.readings) > 0 and len(memo.key_entries) > 0 and len(memo.x509_subjects) > 0
    # the second pass was served from the memo: the same reading objects come back
    i = ids[0]
    events = list(verified[i].verified_events)
    first = read_events(events, _registers(logs[i]), memo)  # type: ignore[arg-type]
    again = read_events(events, _registers(logs[i]), memo)  # type: ignore[arg-type]
    assert any(a is b for a, b in zip(first, again, strict=True))


def _mutated(log: EventLog, rnd: random.Random) -> list[Event]:
    """A copy of ``log``'s events with 1-3 events broken the ways a hostile host would, moved
    to other offsets (every data_offset shifted)."""
    shift = rnd.randrange(1, 4096)
    events = [Event(e.seq, e.offset + shift, e.pcr, e.event_type, dict(e.digests), e.data,
                    e.data_offset + shift) for e in log.events]
    for _ in range(rnd.choice((1, 1, 2, 3))):
        i = rnd.randrange(1, len(events))
        e = events[i]
        data = bytearray(e.data)
        roll = rnd.random()
        if data and roll < 0.5:
            for _ in range(rnd.choice((1, 2, 4))):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif data and roll < 0.7:
            del data[rnd.randrange(len(data)):]
        elif roll < 0.85:
            data = bytearray(events[rnd.randrange(len(events))].data)
        else:
            data += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 9)))
        rehash = rnd.random() < 0.8
        digests = {b: (_HASHES[b](bytes(data)).digest() if rehash and b in _HASHES else d)
                   for b, d in e.digests.items()}
        etype = e.event_type
        if rnd.random() < 0.1:
            etype = rnd.choice((etype, 0x80000001, 0x800000E0, 0x0D, 0x06, 0x80000006, 0x12345))
        events[i] = Event(e.seq, e.offset, e.pcr, etype, digests, bytes(data), e.data_offset)
    return events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(real_log_ids()), st.integers(min_value=0, max_value=2**32))
def test_mutated_events_at_other_offsets_read_like_uncached(entry_id: str, seed: int) -> None:
    log = _log(entry_id)
    events = _mutated(log, random.Random(seed))
    memo = Memo()
    _claims_of_events(log.events, log, memo)  # the original events' readings are remembered
    warm = _fingerprint(_claims_of_events(events, log, memo))
    plain = _fingerprint(_claims_of_events(events, log))
    assert warm == plain


def _driver_config_event(log: EventLog) -> Event:
    return next(e for e in log.events if e.pcr == 7
                and e.event_type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG)


def test_remembered_variable_is_rebased_to_each_event() -> None:
    ev = _driver_config_event(_log("A36"))
    here, there = (Event(ev.seq, base - 32, ev.pcr, ev.event_type, ev.digests, ev.data, base)
                   for base in (1_000, 50_000))
    memo = Memo()
    a = extract_claims([here], memo=memo).decoded[ev.seq].variable
    assert memo.readings.get(reading_key(here, "tpm")) is not None
    b = extract_claims([there], memo=memo).decoded[ev.seq].variable  # served from the memo
    assert a is not None and b is not None
    assert b.data_offset - a.data_offset == 49_000
    assert extract_claims([there]).decoded[ev.seq].variable == b


def test_a_reading_that_names_offsets_is_not_remembered() -> None:
    ev = _driver_config_event(_log("A36"))
    broken = ev.data[:30]  # the UEFI_VARIABLE_DATA header is cut short
    digests = {b: _HASHES[b](broken).digest() for b in ev.digests}
    memo = Memo()
    for base in (2_000, 9_000):
        bad = Event(ev.seq, base - 32, ev.pcr, ev.event_type, digests, broken, base)
        reading = read_event(bad, "tpm", memo)
        assert reading.error is not None and not reading.rememberable
        (anomaly,) = extract_claims([bad], memo=memo).anomalies
        assert anomaly.reason == "tpm.event.undecodable"
        # the header ends 16 + 8 + 8 bytes into the data: each copy names its own offset
        assert f"at byte offset {base + 24}" in anomaly.detail, anomaly.detail
    assert len(memo.readings) == 0


def test_memo_table_evicts_oldest_first_by_entries_and_weight_and_skips_giants() -> None:
    table: MemoTable[str, int] = MemoTable(Bound(max_entries=3, max_bytes=10))
    table.put("a", 1, 4)
    table.put("b", 2, 4)
    assert table.get("a") == 1  # a lookup does not refresh "a"
    table.put("c", 3, 4)  # 12 > 10 bytes: the oldest (a) goes
    assert table.get("a") is None and table.get("b") == 2 and table.get("c") == 3
    assert table.weight == 8
    table.put("giant", 4, 11)  # heavier than the whole bound: never kept
    assert table.get("giant") is None and table.weight == 8
    table.put("b", 5, 2)  # replacing an entry replaces its weight, not its age
    assert table.weight == 6 and table.get("b") == 5
    for key in ("d", "e"):  # 4 entries > 3: the oldest (b) goes
        table.put(key, 0, 1)
    assert len(table) == 3 and table.get("b") is None and table.weight == 6
    with pytest.raises(ValueError):
        MemoTable(Bound(0, 10))


def test_readings_are_filed_under_reading_key_and_can_be_discarded() -> None:
    # reading_key is what the benchmark and tests use to name an entry: it must be the key
    # read_events really files a reading under (read_events inlines the expression).
    log = _log("A36")
    events = [ev for ev in log.events if ev.extends]
    memo = Memo()
    got = read_events(events, "tpm", memo)
    table = memo.readings
    for ev, reading in zip(events, got, strict=True):
        if reading.rememberable:
            assert table.get(reading_key(ev, "tpm")) is reading
    ev = events[-1]
    weight = table.weight
    table.discard(reading_key(ev, "tpm"))
    assert table.get(reading_key(ev, "tpm")) is None
    assert table.weight == weight - len(ev.data)
    table.discard(reading_key(ev, "tpm"))  # twice: nothing left to forget
    assert table.weight == weight - len(ev.data)


def test_a_memo_bounded_small_still_reads_every_log_like_no_memo() -> None:
    # tiny tables: every put evicts, so readings come back from the memo and are recomputed
    # in turn; neither may change a claim
    tiny = Memo({name: Bound(2, 2_048) for name in ("readings", "key_entries", "x509_subjects",
                                                    "device_paths", "spec_ids", "extends")})
    for i in real_log_ids()[:12]:
        log = _log(i)
        verified = verify_replay(log, replay(log, memo=tiny), memo=tiny)
        for _ in range(2):
            got = extract_claims(verified, memo=tiny,
                                 measurement_registers=_registers(log))  # type: ignore[arg-type]
            assert _fingerprint(got) == _fingerprint(extract_claims(
                verified, measurement_registers=_registers(log))), i  # type: ignore[arg-type]
        assert all(len(t) <= 2 and t.weight <= 2_048 for t in tiny.tables().values()
                   if t.bound.max_entries == 2)


# --- SIPA: per-block summaries merged == folding every event in one pass -----------------
_LEAF_TYPES = (sipa.BOOT_DEBUGGING, sipa.OS_KERNEL_DEBUG, sipa.CODE_INTEGRITY, sipa.TEST_SIGNING,
               sipa.DATA_EXECUTION_PREVENTION, sipa.HYPERVISOR_LAUNCH_TYPE, sipa.BOOT_COUNTER,
               sipa.SAFE_MODE, 0x000B0042)


def _leaf(etype: int, value: int) -> bytes:
    payload = value.to_bytes(1 if etype != sipa.BOOT_COUNTER else 8, "little")
    return etype.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


_blocks = st.lists(st.lists(st.tuples(st.sampled_from(_LEAF_TYPES), st.integers(0, 3)),
                            max_size=6), min_size=1, max_size=5)


@given(_blocks)
def test_merged_block_summaries_equal_one_fold_of_all_events(blocks: list[list[tuple[int, int]]]
                                                             ) -> None:
    datas = [b"".join(_leaf(t, v) for t, v in block) for block in blocks]
    per_block = sipa.fold_windows_config(
        (i, sipa.decode_sipa_events(d, base=100 * i, seq=i)) for i, d in enumerate(datas))
    whole = b"".join(datas)
    one = sipa.fold_windows_config([(0, sipa.decode_sipa_events(whole, seq=0))])
    assert per_block == one
