"""Decision assembly: raw Kafka records in, the records one transaction must write out.

Pure (no Kafka client, no clock, no I/O): the worker hands it the records it fetched for one
task and the task's state; it returns a ``BatchPlan`` the worker sends in one transaction. Every
input record ends in exactly one of three places, never nowhere:

1. ``decide`` succeeded: its outputs (with an ``hg-id`` header; Avro-encoded, or an output's
   ``raw_value`` bytes as they are) and its state changes (as changelog records, on the task's
   own changelog partition);
2. ``decide`` raised a host's fault or a bug (``services.runtime.faults``) and the stage's
   answer to it (``on_host_fault``, ``on_bug``) returned a decision to commit instead: that
   decision, its log facts naming the fault;
3. the record could not be decoded, or ``decide`` raised a fault the stage has no answer for,
   or the answer/encoding the result failed, or
   it sits on a partition its key does not map to and the stage's ``misrouted`` policy is
   ``dlq``: one DLQ record with the original key, value and headers plus the failure context.

A transient fault (``services.runtime.faults``) is none of these: it raises out of the plan,
the worker aborts the transaction and plans the batch again once the task is re-initialised.

Every input gets ``key_partition`` (``services.runtime.partitioner``) from the partition counts
the worker read at start; a mis-partitioned record is flagged ``misrouted`` in its outcome
(the worker counts and logs it), whatever the stage's policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from services.errors import HostgateError
from services.runtime.dlq import (
    H_HEADER_COUNT,
    H_SHA256,
    H_TRUNCATED,
    REASON_DECODE,
    REASON_STAGE_ERROR,
    REASON_UNREADABLE,
    Failure,
    dlq_headers,
)
from services.runtime.faults import Fault, classify
from services.runtime.partitioner import key_partition
from services.runtime.record_size import PRODUCER_MAX_REQUEST_BYTES
from services.runtime.stage import (
    MISROUTED_DLQ,
    Coordinates,
    Decision,
    Headers,
    InputRecord,
    OverlayState,
    Stage,
)

H_ID: Final = "hg-id"
"""Header carrying an output's deterministic id."""
H_STAGE: Final = "hg-stage"
"""Header naming the stage that wrote an output."""
REASON_MISROUTED: Final = "misrouted"
"""DLQ reason of a record on a partition its key does not map to (``Stage.misrouted="dlq"``)."""


class MisroutedRecord(Exception):
    """A record on a partition other than the one Kafka's default partitioner maps its key to."""


class CodecLike(Protocol):
    """The part of ``services.runtime.codec.Codec`` the planner uses."""

    def encode(self, subject: str, record: Mapping[str, Any]) -> bytes: ...
    def decode(self, data: bytes, *, expected: Any = None) -> Any: ...


@dataclass(frozen=True)
class RawRecord:
    """A fetched Kafka record, bytes untouched (untrusted)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    @property
    def coordinates(self) -> Coordinates:
        return Coordinates(self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class OutRecord:
    """A record to produce. ``partition`` None: the producer's partitioner picks (by key)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int | None = None


@dataclass(frozen=True)
class RecordOutcome:
    """What happened to one input, for the decision's log event and the metrics."""

    coordinates: Coordinates
    key: str | None
    result: str  # "ok" | "on-error" | "dlq"
    outputs: int
    facts: Mapping[str, str | int | bool] = field(default_factory=dict)
    error: str | None = None


@dataclass
class BatchPlan:
    """Everything one transaction writes, in order, plus the outcome per input record."""

    records: list[OutRecord] = field(default_factory=list)
    outcomes: list[RecordOutcome] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    """(topic, partition) -> offset of the last planned record + 1 (what to commit)."""

    @property
    def dlq_count(self) -> int:
        return sum(1 for o in self.outcomes if o.result == "dlq")


class StageOutputError(Exception):
    """A decision that cannot be written (unknown table, undeclared subject...): a stage bug."""


class OutputTooLarge(StageOutputError, HostgateError):
    """A decision would write a record over :data:`MAX_RECORD_BYTES`. Counted a host's fault
    (``services.runtime.faults``): within intake limits only what a host sent can make an
    output that large (a verdict carrying the claims of a huge log), so the stage refuses it
    (``on_host_fault``) rather than dead-letter it."""

    host_fault = True


