"""Fuzz the verifier core: whatever a host sends, ``appraise`` returns a verdict that encodes.

Starts from real evidence (one clean simulated host on swtpm, one tampered) and lets hypothesis
flip, cut and splice the host-controlled bytes: boot log, IMA list, quote, signature, PCR
values, nonce. ``appraise`` must never raise, must fail whatever no longer verifies, and its
verdict must always fit the ``hostgate.Verdict`` schema.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime.codec import Codec
from services.verifier.core import VERDICT_SUBJECT, appraise
from tests.unit.verifier_support import SimFleet, collected_for, sim_fleet

pytestmark = pytest.mark.swtpm
CODEC = Codec.load()
FIELDS = ("boot_log", "quote_attest", "quote_signature", "nonce", "ima_log")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFleet]:
    with sim_fleet(tmp_path_factory.mktemp("vfuzz"), tampered=("secure_boot_off",),
                   clean_per_image=1) as s:
        yield s


@pytest.fixture(scope="module")
def base(sim: SimFleet) -> list[dict[str, Any]]:
    return [collected_for(h) for h in sim.fleet]


def _mutate(data: bytes, kind: str, pos: int, value: int, cut: int) -> bytes:
    if not data:
        return bytes([value]) if kind == "insert" else data
    i = pos % len(data)
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (value or 1)]) + data[i + 1:]
    if kind == "truncate":
        return data[:i]
    if kind == "insert":
        return data[:i] + bytes([value]) * (1 + cut % 8) + data[i:]
    return data[:i] + data[i + 1 + cut % 64:]  # delete a run


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(which=st.integers(0, 10), field=st.sampled_from(FIELDS),
       kind=st.sampled_from(("flip", "truncate", "insert", "delete")),
       pos=st.integers(0, 1 << 20), value=st.integers(0, 255), cut=st.integers(0, 255),
       pcr_shuffle=st.booleans())
def test_appraise_never_raises_and_fails_what_no_longer_verifies(
        sim: SimFleet, base: list[dict[str, Any]], which: int, field: str, kind: str,
        pos: int, value: int, cut: int, pcr_shuffle: bool) -> None:
    col = copy.deepcopy(base[which % len(base)])
    ev = col["evidence"]
    original = ev[field] if ev[field] is not None else b""
    mutated = _mutate(original, kind, pos, value, cut)
    ev[field] = mutated
    if pcr_shuffle and ev["pcr_values"]:
        first = ev["pcr_values"][0]
        ev["pcr_values"][0] = {**first, "value": _mutate(first["value"], kind, pos, value, cut)}
    verdict = appraise(col, sim.policy)
    CODEC.encode(VERDICT_SUBJECT, verdict.record)
    changed = mutated != original or pcr_shuffle
    if changed and field in ("quote_attest", "quote_signature", "nonce"):
        assert not verdict.passed
    if verdict.passed:
        assert verdict.record["attested_pcrs"] and not verdict.failures
