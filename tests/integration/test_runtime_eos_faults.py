"""Exactly-once under faults, against the real broker and real eostest worker processes.

* one worker SIGKILLed at random moments (at least three times) and restarted, and the broker
  restarted once, while 10,000 inputs stream in;
* two workers in one group, one SIGKILLed while it holds an open transaction (it blocks inside
  ``decide``), so the group rebalances and the survivor takes its tasks over;
* the same, but the stalled worker is frozen (SIGSTOP) instead of killed: it wakes up
  (SIGCONT) as a zombie after the group has given its tasks away, and its transactions must be
  fenced;
* a worker whose decision takes longer than the session timeout keeps its tasks: planning runs
  off the event loop, so heartbeats go on and nobody takes over (no needless rebalance).

A read_committed reader then must see exactly one output per input (none missing, none
duplicated), every key's ``counter_after`` values must be 1..n, and the changelog's final
counters must equal the number of inputs per key.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

import pytest

from services.runtime import localbroker
from services.runtime.codec import Codec
from tests.integration import runtime_support as rs
from tests.support.eostest import EostestTopics, eostest_codec

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def _processed(group: str, topic: str) -> int:
    """Input records the group has committed so far (sum of committed offsets)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=rs.bootstrap())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:
        return 0
    finally:
        await admin.close()
    return sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset > 0)


async def _drain_and_check(topics: EostestTopics, workers: list[rs.WorkerProcess],
                           codec: Codec, timeout_s: float = 180) -> dict[str, int]:
    group = workers[0].group

    async def drained() -> bool:
        try:
            return await rs.group_lag(group, topics.input) == 0
        except LookupError:
            return False

    await rs.wait_until(drained, timeout_s, "consumer-group lag 0", poll_s=1.0)
    for w in workers:
        if w.alive():
            assert w.terminate() == 0, f"{w.name} did not exit 0 on SIGTERM"
    inputs = await rs.read_committed(topics.input)
    outputs = await rs.read_committed(topics.output)
    summary = rs.check_exactly_once(topics, inputs, outputs, codec)
    expected: dict[str, int] = {}
    for rec in inputs:
        key = codec.decode(rec.value or b"").record["key"]
        expected[key] = expected.get(key, 0) + 1
    assert await rs.final_counters(topics, codec) == expected
    return summary


async def test_sigkills_and_broker_restart_exactly_once(tmp_path: Path,
                                                       kafka_bootstrap: str) -> None:
    cfg = localbroker.BrokerConfig.from_env()
    assert (await asyncio.to_thread(localbroker.status, cfg)).ready, (
        "this test restarts the local broker: run it with the HOSTGATE_HOME of the running "
        "`hostgate kafka up` broker (make test exports it)")
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"random seed {seed}")
    codec = eostest_codec()
    topics = rs.fresh_topics("kill")
    await rs.create_topics(topics)
    # Static membership: a restarted worker replaces its dead self at once (no session wait).
    worker = rs.WorkerProcess(topics, "g", tmp_path, "worker",
                              {"HOSTGATE_BATCH_MAX_RECORDS": "100", "HOSTGATE_INSTANCE_ID": "w1"})
    n, waves = 10_000, 20
    inputs = rs.make_inputs(n, 300, seed=seed)
    kill_waves = sorted(rng.sample(range(2, waves - 3), 3))
    broker_wave = rng.randrange(kill_waves[1] + 1, waves - 1)
    events: list[str] = []
    try:
        worker.start()
        size = n // waves
        for i in range(waves):
            # Counted before the wave is produced: a fast worker may have finished every earlier
            # wave, and then only this wave's records can show it processing.
            before = await _processed(worker.group, topics.input) if i in kill_waves else 0
            await rs.produce_inputs(topics.input, inputs[i * size:(i + 1) * size], codec)
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            if i in kill_waves:
                # Kill only once this incarnation is really processing, at a random moment.
                await rs.wait_until(
                    lambda b=before: _progressed(worker.group, topics.input, b), 60,
                    "the worker to make progress before the kill", poll_s=0.1)
                await asyncio.sleep(rng.uniform(0.0, 0.4))
                assert worker.alive(), worker.log_text()[-3000:]
                worker.kill()
                events.append(f"SIGKILL after wave {i} at {await _processed(worker.group, topics.input)}")
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                worker.start()
            if i == broker_wave:
                await asyncio.to_thread(localbroker.down, cfg, echo=lambda _m: None)
                events.append(f"broker down after wave {i}")
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                await asyncio.to_thread(localbroker.up, cfg, echo=lambda _m: None)
                events.append("broker up")
        summary = await _drain_and_check(topics, [worker], codec)
        print(events, summary)
        assert sum(e.startswith("SIGKILL") for e in events) >= 3
        assert summary["inputs"] == n
        log = worker.log_text()
        assert log.count("--- start") == 4, "the worker exited on its own"
        # The broker restart reached the running worker (which rode it out without exiting).
        assert re.search(r"Connect call failed|KafkaConnectionError", log), \
            "the worker never saw the broker go away"
    finally:
        worker.kill()
        if not (await asyncio.to_thread(localbroker.status, cfg)).ready:
            await asyncio.to_thread(localbroker.up, cfg, echo=lambda _m: None)
        await rs.delete_topics(topics)