_MARGIN: Final = 16 * 1024
MAX_RECORD_BYTES: Final = 1024 * 1024 - _MARGIN
"""Most bytes one record a plan holds may weigh (:func:`record_bytes`) on an ordinary topic:
under the broker's default ``message.max.bytes`` (1,048,588), which a topic without its own
``max.message.bytes`` inherits, with room to spare (the producers' ``max_request_size`` is the
larger :data:`~services.runtime.record_size.PRODUCER_MAX_REQUEST_BYTES`). A record the
producer or broker would refuse fails its transaction, and a transaction that fails on the same
input every time would stop the task for good; so it never gets that far."""
MAX_LARGE_RECORD_BYTES: Final = PRODUCER_MAX_REQUEST_BYTES - _MARGIN
"""The same bound for a stage's ``large_record_topics`` (their ``max.message.bytes`` is
raised to the producers' ``max_request_size``: ``services.runtime.record_size``)."""
DLQ_PREFIX_BYTES: Final = 64 * 1024
"""How much of an oversized value a DLQ copy keeps (the original stays in its topic)."""
_HEADER_FRAMING: Final = 10
"""Most bytes a v2 record spends framing one header (two varints of at most 5 bytes)."""


def record_bytes(rec: OutRecord) -> int:
    """What ``rec`` weighs: the size of a v2 record batch holding only it, varints at their
    widest, as the producer counts it against ``max_request_size`` in ``send``
    (``DefaultRecordBatchBuilder.estimate_size_in_bytes``). Every header costs its framing too,
    so a record of many empty headers weighs what it weighs on the wire."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(rec.key, rec.value,
                                                                list(rec.headers)))


def _decode_key(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8")  # UnicodeDecodeError -> DLQ


def _decision_records(
    stage: Stage, codec: CodecLike, decision: Decision, task_partition: int
) -> list[OutRecord]:
    """Encode a decision's outputs and state changes; raises on anything unwritable."""
    out: list[OutRecord] = []
    for o in decision.outputs:
        headers = (*o.headers, (H_ID, o.id.encode("utf-8")), (H_STAGE, stage.name.encode()))
        value = o.raw_value if o.raw_value is not None else codec.encode(o.subject, o.record)
        out.append(OutRecord(o.topic, o.key.encode("utf-8"), value, headers))
    for upd in decision.state_updates:
        if upd.table not in stage.tables:
            raise StageOutputError(f"stage {stage.name!r} has no state table {upd.table!r}")
        state = None if upd.value is None else codec.encode(stage.tables[upd.table], upd.value)
        out.append(OutRecord(stage.changelog_of(upd.table), upd.key.encode("utf-8"), state,
                             (), partition=task_partition))
    for rec in out:
        size = record_bytes(rec)
        limit = (MAX_LARGE_RECORD_BYTES if rec.topic in stage.large_record_topics
                 else MAX_RECORD_BYTES)
        if size > limit:
            raise OutputTooLarge(f"stage {stage.name!r} would write {size} bytes to {rec.topic} "
                                 f"(limit {limit})")
    return out


def plan_batch(
    stage: Stage,
    codec: CodecLike,
    raw_records: Sequence[RawRecord],
    state: OverlayState,
    *,
    group: str,
    task_partition: int,
    partition_counts: Mapping[str, int] | None = None,
) -> BatchPlan:
    """Plan one transaction for one task. ``state`` collects the batch's pending updates so later
    records in the batch see earlier ones; the caller commits or discards them.
    ``partition_counts`` (topic -> partitions) gives each input its ``key_partition``; a topic
    missing from it leaves that unknown (which a stage must treat as misrouted)."""
    plan = BatchPlan()
    counts = partition_counts or {}
    for raw in raw_records:
        plan.next_offsets[(raw.topic, raw.partition)] = raw.offset + 1
        try:
            if raw.value is None:
                raise ValueError("record has no value (null)")
            decoded = codec.decode(raw.value, expected=stage.input_subjects)
            key = _decode_key(raw.key)
        except Exception as exc:  # codec errors, bad UTF-8 keys: all undecodable
            _to_dlq(plan, stage, raw, group, Failure(REASON_DECODE, exc))
            continue
        count = counts.get(raw.topic)
        home = None if raw.key is None or count is None else key_partition(raw.key, count)
        inp = InputRecord(key, decoded.subject, decoded.record, raw.coordinates,
                          raw.timestamp_ms, raw.headers, key_partition=home)
        misrouted = inp.misrouted and decoded.subject not in stage.explicit_partition_subjects
        if misrouted and stage.misrouted == MISROUTED_DLQ:
            _to_dlq(plan, stage, raw, group, Failure(REASON_MISROUTED, MisroutedRecord(
                f"key {(key or '')[:64]!r} maps to partition {home} of {raw.topic}, but the "
                f"record is on partition {raw.partition}")), key)
            plan.outcomes[-1] = replace(plan.outcomes[-1], facts={
                **plan.outcomes[-1].facts, "misrouted": True})
            continue
        result, error = "ok", None
        try:
            decision = stage.decide(inp, state)
            records = _decision_records(stage, codec, decision, task_partition)
        except Exception as exc:
            fault = classify(exc)
            if fault is Fault.TRANSIENT:
                raise  # the worker aborts the transaction and retries the batch
            answer = _answer_for(stage, fault, exc)
            if answer is None:
                _to_dlq(plan, stage, raw, group, Failure(REASON_STAGE_ERROR, exc), key, fault)
                continue
            try:
                decision = answer(inp)
                records = _decision_records(stage, codec, decision, task_partition)
            except Exception as exc2:
                if classify(exc2) is Fault.TRANSIENT:
                    raise
                _to_dlq(plan, stage, raw, group, Failure(REASON_STAGE_ERROR, exc2), key,
                        Fault.BUG)
                continue
            result, error = f"{fault.value}-fault", type(exc).__name__
            decision = replace(decision, log={**decision.log, "fault": fault.value})
        state.apply(decision.state_updates)
        plan.records.extend(records)
        facts = {**decision.log, "misrouted": True} if misrouted else decision.log
        plan.outcomes.append(RecordOutcome(raw.coordinates, key, result,
                                           len(decision.outputs), facts, error=error))
    return plan


