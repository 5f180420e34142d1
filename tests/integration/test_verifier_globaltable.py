"""The runtime's global table over the policies topic, on the real broker.

Loads the whole compacted topic before returning (all partitions, read_committed), keeps the
highest version per key, follows later publications, honours tombstones, never sees an aborted
transaction's record, and skips (keeps the old value for) a record that does not decode.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from services.errors import ConfigError
from services.runtime.codec import Codec
from services.runtime.globaltable import GlobalTable
from services.runtime.stage import GlobalTableSpec
from services.runtime.topics import TopicLayout, TopicSpec, ensure_topics
from services.verifier.policy_in_force import newer, published_record
from services.wire.subjects import POLICY_PUBLISHED
from tests.integration.runtime_support import bootstrap

pytestmark = pytest.mark.kafka

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


def _value(codec: Codec, pid: str, version: int) -> bytes:
    return codec.encode(POLICY_PUBLISHED, published_record(POLICY.format(pid=pid), version=version,
                                                         published_at_ms=0, author="t"))


async def _until(cond: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_global_table_loads_reduces_and_follows(kafka_bootstrap: str) -> None:
    topic = f"gt{uuid.uuid4().hex[:8]}.attest.policies.v1"
    codec = Codec.load()

    async def scenario() -> None:
        await ensure_topics(bootstrap(), specs=[TopicSpec(topic, "test", compacted=True)],
                            layout=TopicLayout(3, 1))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap(), enable_idempotence=True)
        txn = AIOKafkaProducer(bootstrap_servers=bootstrap(),
                               transactional_id=f"{topic}.txn")
        await producer.start()
        await txn.start()
        table = GlobalTable("policies", GlobalTableSpec(topic, POLICY_PUBLISHED, newer),
                            bootstrap=bootstrap(), codec=codec, client_id="test.gt")
        try:
            for pid, version in (("a", 1), ("a", 3), ("a", 2), ("b", 1), ("c", 1)):
                await producer.send_and_wait(topic, _value(codec, pid, version),
                                             key=pid.encode())
            await producer.send_and_wait(topic, None, key=b"c")  # tombstone: c withdrawn
            await producer.send_and_wait(topic, b"not avro", key=b"b")  # skipped, b kept
            async with txn.transaction():
                await txn.send_and_wait(topic, _value(codec, "b", 9), key=b"b")
            await txn.begin_transaction()
            await txn.send_and_wait(topic, _value(codec, "a", 99), key=b"a")
            await txn.abort_transaction()  # never visible to read_committed
            await table.start()
            assert table.loaded
            a, b = table.get("a"), table.get("b")
            assert a is not None and a["version"] == 3
            assert b is not None and b["version"] == 9  # committed transaction
            assert table.get("c") is None and table.skipped == 1
            await producer.send_and_wait(topic, _value(codec, "a", 4), key=b"a")
            await _until(lambda: (table.get("a") or {}).get("version") == 4)
            await producer.send_and_wait(topic, None, key=b"a")
            await _until(lambda: table.get("a") is None)
        finally:
            await table.stop()
            await producer.stop()
            await txn.stop()
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
            await admin.start()
            try:
                await admin.delete_topics([topic])
            finally:
                await admin.close()

    asyncio.run(scenario())


def test_missing_topic_is_a_config_error(kafka_bootstrap: str) -> None:
    async def scenario() -> None:
        table = GlobalTable("policies", GlobalTableSpec(f"missing-{uuid.uuid4().hex}",
                                                        POLICY_PUBLISHED, newer),
                            bootstrap=bootstrap(), codec=Codec.load(), client_id="test.gt2")
        with pytest.raises(ConfigError, match="does not exist"):
            await table.start()

    asyncio.run(scenario())
