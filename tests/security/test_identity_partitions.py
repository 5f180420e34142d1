"""A record on a partition other than its key's is refused (real broker, real collector, swtpm).

The collector's state lives per partition: the host-keyed enrolments of ``web-042`` exist only in
the task that owns the partition Kafka's default partitioner maps ``web-042`` to. Before this
check, a record keyed ``web-042`` but written (explicit ``partition=``) to another partition was
judged by a task that knew nothing of the real ``web-042``, so any holder of the agents'
principal could enrol that id there with its own TPM and attest as it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from services.agent.client import AgentTimeout
from tests.integration import runtime_support as rs
from tests.security import identity_support as ids

pytestmark = [pytest.mark.kafka]

# murmur2 of the Java client (org.apache.kafka.common.utils.Utils.murmur2), from Kafka's
# UtilsTest: the values a record's key must agree with wherever it was produced.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_is_the_java_clients() -> None:
    from services.runtime.partitioner import key_partition, murmur2

    for data, want in JAVA_MURMUR2.items():
        assert murmur2(data) == want, data
        for n in (1, 2, 3, 6, 48, 1000):
            assert key_partition(data, n) == (want & 0x7FFFFFFF) % n


async def test_key_partition_is_where_the_broker_put_keyed_records(kafka_bootstrap: str
                                                                    ) -> None:
    from services.runtime.partitioner import key_partition
    from services.runtime.topics import TopicLayout, TopicSpec, ensure_topics

    topic = f"sec.partitioner-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, specs=[TopicSpec(topic, "t")],
                        layout=TopicLayout(7, 1))
    keys = [f"web-{i:03d}" for i in range(300)] + ["", "ü-host", "a" * 200]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for k in keys:  # no partition=: the client's default partitioner chooses
            await producer.send_and_wait(topic, b"v", key=k.encode())
    finally:
        await producer.stop()
    landed = {r.key: r.partition for r in await rs.read_committed(topic)}
    assert len(landed) == len(keys)
    wrong = {k: (p, key_partition(k, 7)) for k, p in landed.items()
             if k is not None and key_partition(k, 7) != p}
    assert wrong == {}
    assert len(set(landed.values())) == 7  # the keys spread: the check is not vacuous


async def test_foreign_partition_records_cannot_enrol_or_attest(kafka_bootstrap: str,
                                                                tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    async with ids.deployment(tmp_path, kafka_bootstrap,
                              [f"sec-{tag}-victim", f"sec-{tag}-attacker"]) as dep:
        victim_sim, attacker_sim = dep.sim(0), dep.sim(1)
        victim = victim_sim.host_id
        home = ids.oracle_partition(victim, dep.partitions)
        foreign = (home + 1) % dep.partitions

        # The real host enrols and attests on its own partition.
        async with dep.client(victim_sim) as client:
            await client.enroll()
            await client.attest()
        await dep.wait_collected(victim, 1)

        # Another host claims a fresh id on the partition its key does not map to.
        ghost = ids.host_id_on(home, dep.partitions, f"sec-{tag}-ghost")
        async with dep.client(attacker_sim, ghost, partition=foreign, timeout_s=12) as rogue:
            with pytest.raises(AgentTimeout):
                await rogue.enroll()
        (refused,) = await dep.wait_rejection(ghost, "WRONG_PARTITION")
        assert ghost in refused["detail"]
        assert f"partition {home}" in refused["detail"]
        assert f"partition {foreign}" in refused["detail"]
        assert refused["source"]["partition"] == foreign

        # The victim's own records, misrouted by anyone, are refused and change nothing.
        async with dep.client(victim_sim, partition=foreign, timeout_s=12) as misrouted:
            with pytest.raises(AgentTimeout):
                await misrouted.attest()
        await dep.wait_rejection(victim, "WRONG_PARTITION")
        # ... and the attacker cannot attest as the victim from a foreign partition either.
        async with dep.client(attacker_sim, victim, partition=foreign, timeout_s=12) as rogue:
            with pytest.raises(AgentTimeout):
                await rogue.enroll()
        await dep.wait_rejection(victim, "WRONG_PARTITION", count=2)

        assert await dep.collected(ghost) == []
        assert await dep.challenges_for(ghost) == []
        enrolments = await dep.table("enrollments")
        assert ghost not in enrolments
        assert enrolments[victim] is not None
        assert enrolments[victim]["ak_public"] == victim_sim.ak_public
        # The victim still attests normally: nothing of its state was touched.
        async with dep.client(victim_sim) as client:
            await client.attest()
        await dep.wait_collected(victim, 2)
        assert all(c["ak_public"] == victim_sim.ak_public for c in await dep.collected(victim))
        assert await rs.read_committed(dep.topics.dlq("collector")) == []
