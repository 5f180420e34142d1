"""The verifier's small pure parts: counters, AR4SI tiers, reason ids, policy in force."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.tpm.quote import ClockInfo
from services.verifier import ear, reasons
from services.verifier.core import verdict_id
from services.verifier.counters import CounterChange, compare
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.ids import BUILTIN_RULE_IDS
from services.verifier.policy_in_force import (
    PolicyCache,
    PolicyUnusable,
    load_in_force,
    newer,
    published_record,
)
from services.wire.time import epoch_ms as millis

POLICY = """\
apiVersion: hostgate/v1
kind: AttestationPolicy
metadata:
  id: {pid}
  version: "1"
spec:
  secureBoot:
    enabled: true
"""


def ci(reset: int, restart: int, clock: int) -> ClockInfo:
    return ClockInfo(clock=clock, reset_count=reset, restart_count=restart, safe=True)


@pytest.mark.parametrize(("prev", "cur", "change"), [
    (None, ci(3, 0, 100), CounterChange.FIRST),
    (ci(3, 0, 100), ci(3, 0, 100), CounterChange.SAME_BOOT),
    (ci(3, 0, 100), ci(3, 0, 5000), CounterChange.SAME_BOOT),
    (ci(3, 0, 100), ci(3, 1, 50), CounterChange.RESUMED),
    (ci(3, 2, 100), ci(4, 0, 10), CounterChange.REBOOTED),
    (ci(4, 0, 100), ci(3, 9, 10**9), CounterChange.WENT_BACKWARDS),
    (ci(3, 2, 100), ci(3, 1, 10**9), CounterChange.WENT_BACKWARDS),
    (ci(3, 0, 5000), ci(3, 0, 4999), CounterChange.WENT_BACKWARDS),
])
def test_counter_changes(prev: ClockInfo | None, cur: ClockInfo, change: CounterChange) -> None:
    got = compare(prev, cur)
    assert got.change is change
    assert got.ok is (change is not CounterChange.WENT_BACKWARDS)
    assert got.sentence.endswith(".")


@pytest.mark.parametrize(("value", "tier"), [
    (0, ear.Tier.NONE), (1, ear.Tier.NONE), (-1, ear.Tier.NONE), (2, ear.Tier.AFFIRMING),
    (31, ear.Tier.AFFIRMING), (32, ear.Tier.WARNING), (95, ear.Tier.WARNING),
    (96, ear.Tier.CONTRAINDICATED), (99, ear.Tier.CONTRAINDICATED),
    (127, ear.Tier.CONTRAINDICATED),
])
def test_ar4si_tiers(value: int, tier: ear.Tier) -> None:
    assert ear.tier_of(value) is tier


def test_trust_vector_contradiction_wins_and_status_is_worst() -> None:
    v = ear.trust_vector(ear.AppraisalFacts(
        quote_verified=True, ek_chain_verified=True, failed_reasons=(),
        rule_outcomes=(("policy.secureboot.enabled", True), ("policy.debug.test_signing", False),
                       ("policy.bootchain.applications", True))))
    assert v.configuration == ear.UNSUPPORTABLE_CONFIG and v.executables == ear.APPROVED_BOOT
    assert v.hardware == ear.GENUINE_HARDWARE and v.status is ear.Tier.CONTRAINDICATED
    ok = ear.trust_vector(ear.AppraisalFacts(True, False, (), (("policy.bootchain.x", True),)))
    assert ok.status is ear.Tier.AFFIRMING and ok.hardware == ear.NO_CLAIM
    bad = ear.trust_vector(ear.AppraisalFacts(False, True, (reasons.QUOTE_BAD_SIGNATURE,)))
    assert bad.instance_identity == ear.CRYPTO_VALIDATION_FAILED and bad.hardware == 0
    assert set(bad.values().values()) == {0, 99}
    assert list(bad.values()) == list(ear.CLAIMS)


def test_reason_ids_are_dotted_unique_and_mapped_to_a_claim() -> None:
    pattern = re.compile(r"^verifier(\.[a-z0-9_]+){1,2}$")
    assert len(set(reasons.ALL_REASON_IDS)) == len(reasons.ALL_REASON_IDS)
    for rid in reasons.ALL_REASON_IDS:
        assert pattern.match(rid), rid
        assert rid in ear._REASON_CLAIMS, rid
        assert rid not in BUILTIN_RULE_IDS
    for rule in BUILTIN_RULE_IDS:
        assert ear.rule_claim(rule) in ("configuration", "executables", "file_system")


def test_verdict_id_is_domain_separated_and_length_prefixed() -> None:
    a = verdict_id(b"\x01" * 32, b"\x02" * 32)
    assert a == verdict_id(b"\x01" * 32, b"\x02" * 32) and len(a) == 64
    assert a != verdict_id(b"\x02" * 32, b"\x01" * 32)
    assert verdict_id(b"ab", b"c") != verdict_id(b"a", b"bc")
    assert a != hashlib.sha256(b"\x01" * 32 + b"\x02" * 32).hexdigest()


def test_millis_accepts_decoded_datetimes() -> None:
    assert millis(1_700_000_000_123) == 1_700_000_000_123
    when = dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)
    assert millis(when) == 1_700_000_000_123


def _record(pid: str = "base", version: int = 1) -> dict[str, object]:
    return published_record(POLICY.format(pid=pid), version=version, published_at_ms=0,
                            author="t")


def test_newest_version_wins_and_tombstone_withdraws() -> None:
    v1, v2 = _record(version=1), _record(version=2)
    assert newer(None, v1) is v1
    assert newer(v1, v2) is v2 and newer(v2, v1) is v2
    assert newer(v2, None) is None


def test_policy_record_is_checked_before_use() -> None:
    good = load_in_force(_record())
    assert good.policy_id == "base" and good.version == 1 and len(good.digest) == 32
    tampered = {**_record(), "document": POLICY.format(pid="base").replace("true", "false")}
    with pytest.raises(PolicyUnusable, match="digest is not the SHA-256"):
        load_in_force(tampered)
    renamed = {**_record(), "policy_id": "other"}
    with pytest.raises(PolicyUnusable, match=r"metadata\.id"):
        load_in_force(renamed)
    cache = PolicyCache(size=2)
    assert cache.get(_record()).digest == good.digest
    for _ in range(2):
        with pytest.raises(PolicyUnusable):
            cache.get(tampered)


def test_publish_refuses_a_malformed_policy_with_its_line() -> None:
    with pytest.raises(PolicyError) as info:
        published_record("apiVersion: hostgate/v1\nkind: [\n", version=1, published_at_ms=0,
                         author="t")
    assert info.value.line is not None


# --- canonical JSON: the fast writer must write exactly what json.dumps writes ------------
_json_leaf = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
              | st.text(alphabet=st.characters(codec=None, exclude_categories=("Cs",)))
              | st.text(alphabet="\x00\x1f\x7f\"\\/ aé\u2028\U0001f600"))
_json_values = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=20)


@given(_json_values)
def test_canonical_float_free_writes_what_canonical_writes(value: object) -> None:
    assert ear.canonical_float_free(value) == ear.canonical(value)


def test_canonical_float_free_falls_back_for_what_orjson_writes_differently() -> None:
    for value in ({"k": "caf\u00e9"}, ["\x7f"], {"n": 2**64}, {"s": "\ud800"}, {1: "int key"}):
        assert ear.canonical_float_free(value) == ear.canonical(value)
    with pytest.raises(TypeError):  # what json refuses stays refused
        ear.canonical_float_free({"b": b"bytes"})


def test_claim_records_hold_no_float() -> None:
    """The verifier writes claims with canonical_float_free: no claim field may be a float."""
    import dataclasses
    import typing

    from services.tpm import claim_records, sipa

    seen: set[type] = set()

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for name, hint in typing.get_type_hints(cls).items():
            text = str(hint)
            assert "float" not in text, f"{cls.__name__}.{name}: {text}"
            for arg in _type_args(hint):
                if dataclasses.is_dataclass(arg):
                    walk(arg)

    walk(claim_records.Claims)
    assert {claim_records.KeyEntry, sipa.WindowsBootConfig, sipa.WindowsModule,
            sipa.ModuleSite, sipa.ModuleConflict} <= seen


def _type_args(hint: object) -> list[type]:
    import typing

    out: list[type] = []
    stack = [hint]
    while stack:
        h = stack.pop()
        if isinstance(h, type):
            out.append(h)
        stack.extend(typing.get_args(h))
    return out
