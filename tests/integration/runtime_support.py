"""Shared helpers of the runtime's broker tests (``test_runtime_*``): topics, worker processes,
read_committed readers and the exactly-once checks. Everything here talks to the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.runtime.codec import Codec
from services.runtime.localbroker import BrokerConfig
from services.runtime.topics import TopicLayout, ensure_topics
from tests.support.eostest import INPUT_SUBJECT, EostestTopics, eostest_codec

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 6


def bootstrap() -> str:
    return os.environ.get("HOSTGATE_BOOTSTRAP") or BrokerConfig.from_env().bootstrap


def fresh_topics(label: str) -> EostestTopics:
    return EostestTopics(f"eostest.{label}-{uuid.uuid4().hex[:8]}")


async def create_topics(topics: EostestTopics, partitions: int = PARTITIONS,
                        replication: int | None = 1) -> None:
    """The test stage's topics, through the product's ``ensure_topics`` (which alone creates
    only the product's). ``replication=None``: as the cluster calls for (RF 3 on three)."""
    await ensure_topics(bootstrap(), specs=topics.specs(),
                        layout=TopicLayout(partitions, replication))


async def delete_topics(topics: EostestTopics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    await admin.start()
    try:
        await admin.delete_topics([topics.input, topics.output, topics.dlq, topics.changelog])
    except Exception as exc:  # cleanup only; a leftover topic does not affect other runs
        print(f"could not delete test topics: {exc}", file=sys.stderr)
    finally:
        await admin.close()


def make_inputs(n: int, keys: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (key, seq) pairs over ``keys`` keys; seq counts per key from 1."""
    import random

    rng = random.Random(seed)
    seqs: Counter[str] = Counter()
    out = []
    for _ in range(n):
        key = f"host-{rng.randrange(keys):04d}"
        seqs[key] += 1
        out.append((key, seqs[key]))
    return out


async def produce_inputs(topic: str, items: Iterable[tuple[str, int]],
                         codec: Codec | None = None) -> None:
    codec = codec or eostest_codec()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(), enable_idempotence=True,
                                linger_ms=5)
    await producer.start()
    try:
        futs = [await producer.send(topic, codec.encode(INPUT_SUBJECT, {"key": k, "seq": s}),
                                    key=k.encode()) for k, s in items]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def produce_raw(topic: str, items: Iterable[tuple[bytes | None, bytes,
                                                       list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(), enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers in items:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


async def partition_count(topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    await admin.start()
    try:
        (doc,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert doc["partitions"], f"topic {topic} does not exist"
    return len(doc["partitions"])


async def read_committed(topic: str, timeout_s: float = 30.0) -> list[Rec]:
    """Every committed record of ``topic`` up to its last stable offset now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(), isolation_level="read_committed",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(await partition_count(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Rec] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for recs in batch.values():
                out.extend(Rec(r.topic, r.partition, r.offset, r.key, r.value,
                               tuple(r.headers or ())) for r in recs)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        assert not pending, f"could not read {topic} to its end within {timeout_s}s"
        return out
    finally:
        await consumer.stop()


async def group_lag(group: str, topic: str) -> int:
    """Sum over partitions of (end offset - committed offset of ``group``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(), isolation_level="read_committed")
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(topic, p) for p in range(await partition_count(topic))]
        if not committed:
            raise LookupError(f"group {group} has committed nothing yet")
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += ends[tp] - done
        return lag
    finally:
        await consumer.stop()
        await admin.close()


class WorkerProcess:
    """One eostest worker (``python -m tests.support.eostest``) as a real separate process.
    ``group`` is the configured ``HOSTGATE_GROUP``; ``self.group`` the consumer group the
    worker uses (inside the topics' namespace)."""

    def __init__(self, topics: EostestTopics, group: str, log_dir: Path, name: str,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.topics, self.name = topics, name
        self.configured_group, self.group = group, topics.topics.name(group)
        self.log_path = log_dir / f"{name}.log"
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "HOSTGATE_TOPIC_NAMESPACE": self.topics.namespace,
               "HOSTGATE_GROUP": self.configured_group, "HOSTGATE_BOOTSTRAP": bootstrap(),
               "HOSTGATE_SESSION_TIMEOUT_MS": "6000", **self.extra_env}
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.eostest"], cwd=REPO, env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)  # a stopped process dies all the same
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: the whole process halts (no heartbeats), as in a long GC or VM pause."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: it resumes where it stopped, unaware of the time that passed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def check_exactly_once(topics: EostestTopics, inputs: list[Rec], outputs: list[Rec],
                       codec: Codec) -> dict[str, int]:
    """Assert exactly one output per input and exact per-key counters; return a summary."""
    want = {(r.topic, r.partition, r.offset): r for r in inputs}
    seen: Counter[tuple[str, int, int]] = Counter()
    per_key: dict[str, list[int]] = defaultdict(list)
    for rec in outputs:
        assert rec.value is not None
        out = codec.decode(rec.value, expected={"hostgate.test.TestOutput"}).record
        c = out["input"]
        seen[(c["topic"], c["partition"], c["offset"])] += 1
        per_key[out["key"]].append(out["counter_after"])
        ids = [v for k, v in rec.headers if k == "hg-id"]
        assert ids == [f"eostest:{c['topic']}:{c['partition']}:{c['offset']}".encode()]
    dupes = {k: v for k, v in seen.items() if v > 1}
    missing = set(want) - set(seen)
    extra = set(seen) - set(want)
    assert not dupes, f"{len(dupes)} inputs have more than one output, e.g. {list(dupes)[:5]}"
    assert not missing, f"{len(missing)} inputs have no output, e.g. {sorted(missing)[:5]}"
    assert not extra, f"outputs for unknown inputs: {sorted(extra)[:5]}"
    expected_counts = Counter(codec.decode(r.value or b"").record["key"] for r in inputs)
    for key, counters in per_key.items():
        assert sorted(counters) == list(range(1, expected_counts[key] + 1)), (
            f"key {key}: counter_after values {sorted(counters)[:20]}... are not "
            f"1..{expected_counts[key]}")
    assert set(per_key) == set(expected_counts)
    return {"inputs": len(inputs), "outputs": len(outputs), "keys": len(per_key)}


async def final_counters(topics: EostestTopics, codec: Codec) -> dict[str, int]:
    """The newest committed counter per key from the changelog."""
    result: dict[str, int] = {}
    for rec in sorted(await read_committed(topics.changelog), key=lambda r: r.offset):
        assert rec.key is not None and rec.value is not None
        result[rec.key.decode()] = int(codec.decode(rec.value).record["count"])
    return result


async def wait_until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


async def drain_and_check(topics: EostestTopics, workers: list[WorkerProcess], codec: Codec,
                          timeout_s: float = 180) -> dict[str, int]:
    """Wait until the group has no lag, stop the workers (each must exit 0 on SIGTERM), then
    assert exactly once: one output per input, counters 1..n per key, final changelog
    counters equal to the inputs per key. Returns :func:`check_exactly_once`'s summary."""
    group = workers[0].group

    async def drained() -> bool:
        try:
            return await group_lag(group, topics.input) == 0
        except LookupError:
            return False

    await wait_until(drained, timeout_s, "consumer-group lag 0", poll_s=1.0)
    for w in workers:
        if w.alive():
            assert w.terminate() == 0, f"{w.name} did not exit 0 on SIGTERM"
    inputs = await read_committed(topics.input)
    outputs = await read_committed(topics.output)
    summary = check_exactly_once(topics, inputs, outputs, codec)
    expected: Counter[str] = Counter(codec.decode(r.value or b"").record["key"] for r in inputs)
    assert await final_counters(topics, codec) == dict(expected)
    return summary


async def committed_inputs(group: str, topic: str) -> int:
    """Input records ``group`` has committed so far (sum of committed offsets; 0 if none or
    the cluster does not answer)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(), request_timeout_ms=5000)
    try:
        await admin.start()
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:
        return 0
    finally:
        await admin.close()
    return sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset > 0)
