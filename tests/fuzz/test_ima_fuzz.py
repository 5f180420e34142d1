"""Hypothesis fuzz of the IMA parsers: only ``services.tpm.errors`` exceptions may escape."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tpm import ima, ima_replay
from services.tpm.errors import TpmError
from tests.unit.test_ima_corpus import load

SEEDS = {
    "J04": load("J04")[:558],
    "J05": load("J05"),
    "J06": load("J06")[:987],
    "I06": b"".join(load("I06").splitlines(keepends=True)[:6]),
    "I07": b"".join(load("I07").splitlines(keepends=True)[845:852]),
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _exercise(data: bytes) -> None:
    for parse in (ima.parse, ima.parse_ascii, ima.parse_binary):
        try:
            lst = parse(data)
        except TpmError:
            continue
        ima_replay.replay(lst)
        try:
            ima_replay.check_template_hashes(lst)
            ima_replay.verify_replay(lst, {"sha1": {10: bytes(20)}}, allow_unquoted_tail=True)
        except TpmError:
            pass


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    _exercise(data)


@FUZZ
@given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 10_000),
)
def test_fuzz_mutated_corpus(seed: str, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEEDS[seed])
    for pos, value in flips:
        data[pos % len(data)] = value
    _exercise(bytes(data[: max(1, cut % (len(data) + 1))]))


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_fuzz_seeds_parse(seed: str) -> None:
    # The seeds themselves are valid, so the mutations start from real structure.
    assert ima.parse(SEEDS[seed]).entries
