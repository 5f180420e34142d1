"""Decision assembly (``services.runtime.plan``) and the eostest core, without a broker."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import pytest

from services.runtime import dlq
from services.runtime.codec_errors import RegistryUnavailable
from services.runtime.plan import H_ID, H_STAGE, RawRecord, plan_batch
from services.runtime.stage import (
    Decision,
    InputRecord,
    Output,
    OverlayState,
    Stage,
    StateUpdate,
    StateView,
    merge_pending,
)
from services.tpm.errors import MalformedLog
from tests.support.eostest import (
    COUNTER_SUBJECT,
    INPUT_SUBJECT,
    OUTPUT_SUBJECT,
    build_stage,
    eostest_codec,
)

CODEC = eostest_codec()
STAGE = build_stage({"HOSTGATE_TOPIC_NAMESPACE": "unit"})
IN = "unit.eostest.input.v1"


def _raw(offset: int, key: bytes | None, value: bytes | None, partition: int = 2,
         headers: tuple[tuple[str, bytes], ...] = ()) -> RawRecord:
    return RawRecord(IN, partition, offset, 1_700_000_000_000 + offset, key, value, headers)


def _input(offset: int, key: str, seq: int) -> RawRecord:
    return _raw(offset, key.encode(), CODEC.encode(INPUT_SUBJECT, {"key": key, "seq": seq}))


def _plan(raws: list[RawRecord], committed: Any = None, stage: Stage = STAGE) -> Any:
    state = OverlayState(committed or {})
    return plan_batch(stage, CODEC, raws, state, group="g1", task_partition=2), state


def test_one_output_and_one_changelog_write_per_input() -> None:
    plan, state = _plan([_input(10, "h1", 1), _input(11, "h2", 1), _input(12, "h1", 2)])
    topics = [r.topic for r in plan.records]
    assert topics == ["unit.eostest.output.v1", "unit.hostgate.eostest.counters.changelog.v1"] * 3
    outs = [CODEC.decode(r.value or b"", expected={OUTPUT_SUBJECT}).record
            for r in plan.records[::2]]
    assert [o["counter_after"] for o in outs] == [1, 1, 2]  # later records see earlier updates
    assert outs[2]["input"] == {"topic": IN, "partition": 2, "offset": 12}
    out0 = plan.records[0]
    assert out0.key == b"h1" and out0.partition is None  # outputs partitioned by key
    assert dict(out0.headers)[H_ID] == f"eostest:{IN}:2:10".encode()
    assert dict(out0.headers)[H_STAGE] == b"eostest"
    log = plan.records[1]
    assert log.partition == 2 and log.key == b"h1"  # state stays on the task's partition
    assert CODEC.decode(log.value or b"").record == {"key": "h1", "count": 1}
    assert plan.next_offsets == {(IN, 2): 13}
    assert state.pending == {("counters", "h1"): {"key": "h1", "count": 2},
                             ("counters", "h2"): {"key": "h2", "count": 1}}
    assert [o.result for o in plan.outcomes] == ["ok"] * 3 and plan.dlq_count == 0


def test_committed_state_is_read_and_not_mutated() -> None:
    committed = {"counters": {"h1": {"key": "h1", "count": 41}}}
    plan, state = _plan([_input(0, "h1", 42)], committed)
    out = CODEC.decode(plan.records[0].value or b"").record
    assert out["counter_after"] == 42
    assert committed["counters"]["h1"]["count"] == 41  # only merged after a commit
    merge_pending(committed, state.pending)
    assert committed["counters"]["h1"]["count"] == 42


def test_merge_pending_applies_tombstones() -> None:
    tables: dict[str, dict[str, Mapping[str, Any]]] = {"t": {"a": {"x": 1}, "b": {"x": 2}}}
    merge_pending(tables, {("t", "a"): None, ("t", "c"): {"x": 3}})
    assert tables == {"t": {"b": {"x": 2}, "c": {"x": 3}}}


def test_undecodable_records_go_to_dlq_with_original_bytes() -> None:
    truncated = CODEC.encode(INPUT_SUBJECT, {"key": "h9", "seq": 99999})[:-1]
    wrong_type = CODEC.encode(COUNTER_SUBJECT, {"key": "h9", "count": 1})
    unknown_id = b"\x00" + struct.pack(">I", 4_000_000) + b"\x00"
    raws = [
        _raw(0, b"k0", b"\x42garbage", headers=(("trace", b"t-1"),)),
        _raw(1, b"k1", truncated),
        _raw(2, b"k2", wrong_type),
        _raw(3, b"k3", unknown_id),
        _raw(4, b"k4", None),
        _raw(5, b"\xc3\x28", CODEC.encode(INPUT_SUBJECT, {"key": "x", "seq": 1})),
        _input(6, "h1", 1),
    ]
    plan, state = _plan(raws)
    dead = [r for r in plan.records if r.topic == "unit.eostest.dlq.v1"]
    assert [(r.key, r.value) for r in dead] == [(r.key, r.value) for r in raws[:6]]
    classes = [dlq.header_value(r.headers, dlq.H_EXC_CLASS) for r in dead]
    assert classes == [
        "services.runtime.codec.MalformedRecord", "services.runtime.codec.MalformedRecord",
        "services.runtime.codec.UnexpectedRecordType", "services.runtime.codec.UnknownSchema",
        "ValueError", "UnicodeDecodeError"]
    assert dead[0].headers[0] == ("trace", b"t-1")  # original headers first, untouched
    assert dlq.header_value(dead[1].headers, dlq.H_BYTE_OFFSET) == str(len(truncated))
    assert all(dlq.header_value(r.headers, dlq.H_REASON) == dlq.REASON_DECODE for r in dead)
    assert plan.dlq_count == 6 and plan.next_offsets == {(IN, 2): 7}
    assert state.pending == {("counters", "h1"): {"key": "h1", "count": 1}}


def _raising(inp: InputRecord, state: StateView) -> Decision:
    raise RuntimeError(f"boom on {inp.key}")


def test_stage_error_without_policy_goes_to_dlq_and_changes_no_state() -> None:
    stage = Stage("s", (IN,), frozenset({INPUT_SUBJECT}), _raising, {"counters": COUNTER_SUBJECT})
    plan, state = _plan([_input(3, "h1", 1)], stage=stage)
    (rec,) = plan.records
    assert rec.topic == "s.dlq.v1"
    assert dlq.header_value(rec.headers, dlq.H_REASON) == dlq.REASON_STAGE_ERROR
    assert dlq.header_value(rec.headers, dlq.H_EXC_MESSAGE) == "boom on h1"
    assert state.pending == {}


def test_a_bug_goes_to_the_dlq_even_with_a_host_fault_policy() -> None:
    def policy(inp: InputRecord, exc: Exception) -> Decision:
        raise AssertionError("a bug must never reach on_host_fault")

    stage = Stage("s", (IN,), frozenset({INPUT_SUBJECT}), _raising,
                  {"counters": COUNTER_SUBJECT}, on_host_fault=policy)
    plan, state = _plan([_input(3, "h1", 1)], stage=stage)
    (rec,) = plan.records
    assert rec.topic == stage.dlq
    assert plan.outcomes[0].result == "dlq" and plan.outcomes[0].facts["fault"] == "bug"
    assert state.pending == {}


def test_a_bug_is_answered_by_on_bug_where_the_stage_must_fail_closed() -> None:
    def fail_closed(inp: InputRecord, exc: Exception) -> Decision:
        return Decision(state_updates=(StateUpdate("counters", "failed", {
            "key": type(exc).__name__, "count": 1}),), log={"verdict": "FAIL"})

    stage = Stage("s", (IN,), frozenset({INPUT_SUBJECT}), _raising,
                  {"counters": COUNTER_SUBJECT}, on_bug=fail_closed)
    plan, state = _plan([_input(3, "h1", 1)], stage=stage)
    (rec,) = plan.records
    assert rec.topic == "hostgate.s.counters.changelog.v1"
    (outcome,) = plan.outcomes
    assert (outcome.result, outcome.facts["fault"], outcome.error) == (
        "bug-fault", "bug", "RuntimeError")
    assert state.pending == {("counters", "failed"): {"key": "RuntimeError", "count": 1}}


def test_a_transient_fault_raises_out_of_the_plan() -> None:
    def flaky(inp: InputRecord, state: StateView) -> Decision:
        raise RegistryUnavailable("schema registry not up yet")

    stage = Stage("s", (IN,), frozenset({INPUT_SUBJECT}), flaky, {"counters": COUNTER_SUBJECT})
    with pytest.raises(RegistryUnavailable):
        _plan([_input(3, "h1", 1)], stage=stage)


def test_host_fault_policy_decision_is_committed_instead() -> None:
    def malformed(inp: InputRecord, state: StateView) -> Decision:
        raise MalformedLog("event 3 is cut short", offset=120, field="event_size")

    def policy(inp: InputRecord, exc: Exception) -> Decision:
        return Decision(state_updates=(StateUpdate("counters", "failed", {"key": type(exc)
                                                                          .__name__,
                                                                          "count": 1}),))

    stage = Stage("s", (IN,), frozenset({INPUT_SUBJECT}), malformed,
                  {"counters": COUNTER_SUBJECT}, on_host_fault=policy)
    plan, state = _plan([_input(3, "h1", 1)], stage=stage)
    (rec,) = plan.records
    assert rec.topic == "hostgate.s.counters.changelog.v1" and rec.partition == 2
    assert plan.outcomes[0].result == "host-fault"
    assert state.pending == {("counters", "failed"): {"key": "MalformedLog", "count": 1}}


def test_decision_for_an_unknown_table_is_a_stage_error() -> None:
    def bad(inp: InputRecord, state: StateView) -> Decision:
        return Decision(state_updates=(StateUpdate("nope", "k", None),))

    stage = Stage("s", (IN,), frozenset({INPUT_SUBJECT}), bad)
    plan, _state = _plan([_input(0, "h", 1)], stage=stage)
    assert plan.outcomes[0].result == "dlq" and plan.records[0].topic == "s.dlq.v1"
    assert "no state table 'nope'" in (dlq.header_value(plan.records[0].headers,
                                                        dlq.H_EXC_MESSAGE) or "")


def test_negative_seq_is_the_eostest_stage_error() -> None:
    plan, _ = _plan([_raw(0, b"h", CODEC.encode(INPUT_SUBJECT, {"key": "h", "seq": -5}))])
    assert dlq.header_value(plan.records[0].headers, dlq.H_EXC_CLASS) == \
        "tests.support.eostest.NegativeSequence"


def test_stage_needs_an_input_topic() -> None:
    with pytest.raises(ValueError, match="no input topics"):
        Stage("s", (), frozenset(), _raising)


def test_an_undecodable_input_too_large_to_copy_is_dead_lettered_as_a_prefix() -> None:
    """A value just under the broker's limit plus the DLQ context headers would be over the
    producer's: the copy keeps a prefix, the original size and its SHA-256 (the whole record
    stays at the coordinates the headers name), so the task never fails on it."""
    import hashlib

    from services.runtime.plan import DLQ_PREFIX_BYTES, MAX_RECORD_BYTES, record_bytes

    value = b"\xff" * (1024 * 1024 - 200)
    plan, _ = _plan([_raw(5, b"victim", value, headers=(("pad", b"x" * 40_000),))])
    (rec,) = plan.records
    assert rec.topic == STAGE.dlq and record_bytes(rec) <= MAX_RECORD_BYTES
    assert rec.value == value[:DLQ_PREFIX_BYTES]
    assert dlq.header_value(rec.headers, dlq.H_TRUNCATED) == str(len(value))
    assert dlq.header_value(rec.headers, dlq.H_SHA256) == hashlib.sha256(value).hexdigest()
    assert dlq.header_value(rec.headers, dlq.H_OFFSET) == "5"
    small, _ = _plan([_raw(6, b"victim", b"\xff" * 100)])
    assert small.records[0].value == b"\xff" * 100  # a record that fits is copied whole
    assert dlq.header_value(small.records[0].headers, dlq.H_TRUNCATED) is None


def test_a_decision_writing_a_record_too_large_goes_to_the_error_policy() -> None:
    from services.runtime.plan import MAX_RECORD_BYTES

    big = "x" * (MAX_RECORD_BYTES + 1)

    def decide(inp: InputRecord, state: StateView) -> Decision:
        return Decision(outputs=(Output(topic="out", key="k", subject=OUTPUT_SUBJECT,
                                        record={}, id="i", raw_value=big.encode()),))

    def on_host_fault(inp: InputRecord, exc: Exception) -> Decision:
        assert type(exc).__name__ == "OutputTooLarge"
        return Decision(outputs=(Output(topic="out", key="k", subject=OUTPUT_SUBJECT,
                                        record={}, id="i", raw_value=b"refused"),))

    stage = Stage(name="sized", input_topics=(IN,), input_subjects=frozenset({INPUT_SUBJECT}),
                  decide=decide, on_host_fault=on_host_fault)
    plan, _ = _plan([_input(7, "h", 1)], stage=stage)
    assert [r.value for r in plan.records] == [b"refused"]
    assert plan.outcomes[0].result == "host-fault"


@pytest.mark.parametrize(("topic", "fits"), [("large", True), ("out", False)])
def test_only_a_large_record_topic_takes_a_record_over_the_ordinary_bound(
        topic: str, fits: bool) -> None:
    """An agent's evidence with a big IMA list crosses the collector whole, to the one topic
    created for it; the same bytes to any other topic are refused before the producer."""
    from services.runtime.plan import MAX_LARGE_RECORD_BYTES, MAX_RECORD_BYTES

    value = b"x" * (4 * MAX_RECORD_BYTES)
    assert len(value) < MAX_LARGE_RECORD_BYTES

    def decide(inp: InputRecord, state: StateView) -> Decision:
        return Decision(outputs=(Output(topic=topic, key="k", subject=OUTPUT_SUBJECT,
                                        record={}, id="i", raw_value=value),))

    def on_host_fault(inp: InputRecord, exc: Exception) -> Decision:
        assert type(exc).__name__ == "OutputTooLarge"
        return Decision()

    stage = Stage(name="sized", input_topics=(IN,), input_subjects=frozenset({INPUT_SUBJECT}),
                  decide=decide, on_host_fault=on_host_fault,
                  large_record_topics=frozenset({"large"}))
    plan, _ = _plan([_input(7, "h", 1)], stage=stage)
    assert [r.value for r in plan.records] == ([value] if fits else [])
