"""Per-event readings (services/tpm/readings.py) remembered across logs never change a claim.

Real data: every TCG boot log of the corpus, read one after the other with the readings of all
earlier logs in memory, must give the claims (JSON and provenance) that the same log gives with
every cache off; so must mutated copies of real events (data broken, digests kept or re-hashed,
types swapped) placed at other offsets, whose errors must name *their* offsets.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tpm import parse_event_log, replay, sipa, verify_replay
from services.tpm._cache import BoundedCache, caching_disabled, clear_all
from services.tpm.claims import Claims, extract_claims
from services.tpm.eventlog import Event, EventLog, EventType
from services.tpm.readings import READINGS, read_event, read_events, reading_key
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


def _claims_of_events(events: Sequence[Event], log: EventLog) -> Claims:
    return extract_claims(events, banks=log.banks,
                          measurement_registers=_registers(log))  # type: ignore[arg-type]


def test_every_log_read_after_all_others_equals_uncached() -> None:
    ids = real_log_ids()
    logs = {i: _log(i) for i in ids}
    verified = {i: verify_replay(log, replay(log)) for i, log in logs.items()}
    with caching_disabled():
        plain = {i: _fingerprint(extract_claims(verified[i],
                                                measurement_registers=_registers(logs[i])))
                 for i in ids}  # type: ignore[arg-type]
    clear_all()
    for _ in range(2):  # first sight of each log (with earlier logs remembered), then warm
        for i in ids:
            got = extract_claims(verified[i], measurement_registers=_registers(logs[i]))  # type: ignore[arg-type]
            assert _fingerprint(got) == plain[i], i
    assert READINGS.hits > 0 and len(READINGS) > 0


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
    _claims_of_events(log.events, log)  # the original events' readings are remembered
    warm = _fingerprint(_claims_of_events(events, log))
    with caching_disabled():
        plain = _fingerprint(_claims_of_events(events, log))
    assert warm == plain


def _driver_config_event(log: EventLog) -> Event:
    return next(e for e in log.events if e.pcr == 7
                and e.event_type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG)


def test_remembered_variable_is_rebased_to_each_event() -> None:
    ev = _driver_config_event(_log("A36"))
    here, there = (Event(ev.seq, base - 32, ev.pcr, ev.event_type, ev.digests, ev.data, base)
                   for base in (1_000, 50_000))
    a = extract_claims([here]).decoded[ev.seq].variable
    b = extract_claims([there]).decoded[ev.seq].variable  # served from READINGS
    assert a is not None and b is not None
    assert b.data_offset - a.data_offset == 49_000
    with caching_disabled():
        assert extract_claims([there]).decoded[ev.seq].variable == b


def test_a_reading_that_names_offsets_is_not_remembered() -> None:
    ev = _driver_config_event(_log("A36"))
    broken = ev.data[:30]  # the UEFI_VARIABLE_DATA header is cut short
    digests = {b: _HASHES[b](broken).digest() for b in ev.digests}
    clear_all()
    for base in (2_000, 9_000):
        bad = Event(ev.seq, base - 32, ev.pcr, ev.event_type, digests, broken, base)
        reading = read_event(bad, "tpm")
        assert reading.error is not None and not reading.cacheable
        (anomaly,) = extract_claims([bad]).anomalies
        assert anomaly.reason == "tpm.event.undecodable"
        # the header ends 16 + 8 + 8 bytes into the data: each copy names its own offset
        assert f"at byte offset {base + 24}" in anomaly.detail, anomaly.detail
    assert len(READINGS) == 0


def test_byte_bounded_cache_evicts_by_weight_and_skips_giants() -> None:
    cache: BoundedCache[str, int] = BoundedCache("test-weight", 100, max_weight=10)
    cache.put("a", 1, 4)
    cache.put("b", 2, 4)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3, 4)  # 12 > 10: the least recently used (b) goes
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.weight == 8
    cache.put("giant", 4, 11)  # heavier than the whole bound: never stored
    assert cache.get("giant") is None and cache.weight == 8
    cache.put("a", 5, 2)  # replacing an entry replaces its weight
    assert cache.weight == 6 and cache.get("a") == 5
    with caching_disabled():
        assert cache.get("a") is None
        cache.put("d", 6, 1)
    assert cache.get("d") is None


def test_readings_are_filed_under_reading_key_and_can_be_discarded() -> None:
    # reading_key is what the benchmark and tests use to name an entry: it must be the key
    # read_events really files a reading under (read_events inlines the expression).
    log = _log("A36")
    events = [ev for ev in log.events if ev.extends]
    clear_all()
    got = read_events(events, "tpm")
    entries = READINGS.entries()
    for ev, reading in zip(events, got, strict=True):
        if reading.cacheable:
            assert entries.get(reading_key(ev, "tpm")) is reading
    ev = events[-1]
    weight = READINGS.weight
    READINGS.discard(reading_key(ev, "tpm"))
    assert reading_key(ev, "tpm") not in entries
    assert READINGS.weight == weight - len(ev.data)
    READINGS.discard(reading_key(ev, "tpm"))  # twice: nothing left to forget
    assert READINGS.weight == weight - len(ev.data)


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
