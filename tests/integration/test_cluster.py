"""hostgate on a real three-node KRaft cluster (``hostgate kafka up --brokers 3``, the session
fixture ``kafka_cluster``: its own HOSTGATE_HOME and ports), with real faults from the fault
driver (``services.runtime.cluster_faults``):

* the cluster's CLI: status names every node's pid, port and state, the partition leaders and
  the under-replicated partitions; ``logs --node``; ``kill`` / ``start`` one node;
* ``topics ensure`` detects RF 3 / min ISR 2 from the metadata and reports drift in either;
* SIGKILL of a partition's leader under a transactional (idempotent, acks=all) producer: a
  read_committed reader sees every record exactly once;
* SIGKILL of the transaction coordinator of an eostest worker's transactional id, then of its
  group's coordinator, mid-run: exactly once;
* every node restarted in turn (a rolling restart) under a streaming worker: exactly once;
* two of three nodes down (one left: no controller quorum, no ISR of two): writes are refused,
  not acknowledged and lost; the worker rides it out and resumes by itself once a node returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from services.runtime import cluster_faults, localcluster
from services.runtime.topics import TopicLayout, TopicSpec, ensure_topics
from tests.integration import runtime_support as rs
from tests.support.eostest import eostest_codec

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _status(cluster: Any) -> dict[str, Any]:
    proc = cluster.cli("status", "--json")
    doc: dict[str, Any] = json.loads(proc.stdout)
    doc["rc"] = proc.returncode
    return doc


async def _wait_status(cluster: Any, what: str, ok: Any, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = await asyncio.to_thread(_status, cluster)
        if ok(doc):
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {doc}")
        await asyncio.sleep(1)


async def _all_in_sync(cluster: Any) -> None:
    await _wait_status(cluster, "every node live, no under-replicated partition",
                       lambda d: d["rc"] == 0 and not d["under_replicated"], timeout_s=90)


async def test_cluster_status_names_nodes_leaders_and_under_replicated(kafka_cluster: Any) -> None:
    cluster = kafka_cluster
    doc = _status(cluster)
    assert doc["rc"] == 0 and doc["state"] == "running" and doc["live_brokers"] == [1, 2, 3]
    ports = [n["port"] for n in doc["nodes"]]
    assert ports == [ports[0], ports[0] + 2, ports[0] + 4]
    assert all(n["state"] == "running" and Path(f"/proc/{n['pid']}").exists()
               for n in doc["nodes"])
    topic = f"cluster.status.{uuid.uuid4().hex[:6]}"
    await ensure_topics(cluster.bootstrap, [TopicSpec(topic, "test")], TopicLayout(3))
    doc = await _wait_status(cluster, "the topic's leaders", lambda d: topic in d["leaders"])
    assert sorted(doc["leaders"][topic]) == ["0", "1", "2"]  # JSON keys
    logs = cluster.cli("logs", "--node", "2", "-n", "200")
    assert logs.returncode == 0 and "Kafka Server started" in logs.stdout
    assert cluster.cli("logs").returncode == 2  # a cluster needs --node

    killed = cluster.cli("kill", "3")
    assert killed.returncode == 0, killed.stderr
    doc = await _wait_status(cluster, "node 3's partitions under-replicated",
                             lambda d: any(line.startswith(f"{topic}[")
                                           for line in d["under_replicated"]))
    assert doc["rc"] == 1 and doc["state"] == "degraded"
    assert doc["nodes"][2]["state"] == "stopped" and doc["nodes"][2]["pid"] is None
    text = cluster.cli("status").stdout
    assert "UNDER-REPLICATED" in text and "node 3: stopped" in text
    # A broker down does not make `topics ensure` create topics with two replicas: it still
    # counts three (the brokers' default.replication.factor), and KRaft places the third
    # replica on the fenced node, which catches up when it returns.
    late = await ensure_topics(cluster.bootstrap, [TopicSpec(f"{topic}.late", "test")],
                               TopicLayout(3))
    assert late.replication == 3
    assert (await _topic_state(cluster.bootstrap, f"{topic}.late"))[0] == {3}
    started = cluster.cli("start", "3")
    assert started.returncode == 0, started.stderr
    await _all_in_sync(cluster)


async def _topic_state(bootstrap: str, topic: str) -> tuple[set[int], str | None]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + 10  # a new topic reaches every broker's metadata late
        while not (doc := (await admin.describe_topics([topic]))[0])["partitions"]:
            assert time.monotonic() < deadline, f"{topic} has no partitions in metadata"
            await asyncio.sleep(0.2)
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        configs = {e[0]: e[1] for e in resp.resources[0][4]}
    finally:
        await admin.close()
    return {len(p["replicas"]) for p in doc["partitions"]}, configs.get("min.insync.replicas")


async def test_topics_ensure_uses_rf3_min_isr2_and_reports_drift(kafka_cluster: Any) -> None:
    bootstrap = kafka_cluster.bootstrap
    tag = uuid.uuid4().hex[:6]
    spec = TopicSpec(f"cluster.rf.{tag}", "test")
    report = await ensure_topics(bootstrap, [spec], TopicLayout.from_env({}))
    assert report.created == [spec.name] and report.replication == 3
    assert await _topic_state(bootstrap, spec.name) == ({3}, "2")
    assert (await ensure_topics(bootstrap, [spec], TopicLayout(6))).ok == [spec.name]

    # An operator-made topic with one replica and a weaker min ISR is drift in both.
    drifted = f"cluster.rf1.{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(drifted, 6, 1,
                                            topic_configs={"min.insync.replicas": "1"})])
    finally:
        await admin.close()
    report = await ensure_topics(bootstrap, [TopicSpec(drifted, "test")], TopicLayout(6))
    (line,) = report.drift
    assert "replication factor 1 (want 3)" in line and "min.insync.replicas=1 (want 2)" in line
    # HOSTGATE_REPLICATION wins over detection.
    forced = await ensure_topics(bootstrap, [TopicSpec(drifted, "test")],
                                 TopicLayout.from_env({"HOSTGATE_REPLICATION": "1"}))
    assert forced.ok == [drifted] and forced.replication == 1

    # The CLI: defaults to the cluster of its HOSTGATE_HOME and says what it checked.
    import subprocess
    import sys

    env = {**__import__("os").environ, **kafka_cluster.env, "HOSTGATE_TOPIC_NAMESPACE": tag}
    env.pop("HOSTGATE_BOOTSTRAP", None)
    env.pop("HOSTGATE_REPLICATION", None)
    proc = subprocess.run([sys.executable, "-m", "services.cli", "topics", "ensure", "--json"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["replication"] == 3 and doc["min_insync"] == 2 and doc["created"]
    assert await _topic_state(bootstrap, f"{tag}.attest.evidence.v1") == ({3}, "2")


async def _read_values(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[bytes] = []
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(r.value for r in recs if r.value is not None)
        return out
    finally:
        await consumer.stop()


async def _transactional_producer(bootstrap: str, txn_id: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id,
                                request_timeout_ms=10_000, linger_ms=5)
    await producer.start()
    return producer


async def test_leader_sigkill_under_transactional_writes_exactly_once(kafka_cluster: Any) -> None:
    cluster = kafka_cluster
    bootstrap = cluster.bootstrap
    topic = f"cluster.txn.{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, "test")], TopicLayout(3))
    txn_id = f"cluster-test-{uuid.uuid4().hex[:6]}"
    producer = await _transactional_producer(bootstrap, txn_id)
    coordinator = await cluster_faults.transaction_coordinator(bootstrap, txn_id)
    leaders = {p: await cluster_faults.partition_leader(bootstrap, topic, p) for p in range(3)}
    # The leader of a partition this producer writes, not its coordinator (the next test
    # kills coordinators).
    victim_partition = next(p for p, n in leaders.items() if n != coordinator)
    victim = leaders[victim_partition]
    batches, per_batch, kill_at = 40, 50, 10
    retries: list[str] = []
    slowest = 0.0
    try:
        for b in range(batches):
            if b == kill_at:
                await asyncio.to_thread(cluster_faults.kill, cluster.cfg, victim)
            values = [f"{b}:{i}".encode() for i in range(per_batch)]
            t0 = time.monotonic()
            while True:
                try:
                    async with producer.transaction():
                        futs = [await producer.send(topic, v, key=v) for v in values]
                        await asyncio.gather(*futs)
                    break
                except KafkaError as exc:
                    # As the worker does: drop the producer; InitProducerId with the same id
                    # aborts what it left open. Then write the batch again.
                    retries.append(f"batch {b}: {type(exc).__name__}")
                    await producer.stop()
                    producer = await _transactional_producer(bootstrap, txn_id)
            slowest = max(slowest, time.monotonic() - t0)
    finally:
        await producer.stop()
    new_leader = await cluster_faults.partition_leader(bootstrap, topic, victim_partition)
    print(f"killed node {victim} (leader of {topic}[{victim_partition}]); new leader "
          f"{new_leader}; slowest transaction {slowest:.1f}s; retries {retries}")
    assert new_leader != victim
    values = await _read_values(bootstrap, topic, 3)
    want = sorted(f"{b}:{i}".encode() for b in range(batches) for i in range(per_batch))
    assert sorted(values) == want, (f"{len(values)} records read, {len(set(values))} distinct, "
                                    f"{batches * per_batch} written")
    await asyncio.to_thread(cluster_faults.restart, cluster.cfg, victim)
    await _all_in_sync(cluster)


async def test_coordinator_sigkills_eostest_exactly_once(kafka_cluster: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The transaction coordinator of task 0's transactional id, then the group coordinator of
    the worker's group, SIGKILLed while a worker streams; each restarted before the next."""
    cluster = kafka_cluster
    monkeypatch.setenv("HOSTGATE_BOOTSTRAP", cluster.bootstrap)
    codec = eostest_codec()
    topics = rs.fresh_topics("cluster-coord")
    await rs.create_topics(topics, replication=None)
    worker = rs.WorkerProcess(topics, "g", tmp_path, "worker",
                              {"HOSTGATE_BATCH_MAX_RECORDS": "100", "HOSTGATE_INSTANCE_ID": "w1"})
    n, waves = 3000, 12
    inputs = rs.make_inputs(n, 200, seed=16)
    size = n // waves
    events: list[str] = []
    try:
        worker.start()
        for i in range(waves):
            await rs.produce_inputs(topics.input, inputs[i * size:(i + 1) * size], codec)
            if i in (3, 7):
                before = await rs.committed_inputs(worker.group, topics.input)
                await rs.wait_until(
                    lambda b=before: _more(worker.group, topics.input, b), 90,
                    "the worker to make progress before the kill", poll_s=0.2)
                if i == 3:
                    txn_id = f"{worker.group}.task-0"
                    node = await cluster_faults.transaction_coordinator(cluster.bootstrap, txn_id)
                    what = f"transaction coordinator of {txn_id}"
                else:
                    node = await cluster_faults.group_coordinator(cluster.bootstrap, worker.group)
                    what = f"group coordinator of {worker.group}"
                await asyncio.to_thread(cluster_faults.kill, cluster.cfg, node)
                t_kill = time.monotonic()
                events.append(f"SIGKILL node {node}, the {what}, after wave {i}")
                await asyncio.sleep(3)
                await asyncio.to_thread(cluster_faults.restart, cluster.cfg, node)
                events.append(f"node {node} back after {time.monotonic() - t_kill:.1f}s")
            assert worker.alive(), worker.log_text()[-3000:]
        summary = await rs.drain_and_check(topics, [worker], codec)
        print(events, summary)
        assert summary["inputs"] == n
        assert worker.log_text().count("--- start") == 1, "the worker exited on its own"
    finally:
        worker.kill()
        await rs.delete_topics(topics)
    await _all_in_sync(cluster)


