"""One unauthenticated record must not stop a collector partition (real broker, real worker).

Attacker (c): may write any bytes to ``attest.requests.v1``. The broker accepts a record up to
``message.max.bytes`` (1,048,588 by default); the worker's transactional producer refuses, in
``send``, any record above aiokafka's ``max_request_size`` (1,048,576 by default). A stage copies
an undecodable input *whole* into its DLQ record and adds the context headers
(``services.runtime.dlq.dlq_headers``), so an input just under the limits yields a DLQ record
just over it: ``MessageSizeTooLargeError`` (a KafkaError, so one of ``TRANSACTION_ERRORS``), the
task is reset, rewinds to the committed offset, reads the same record, fails again, forever.
(The same holds for an ``EvidenceCollected`` built from an enrolled host's own evidence just
under the limit: the collected record adds the enrolled AK and EK identity.)
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.security import identity_support as ids

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm]

VALUE_BYTES = 1_048_576 - 200
"""Under the producer's and the broker's limits with its key and record overhead."""


async def test_one_oversized_garbage_record_stalls_the_collector_partition(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """Attack: write one ~1 MiB undecodable record (no schema header) to the requests topic,
    on the partition of the victim's key. The collector must dead-letter it and go on.
    Gets: the collector task for that partition never commits again; every host on it gets no
    enrolment, no challenge, no intake (here: an ordinary unsigned request that must be
    refused UNENROLLED_AK within 60 s is never answered)."""
    host = f"rt-{uuid.uuid4().hex[:6]}-victim"
    async with ids.deployment(tmp_path, kafka_bootstrap, [host], partitions=1) as dep:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(dep.topics.requests, b"\xff" * VALUE_BYTES,
                                         key=host.encode(), partition=0)
        finally:
            await producer.stop()
        await dep.produce(dep.topics.requests, host, "hostgate.ChallengeRequested", {
            "request_id": "ask-after-poison", "host_id": host, "requested_pcrs": [],
            "sent_at": 0, "request_attest": None, "request_signature": None}, partition=0)
        try:
            await dep.wait_rejection(host, "UNENROLLED_AK", timeout_s=60)
        except (AssertionError, TimeoutError) as exc:
            logs = dep.logs()
            stuck = "MessageSizeTooLarge" in logs
            pytest.fail(f"the collector partition is stalled after one garbage record "
                        f"(MessageSizeTooLarge in the worker log: {stuck}): {exc}")
