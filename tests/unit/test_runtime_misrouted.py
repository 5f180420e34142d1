"""The runtime's partition check (``plan.plan_batch`` + ``Stage.misrouted``), without a broker:
every input gets the partition its key maps to; a stage decides what a mismatch means."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from services.runtime.partitioner import key_partition
from services.runtime.plan import REASON_MISROUTED, RawRecord, plan_batch
from services.runtime.stage import (
    MISROUTED_DECIDE,
    MISROUTED_DLQ,
    Decision,
    InputRecord,
    OverlayState,
    Stage,
    StateView,
)
from tests.support.eostest import INPUT_SUBJECT, build_stage, eostest_codec

CODEC = eostest_codec()
BASE = build_stage({"HOSTGATE_TOPIC_NAMESPACE": "mis"})
IN = "mis.eostest.input.v1"
PARTS = 6


def _raw(key: str, partition: int, offset: int = 1) -> RawRecord:
    return RawRecord(IN, partition, offset, 1_700_000_000_000, key.encode(),
                     CODEC.encode(INPUT_SUBJECT, {"key": key, "seq": 1}))


def _plan(stage: Stage, raws: list[RawRecord], counts: Any = None) -> Any:
    return plan_batch(stage, CODEC, raws, OverlayState({}), group="g", task_partition=0,
                      partition_counts={IN: PARTS} if counts is None else counts)


def test_key_partition_agrees_with_aiokafka() -> None:
    parts = list(range(PARTS))
    for i in range(500):
        key = f"host-{i}".encode()
        assert key_partition(key, PARTS) == DefaultPartitioner()(key, parts, parts)
    with pytest.raises(ValueError):
        key_partition(b"x", 0)


def test_every_input_gets_its_key_partition() -> None:
    seen: list[InputRecord] = []

    def spy(inp: InputRecord, state: StateView) -> Decision:
        seen.append(inp)
        return Decision()

    stage = dataclasses.replace(BASE, decide=spy, misrouted=MISROUTED_DECIDE)
    home = key_partition("host-1", PARTS)
    _plan(stage, [_raw("host-1", home), _raw("host-1", (home + 1) % PARTS, 2)])
    assert [(i.key_partition, i.misrouted) for i in seen] == [(home, False), (home, True)]
    seen.clear()
    _plan(stage, [_raw("host-1", home)], counts={})  # the count unknown: misrouted (fail closed)
    assert [(i.key_partition, i.misrouted) for i in seen] == [(None, True)]


def test_dlq_policy_sends_misrouted_inputs_to_the_dlq_untouched() -> None:
    stage = dataclasses.replace(BASE, misrouted=MISROUTED_DLQ)
    home = key_partition("host-2", PARTS)
    plan = _plan(stage, [_raw("host-2", (home + 1) % PARTS), _raw("host-2", home, 2)])
    assert [o.result for o in plan.outcomes] == ["dlq", "ok"]
    assert plan.outcomes[0].facts == {"dlq_reason": REASON_MISROUTED, "misrouted": True}
    dlq = [r for r in plan.records if r.topic == stage.dlq]
    assert len(dlq) == 1 and dlq[0].key == b"host-2"
    headers = dict(dlq[0].headers)
    assert b"maps to partition" in headers["__connect.errors.exception.message"]


def test_warn_policy_decides_and_flags() -> None:
    home = key_partition("host-3", PARTS)
    plan = _plan(BASE, [_raw("host-3", (home + 1) % PARTS)])
    assert [o.result for o in plan.outcomes] == ["ok"]
    assert plan.outcomes[0].facts.get("misrouted") is True
    exempt = dataclasses.replace(BASE, explicit_partition_subjects=frozenset({INPUT_SUBJECT}),
                                 misrouted=MISROUTED_DLQ)
    plan = _plan(exempt, [_raw("host-3", (home + 1) % PARTS)])
    assert [o.result for o in plan.outcomes] == ["ok"]
    assert "misrouted" not in plan.outcomes[0].facts


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="misrouted"):
        dataclasses.replace(BASE, misrouted="ignore")