async def _progressed(group: str, topic: str, before: int) -> bool:
    return await _processed(group, topic) > before


async def _two_workers(tmp_path: Path, label: str, stall_s: float
                       ) -> tuple[EostestTopics, rs.WorkerProcess, rs.WorkerProcess]:
    topics = rs.fresh_topics(label)
    await rs.create_topics(topics)
    group = "g"  # inside the run's namespace: its own group
    common = {"HOSTGATE_BATCH_MAX_RECORDS": "50"}
    steady = rs.WorkerProcess(topics, group, tmp_path, "steady", common)
    staller = rs.WorkerProcess(topics, group, tmp_path, "staller", {
        **common, "HOSTGATE_EOSTEST_STALL_AFTER": "200", "HOSTGATE_EOSTEST_STALL_S": str(stall_s)})
    steady.start()
    staller.start()

    async def both_assigned() -> bool:
        return all(re.search(r'"tasks.assigned", .*?"partitions": \[\d', w.log_text()) or
                   re.search(r'"partitions": \[\d[^]]*\], "ready"', w.log_text())
                   for w in (steady, staller))

    await rs.wait_until(both_assigned, 60, "both workers to own tasks")
    return topics, steady, staller


async def _wait_for_stall(w: rs.WorkerProcess) -> None:
    async def stalled() -> bool:
        return "eostest: stalling" in w.log_text()

    await rs.wait_until(stalled, 60, f"{w.name} to stall inside decide", poll_s=0.1)


async def test_kill_mid_transaction_during_rebalance_exactly_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    codec = eostest_codec()
    topics, steady, staller = await _two_workers(tmp_path, "rebal", stall_s=120)
    try:
        produce = asyncio.create_task(
            rs.produce_inputs(topics.input, rs.make_inputs(6000, 100, seed=11), codec))
        await _wait_for_stall(staller)
        t0 = time.monotonic()
        staller.kill()  # an open transaction with records already sent
        await produce
        summary = await _drain_and_check(topics, [steady, staller], codec)
        assert summary["inputs"] == 6000
        log = steady.log_text()
        # The survivor took the dead worker's tasks over in a rebalance.
        assert len(re.findall(r'"tasks.assigned"', log)) >= 2, log[-2000:]
        print(f"drained {time.monotonic() - t0:.1f}s after the kill", summary)
    finally:
        steady.kill()
        staller.kill()
        await rs.delete_topics(topics)


async def test_zombie_worker_is_fenced(tmp_path: Path, kafka_bootstrap: str) -> None:
    codec = eostest_codec()
    # Frozen for 15 s > the 6 s session timeout while inside decide with a transaction open: the
    # group evicts it and the steady worker re-initialises its tasks (InitProducerId); thawed,
    # it finishes the decision and tries to commit.
    topics, steady, zombie = await _two_workers(tmp_path, "zombie", stall_s=3)
    try:
        await rs.produce_inputs(topics.input, rs.make_inputs(6000, 100, seed=12), codec)
        await _wait_for_stall(zombie)
        zombie.freeze()
        await asyncio.sleep(15)
        zombie.thaw()

        async def zombie_woke() -> bool:
            return '"transaction.failed"' in zombie.log_text() or \
                '"task.broken"' in zombie.log_text()

        await rs.wait_until(zombie_woke, 60, "the zombie to wake and be refused")
        summary = await _drain_and_check(topics, [steady, zombie], codec)
        assert summary["inputs"] == 6000
        assert re.search(r"ProducerFenced|InvalidProducerEpoch|Fenced", zombie.log_text()), \
            zombie.log_text()[-3000:]
    finally:
        steady.kill()
        zombie.kill()
        await rs.delete_topics(topics)


async def test_slow_decision_keeps_the_workers_tasks(tmp_path: Path, kafka_bootstrap: str) -> None:
    """15 s inside one decide, more than twice the 6 s session timeout: the worker stays in the
    group (no revocation, the other worker takes nothing over) and every input is processed
    exactly once."""
    codec = eostest_codec()
    topics, steady, slow = await _two_workers(tmp_path, "slowdecide", stall_s=15)
    try:
        await rs.produce_inputs(topics.input, rs.make_inputs(3000, 60, seed=13), codec)
        await _wait_for_stall(slow)
        seen = {w.name: len(w.log_text()) for w in (steady, slow)}  # start-up rebalances before
        await asyncio.sleep(17)  # the decision is over; a blocked loop would have been evicted

        async def drained() -> bool:
            try:
                return await rs.group_lag(slow.group, topics.input) == 0
            except LookupError:
                return False

        await rs.wait_until(drained, 180, "consumer-group lag 0", poll_s=1.0)
        # judged before the workers stop (a worker leaving on SIGTERM rebalances, rightly)
        for w in (steady, slow):
            since_stall = w.log_text()[seen[w.name]:]
            assert '"tasks.revoked"' not in since_stall, (w.name, since_stall[-2000:])
            assert '"tasks.assigned"' not in since_stall, (w.name, since_stall[-2000:])
        summary = await _drain_and_check(topics, [steady, slow], codec)
        assert summary["inputs"] == 3000
    finally:
        steady.kill()
        slow.kill()
        await rs.delete_topics(topics)
