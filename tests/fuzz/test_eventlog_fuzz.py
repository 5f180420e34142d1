"""Property tests: mutated corpus logs and random bytes never raise anything but TPM errors,
and parsing stays linear (counted in events, never timed).

Seeds are the real TCG logs of ../shared/corpus (read in place).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tpm import Limits, parse_event_log, replay, verify_replay
from services.tpm.errors import LimitExceeded, TpmError

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("HOSTGATE_CORPUS", REPO_ROOT / ".." / "shared" / "corpus"))
if not CORPUS.is_absolute():
    CORPUS = REPO_ROOT / CORPUS
_ENTRIES = json.loads((CORPUS / "manifest.json").read_text())["entries"]
SEEDS: list[bytes] = [
    (CORPUS / e["file"]).read_bytes()
    for e in _ENTRIES
    if not e["category"].startswith("ima") and e["size"] <= 80_000 and e["size"] > 0
]
SMALL_LIMITS = Limits(max_log_bytes=1 << 20, max_events=5_000, max_event_data=1 << 16,
                      max_digests_per_event=8)
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def exercise(data: bytes) -> None:
    """Parse and replay; only services.tpm.errors may escape."""
    try:
        log = parse_event_log(data, limits=SMALL_LIMITS)
        pcrs = replay(log)
        if pcrs:
            bank = next(iter(pcrs))
            verify_replay(log, {bank: dict(pcrs[bank])}, allowed_quirks=["ebs-invocation-success"])
    except TpmError as exc:
        assert str(exc)
        offset = getattr(exc, "offset", None)
        if offset is not None:
            assert 0 <= offset <= max(len(data), SMALL_LIMITS.max_log_bytes)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)),
                                        min_size=1, max_size=8))
def test_bit_flips(seed: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    exercise(bytes(data))


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(0, 1 << 20))
def test_truncation(seed: bytes, cut: int) -> None:
    exercise(seed[: cut % (len(seed) + 1)])


@FUZZ
@given(st.sampled_from(SEEDS), st.sampled_from(SEEDS), st.integers(0, 1 << 20),
       st.integers(0, 1 << 20))
def test_splice(a: bytes, b: bytes, cut_a: int, cut_b: int) -> None:
    exercise(a[: cut_a % (len(a) + 1)] + b[cut_b % (len(b) + 1) :])


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(0, 1 << 20), st.sampled_from(
    [0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 3, 4, 20, 32, 0xFFFF]))
def test_interesting_u32_overwrites(seed: bytes, pos: int, value: int) -> None:
    data = bytearray(seed)
    at = pos % max(len(data) - 4, 1)
    data[at : at + 4] = struct.pack("<I", value)[: len(data) - at]
    exercise(bytes(data))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    exercise(data)


@FUZZ
@given(st.sampled_from(SEEDS[:5]), st.binary(min_size=1, max_size=256))
def test_random_tail(seed: bytes, tail: bytes) -> None:
    exercise(seed + tail)


def _tiny_sha1_log(n: int) -> bytes:
    """SHA1-format log of ``n`` 32-byte events with empty data (PCR 4, EV_ACTION)."""
    one = struct.pack("<II20sI", 4, 5, b"\x11" * 20, 0)
    return one * n


def test_hundred_thousand_tiny_events_parse() -> None:
    log = parse_event_log(_tiny_sha1_log(100_000))
    assert len(log.events) == 100_000
    assert log.events[-1].offset == 32 * 99_999
    assert list(replay(log)["sha1"]) == [4]


def test_event_count_limit_stops_early() -> None:
    limits = Limits(max_events=1_000)
    try:
        parse_event_log(_tiny_sha1_log(100_000), limits=limits)
    except LimitExceeded as exc:
        assert exc.seq == 1_000 and exc.offset == 32_000
    else:
        raise AssertionError("LimitExceeded not raised")
