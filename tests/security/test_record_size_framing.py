"""The planner's record-size guard counts what the producer counts: every header's framing.

Attacker (b) or (c): may write any record to ``attest.requests.v1`` (any key, any partition,
any headers). ``services.runtime.plan`` keeps every record a plan holds under
``MAX_RECORD_BYTES``; a record the producer refuses in ``send`` (``MessageSizeTooLargeError``,
a ``KafkaError``) fails the task's transaction on every retry and stalls the partition. The
guard used to count key + value + each header's name and value; on the wire (record format v2)
each header also costs two varints, and aiokafka's producer counts them
(``DefaultRecordBatchBuilder.estimate_size_in_bytes``), as the broker does against
``message.max.bytes``. A 16 KiB margin is a constant; the framing grows with the header count.

Attack: one garbage record (no schema header, so it is dead-lettered) with 12,000 empty headers,
padded so that its batch is exactly the broker's limit (the broker accepts it). Its DLQ copy
used to pass the guard whole and be refused in ``send``. Now ``record_bytes`` is the producer's
own estimate, and the DLQ copy keeps a prefix of the value and as many headers as fit, with
their count. No broker is needed: the plan is the real ``plan_batch`` of the real collector
stage and codec, and the sizes are aiokafka's own accounting. Failed on the code before the fix.
"""

from __future__ import annotations

import inspect

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from services.collector.config import CollectorConfig
from services.collector.stage import stage_from_config
from services.runtime.codec import Codec
from services.runtime.dlq import H_HEADER_COUNT, H_SHA256, H_TRUNCATED, header_value
from services.runtime.plan import MAX_RECORD_BYTES, RawRecord, plan_batch, record_bytes
from services.runtime.stage import OverlayState

BROKER_MESSAGE_MAX_BYTES = 1_048_588
"""Kafka's default ``message.max.bytes`` (``deploy/k8s/kafka.yaml`` sets the same)."""
PRODUCER_MAX_REQUEST_SIZE = inspect.signature(AIOKafkaProducer).parameters[
    "max_request_size"].default
"""The worker's producers do not set ``max_request_size`` (``services.runtime.worker``)."""
HEADERS = 12_000


def _batch_bytes(key: bytes | None, value: bytes, headers: tuple[tuple[str, bytes], ...]) -> int:
    """The size of the v2 record batch holding this one record, as the broker measures it."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=2**31 - 1)
    builder.append(0, timestamp=1_700_000_000_000, key=key, value=value, headers=list(headers))
    return len(builder.build())


def test_dlq_copy_of_a_many_header_record_fits_what_the_producer_sends() -> None:
    stage = stage_from_config(CollectorConfig(trusted_cas=()))
    key = b"victim-host"
    headers = tuple(("", b"") for _ in range(HEADERS))
    lo, hi = 0, BROKER_MESSAGE_MAX_BYTES  # the largest garbage value the broker accepts
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _batch_bytes(key, b"\xff" * mid, headers) <= BROKER_MESSAGE_MAX_BYTES:
            lo = mid
        else:
            hi = mid - 1
    value = b"\xff" * lo
    assert _batch_bytes(key, value, headers) <= BROKER_MESSAGE_MAX_BYTES  # the broker takes it

    raw = RawRecord(stage.input_topics[0], 0, 7, 1_700_000_000_000, key, value, headers)
    plan = plan_batch(stage, Codec.load(), [raw], OverlayState({}), group="collector",
                      task_partition=0)
    (rec,) = plan.records
    assert rec.topic == stage.dlq and plan.outcomes[0].result == "dlq"
    assert record_bytes(rec) <= MAX_RECORD_BYTES  # the guard lets the whole copy through

    sent = DefaultRecordBatchBuilder.estimate_size_in_bytes(rec.key, rec.value, list(rec.headers))
    assert sent <= PRODUCER_MAX_REQUEST_SIZE, (
        f"the planned DLQ record is {sent} bytes to the worker's producer (limit "
        f"{PRODUCER_MAX_REQUEST_SIZE}; its batch is {_batch_bytes(rec.key, rec.value or b'', rec.headers)} "
        f"bytes, the broker's limit {BROKER_MESSAGE_MAX_BYTES}) although record_bytes counts "
        f"{record_bytes(rec)}: send raises MessageSizeTooLargeError on every retry and the "
        "partition stalls")
    assert header_value(rec.headers, H_TRUNCATED) == str(len(value))
    assert header_value(rec.headers, H_SHA256) is not None
    assert sum(1 for name, _ in rec.headers if name == "") == HEADERS  # the framing fits
    assert header_value(rec.headers, H_HEADER_COUNT) is None


def test_dlq_copy_of_a_record_of_large_headers_keeps_those_that_fit() -> None:
    """A record the broker takes (just under ``message.max.bytes``) whose weight is in its
    headers: its DLQ copy keeps, in order, the headers that fit with the context headers, and
    says how many the original had."""
    stage = stage_from_config(CollectorConfig(trusted_cas=()))
    headers = tuple((f"h{i}", bytes([i]) * 61_600) for i in range(17))
    assert _batch_bytes(b"k", b"", headers) <= BROKER_MESSAGE_MAX_BYTES
    raw = RawRecord(stage.input_topics[0], 0, 9, 1_700_000_000_000, b"k", b"", headers)
    plan = plan_batch(stage, Codec.load(), [raw], OverlayState({}), group="collector",
                      task_partition=0)
    (rec,) = plan.records
    assert rec.topic == stage.dlq and record_bytes(rec) <= MAX_RECORD_BYTES
    kept = [name for name, _ in rec.headers if name[1:].isdigit()]
    assert kept == [f"h{i}" for i in range(len(kept))] and 0 < len(kept) < len(headers)
    assert header_value(rec.headers, H_HEADER_COUNT) == str(len(headers))
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(
        rec.key, rec.value, list(rec.headers)) <= PRODUCER_MAX_REQUEST_SIZE
