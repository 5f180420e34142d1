"""A record the client library cannot read must be dead-lettered, not stop the stage.

Attacker (b) or (c): may write any record to ``attest.requests.v1``. A Kafka header name is a
length-prefixed byte string; the broker does not check that it is UTF-8 (Java decodes it with
replacement) and producers such as librdkafka send whatever bytes they are given. aiokafka
decodes each header name as strict UTF-8 (C extension and Python alike) while ``getmany`` hands
records out, so such a record raises ``UnicodeDecodeError`` there, before hostgate sees it: not
a ``KafkaError``. Unhandled, it leaves ``Worker.run``; the next owner of the partition resumes
at the committed offset, fetches it and dies the same way: every collector worker in turn.

The worker (``Worker._unreadable_fetch``) rewinds, reads the partition up to the record, decides
what precedes it, and dead-letters it by its coordinates, exactly once.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import READ_COMMITTED, PartitionRecords
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record import _crc32c
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from services.runtime.dlq import H_OFFSET, H_PARTITION, H_REASON, REASON_UNREADABLE, header_value
from services.runtime.worker import UNREADABLE_RECORD_ERRORS
from tests.integration import runtime_support as rs
from tests.security import identity_support as ids

_CRC_AT, _CRC_FROM = 17, 21  # v2 batch: crc (u32) at byte 17 covers bytes 21..end


def _batch_with_header_name(name: bytes, key: bytes) -> bytes:
    """A valid v2 batch (CRC-32C recomputed) of one record whose header name is ``name``."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    builder.append(0, timestamp=1_767_225_600_000, key=key, value=b"\xff" * 16,
                   headers=[("Z", b"Q")])
    buf = bytearray(builder.build())
    at = buf.rfind(b"Z\x02Q")  # name "Z", value length varint 1, value "Q"
    assert at > 0 and len(name) == 1
    buf[at:at + 1] = name
    struct.pack_into(">I", buf, _CRC_AT, _crc32c.crc(bytes(buf[_CRC_FROM:])))
    return bytes(buf)


def test_the_worker_handles_what_aiokafka_raises_for_a_non_utf8_header_name() -> None:
    """aiokafka's own fetch path (``PartitionRecords``, what ``getmany`` drains) on the batch a
    broker would store: what it raises must be one of the errors the worker handles. Guards the
    handler against an aiokafka upgrade that changes the exception."""
    fetched = PartitionRecords(TopicPartition("attest.requests.v1", 0),
                               MemoryRecords(_batch_with_header_name(b"\xff", b"victim")), [],
                               0, None, None, True, READ_COMMITTED)
    with pytest.raises(Exception) as caught:
        list(fetched)
    assert isinstance(caught.value, UNREADABLE_RECORD_ERRORS), type(caught.value)


async def _produce_raw(bootstrap: str, topic: str, partition: int, batch: bytes) -> None:
    """Send ``batch`` as it is (aiokafka's producer would refuse the header name)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        response = await client.send(leader, ProduceRequest(None, -1, 30_000,
                                                            [(topic, [(partition, batch)])]))
        ((_, parts),) = response.topics
        error_code = parts[0][1]
        assert error_code == 0, f"the broker refused the batch (error {error_code})"
    finally:
        await client.close()


@pytest.mark.kafka
@pytest.mark.swtpm
async def test_a_non_utf8_header_name_is_dead_lettered_and_the_partition_goes_on(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A request before the unreadable record, the record, a request after it, all on one
    partition: both requests are answered (refused UNENROLLED_AK: the hosts are not enrolled),
    the record is in the DLQ by its coordinates, and the worker is still the one that started."""
    before = f"ur-{uuid.uuid4().hex[:6]}-before"
    after = f"ur-{uuid.uuid4().hex[:6]}-after"
    async with ids.deployment(tmp_path, kafka_bootstrap, [before, after], partitions=1) as dep:
        def ask(host: str) -> dict[str, object]:
            return {"request_id": f"ask-{host}", "host_id": host, "requested_pcrs": [],
                    "sent_at": 0, "request_attest": None, "request_signature": None}

        await dep.produce(dep.topics.requests, before, "hostgate.ChallengeRequested",
                          ask(before), partition=0)
        await _produce_raw(kafka_bootstrap, dep.topics.requests, 0,
                           _batch_with_header_name(b"\xff", b"poison"))
        await dep.produce(dep.topics.requests, after, "hostgate.ChallengeRequested",
                          ask(after), partition=0)
        try:
            await dep.wait_rejection(before, "UNENROLLED_AK", timeout_s=60)
            await dep.wait_rejection(after, "UNENROLLED_AK", timeout_s=60)
        except (AssertionError, TimeoutError) as exc:
            pytest.fail(f"the collector stopped at a record with a non-UTF-8 header name: "
                        f"{exc}\n{dep.logs()}")
        dead = [r for r in await rs.read_committed(dep.topics.dlq("collector"))
                if header_value(r.headers, H_REASON) == REASON_UNREADABLE]
        assert len(dead) == 1, dead  # exactly once
        assert header_value(dead[0].headers, H_PARTITION) == "0"
        assert header_value(dead[0].headers, H_OFFSET) == "1"  # after the first request
        assert all(w.alive() for w in dep.workers), dep.logs()
        assert "poll.unreadable_record" in dep.logs()
