"""A revoked partition's per-partition series leave the worker that lost it: its new owner
reports them, and a stale lag kept here would hold a lag alert on until this pod restarts
(deploy/k8s/monitoring.py takes each partition's largest value)."""

from __future__ import annotations

from aiokafka import TopicPartition

from services.runtime.config import WorkerConfig
from services.runtime.worker import Worker
from tests.support.eostest import build_stage, eostest_codec


def _lag(w: Worker, topic: str, partition: int) -> float | None:
    return w.metrics.registry.get_sample_value(
        "hostgate_consumer_lag", {"stage": "eostest", "topic": topic, "partition": str(partition)})


async def test_revoking_a_partition_forgets_its_lag_and_keeps_the_others() -> None:
    w = Worker(build_stage({}), WorkerConfig(stage="eostest"), eostest_codec())
    (topic,) = w.stage.input_topics
    for p in (1, 3):
        w.metrics.lag.labels("eostest", topic, str(p)).set(5000)
    w.metrics.txn_waiting.labels("eostest", "3").set(2.0)
    await w.on_partitions_revoked([TopicPartition(topic, 3)])
    assert _lag(w, topic, 3) is None and _lag(w, topic, 1) == 5000
    assert w.metrics.registry.get_sample_value(
        "hostgate_transaction_waiting_seconds", {"stage": "eostest", "partition": "3"}) is None
    await w.on_partitions_revoked([TopicPartition(topic, 7)])  # never reported: no error