async def test_rolling_restart_eostest_exactly_once(kafka_cluster: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node restarted in turn (SIGTERM: controlled shutdown, then start, then wait until
    every partition is back in sync) while a worker streams: no reset needed, exactly once."""
    cluster = kafka_cluster
    monkeypatch.setenv("HOSTGATE_BOOTSTRAP", cluster.bootstrap)
    codec = eostest_codec()
    topics = rs.fresh_topics("cluster-rolling")
    await rs.create_topics(topics, replication=None)
    worker = rs.WorkerProcess(topics, "g", tmp_path, "worker",
                              {"HOSTGATE_BATCH_MAX_RECORDS": "100", "HOSTGATE_INSTANCE_ID": "w1"})
    inputs = rs.make_inputs(2400, 200, seed=7)
    waves = len(cluster.cfg.nodes) + 1
    size = len(inputs) // waves
    timings: list[str] = []
    try:
        worker.start()
        for i in range(waves):
            await rs.produce_inputs(topics.input, inputs[i * size:(i + 1) * size], codec)
            if i == waves - 1:
                break
            node = cluster.cfg.nodes[i]
            t0 = time.monotonic()
            await asyncio.to_thread(cluster_faults.kill, cluster.cfg, node, signal.SIGTERM)
            t_stopped = time.monotonic()
            await asyncio.to_thread(cluster_faults.restart, cluster.cfg, node)
            await _all_in_sync(cluster)
            timings.append(f"node {node}: stop {t_stopped - t0:.1f}s, back in sync "
                           f"{time.monotonic() - t0:.1f}s")
            assert worker.alive(), worker.log_text()[-3000:]
        summary = await rs.drain_and_check(topics, [worker], codec)
        print(timings, summary)
        assert summary["inputs"] == len(inputs)
        assert worker.log_text().count("--- start") == 1, "the worker exited on its own"
    finally:
        worker.kill()
        await rs.delete_topics(topics)


async def _more(group: str, topic: str, before: int) -> bool:
    return await rs.committed_inputs(group, topic) > before


async def test_one_node_left_refuses_writes_then_resumes(kafka_cluster: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two of three nodes SIGKILLed: with one left there is neither a controller quorum nor an
    ISR of two, so an acks=all write is refused (times out), never acknowledged and then lost.
    The worker, mid-transaction, logs ``transaction.waiting`` while nothing commits, stays up,
    and when a node returns the pipeline resumes by itself, exactly once.

    Regression: before ``Worker._broker_step`` the worker waited out such an outage in
    silence (aiokafka retries without raising), looking merely idle."""
    cluster = kafka_cluster
    monkeypatch.setenv("HOSTGATE_BOOTSTRAP", cluster.bootstrap)
    codec = eostest_codec()
    topics = rs.fresh_topics("cluster-minisr")
    await rs.create_topics(topics, replication=None)
    probe_topic = f"{topics.namespace}.probe"
    await ensure_topics(cluster.bootstrap, [TopicSpec(probe_topic, "test")], TopicLayout(1))
    # The worker blocks inside decide (a transaction open) at its 700th record, so the outage
    # hits it mid-transaction and with records left to do.
    worker = rs.WorkerProcess(topics, "g", tmp_path, "worker",
                              {"HOSTGATE_BATCH_MAX_RECORDS": "100", "HOSTGATE_INSTANCE_ID": "w1",
                               "HOSTGATE_EOSTEST_STALL_AFTER": "700",
                               "HOSTGATE_EOSTEST_STALL_S": "25"})
    inputs = rs.make_inputs(1500, 100, seed=3)
    first, second = inputs[:1000], inputs[1000:]
    try:
        worker.start()
        await rs.produce_inputs(topics.input, first, codec)

        async def stalled() -> bool:
            return "eostest: stalling" in worker.log_text()

        await rs.wait_until(stalled, 90, "the worker to stall mid-transaction", poll_s=0.2)
        t_stall = time.monotonic()
        a, b = 2, 3
        await asyncio.to_thread(cluster_faults.kill, cluster.cfg, a)
        # Let the controller fence the first (session timeout 6 s) so the ISRs shrink to two.
        await _wait_status(cluster, f"node {a} fenced",
                           lambda d: a not in d["live_brokers"] and len(d["live_brokers"]) == 2)
        await asyncio.to_thread(cluster_faults.kill, cluster.cfg, b)
        t_down = time.monotonic()

        probe = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True,
                                 request_timeout_ms=5000)
        await probe.start()
        refused: str | None = None
        try:
            await asyncio.wait_for(probe.send_and_wait(probe_topic, b"not acked"), 15)
        except (KafkaError, TimeoutError) as exc:
            refused = type(exc).__name__
        finally:
            with contextlib.suppress(Exception):  # stop cannot flush the refused record
                await asyncio.wait_for(probe.stop(), 5)
        assert refused is not None, "a write was acknowledged with one node of three up"
        assert worker.alive(), worker.log_text()[-3000:]

        # The stall ends with both nodes down: the open transaction cannot commit.
        await asyncio.sleep(max(0.0, t_stall + 30 - time.monotonic()))
        assert worker.alive(), worker.log_text()[-3000:]
        await asyncio.to_thread(cluster_faults.restart, cluster.cfg, a)
        t_back = time.monotonic()
        await rs.produce_inputs(topics.input, second, codec)
        await asyncio.to_thread(cluster_faults.restart, cluster.cfg, b)
        summary = await rs.drain_and_check(topics, [worker], codec)
        # Not acknowledged is not "not written": the leader may have appended the record and
        # replicated it once a follower returned. Idempotence keeps it to one copy at most.
        probed = await _read_values(cluster.bootstrap, probe_topic, 1)
        assert probed in ([], [b"not acked"]), probed
        print(f"refused with {refused}; down {t_back - t_down:.1f}s; probe later present "
              f"{len(probed)}x; {summary}")
        assert summary["inputs"] == len(inputs)
        log = worker.log_text()
        assert log.count("--- start") == 1, "the worker exited on its own"
        # The worker said so while it waited (aiokafka retries silently) and did not give up:
        # the outage was shorter than the transaction timeout.
        waiting = [json.loads(line) for line in log.splitlines()
                   if '"transaction.waiting"' in line]
        assert waiting, "the worker never said its transaction was waiting for the brokers"
        print(f"worker: {len(waiting)} transaction.waiting warnings, longest "
              f"{max(w['waited_s'] for w in waiting)}s, steps {sorted({w['step'] for w in waiting})}")
    finally:
        worker.kill()
        for node in cluster.cfg.nodes:
            if localcluster.node_pid(cluster.cfg, node) is None:
                await asyncio.to_thread(cluster_faults.restart, cluster.cfg, node)
        await rs.delete_topics(topics)
    await _all_in_sync(cluster)


def test_kill_refuses_a_node_that_is_not_running(kafka_cluster: Any) -> None:
    proc = kafka_cluster.cli("kill", "7")
    assert proc.returncode != 0 and "node 7 is not in this cluster" in proc.stderr