def _answer_for(stage: Stage, fault: Fault, exc: Exception
                ) -> Callable[[InputRecord], Decision] | None:
    """The stage's answer to ``fault`` (``on_host_fault`` or ``on_bug``), bound to ``exc``;
    None: the record goes to the DLQ."""
    if fault is Fault.HOST and stage.on_host_fault is not None:
        assert isinstance(exc, HostgateError)  # what classify calls a host's fault
        on_host_fault = stage.on_host_fault
        return lambda inp: on_host_fault(inp, exc)
    if fault is Fault.BUG and stage.on_bug is not None:
        on_bug = stage.on_bug
        return lambda inp: on_bug(inp, exc)
    return None


def unreadable_dlq_record(stage: Stage, coordinates: Coordinates, group: str,
                          error: BaseException) -> OutRecord:
    """The DLQ record of an input the client library could not read (so it has no key, value,
    timestamp or headers to copy): the context headers name its coordinates and the error; the
    record itself stays at those coordinates."""
    headers = dlq_headers((), stage=stage.name, group=group, coordinates=coordinates,
                          timestamp_ms=-1, failure=Failure(REASON_UNREADABLE, error))
    return OutRecord(stage.dlq, None, b"", headers)


def _truncated_dlq_copy(stage: Stage, raw: RawRecord, group: str, failure: Failure) -> OutRecord:
    """A DLQ copy of a record too large to copy whole with our headers: a prefix of its key and
    value, the size and digest of the value, and as many of its headers, in order, as fit (with
    their count when some are left out). The whole record stays at its coordinates, which the
    context headers name."""
    value = raw.value or b""
    key = (raw.key or b"")[:DLQ_PREFIX_BYTES] or None
    prefix = value[:DLQ_PREFIX_BYTES]
    marks: list[tuple[str, bytes]] = [(H_TRUNCATED, str(len(value)).encode()),
                                      (H_SHA256, hashlib.sha256(value).hexdigest().encode())]
    counted = (H_HEADER_COUNT, str(len(raw.headers)).encode())

    def copy(original: Headers, extra: Sequence[tuple[str, bytes]]) -> OutRecord:
        headers = dlq_headers(original, stage=stage.name, group=group,
                              coordinates=raw.coordinates, timestamp_ms=raw.timestamp_ms,
                              failure=failure)
        return OutRecord(stage.dlq, key, prefix, (*headers, *extra))

    budget = MAX_RECORD_BYTES - record_bytes(copy((), (*marks, counted)))
    kept: list[tuple[str, bytes]] = []
    for name, v in raw.headers:
        budget -= len(name.encode("utf-8")) + len(v) + _HEADER_FRAMING
        if budget < 0:
            break
        kept.append((name, v))
    if len(kept) < len(raw.headers):
        marks.append(counted)
    record = copy(tuple(kept), marks)
    assert record_bytes(record) <= MAX_RECORD_BYTES, "header framing is counted at its widest"
    return record


def _to_dlq(plan: BatchPlan, stage: Stage, raw: RawRecord, group: str, failure: Failure,
            key: str | None = None, fault: Fault | None = None) -> None:
    headers = dlq_headers(raw.headers, stage=stage.name, group=group,
                          coordinates=raw.coordinates, timestamp_ms=raw.timestamp_ms,
                          failure=failure)
    record = OutRecord(stage.dlq, raw.key, raw.value, headers)
    if record_bytes(record) > MAX_RECORD_BYTES:
        record = _truncated_dlq_copy(stage, raw, group, failure)
    plan.records.append(record)
    exc = failure.exception
    facts: dict[str, str | int | bool] = {"dlq_reason": failure.reason}
    if fault is not None:  # decide raised: whose fault (every bug is counted as an internal error)
        facts["fault"] = fault.value
    plan.outcomes.append(RecordOutcome(raw.coordinates, key, "dlq", 0, facts,
                                       error=f"{type(exc).__name__}"))
