"""Attacker-side helpers for the identity tests: a namespaced collector deployment on the real
broker (one or more ``hostgate run collector`` processes), real swtpm hosts, an agent whose
records go to a partition of the attacker's choice, and read_committed readers.

The attackers of the soundness issue: (a) a host with a real, certified TPM and root, which can
send anything a host can send but cannot forge its AK's signature; (b) any other host, which
shares the agents' Kafka principal, so it may write any key to any partition of the request and
evidence topics and read every challenge; (c) anyone who can write to those topics.

The oracle for "the partition a key belongs to" is aiokafka's own ``DefaultPartitioner`` (what
every hostgate producer uses), never the code under test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from services.agent.client import AgentClient, AgentTimeout, ClientConfig
from services.agent.fleet import Fleet, HostSpec, SimulatedHost
from services.agent.hosts import SimulatedHostSide
from services.runtime.codec import Codec
from services.runtime.topics import TopicLayout, Topics, TopicSpec, ensure_topics
from services.tpm.keys import decode_public
from tests.integration import runtime_support as rs

REPO = Path(__file__).resolve().parents[2]
IMAGE = "ubuntu-24.04-shim"
TABLES = ("enrollments", "challenges", "nonces", "hosts", "ek_bindings")
CODEC = Codec.load()


def oracle_partition(key: str, partitions: int) -> int:
    """Where Kafka's default partitioner (aiokafka's, the Java client's) puts ``key``."""
    parts = list(range(partitions))
    return int(DefaultPartitioner()(key.encode("utf-8"), parts, parts))


def host_id_on(partition: int, partitions: int, label: str) -> str:
    """A fresh host id whose key maps to ``partition``."""
    while True:
        candidate = f"{label}-{uuid.uuid4().hex[:8]}"
        if oracle_partition(candidate, partitions) == partition:
            return candidate


def ek_digest(ek_public: bytes) -> str:
    """SHA-256 (hex) of the EK's SubjectPublicKeyInfo: the EK registry's key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = decode_public(ek_public).crypto_key()
    return hashlib.sha256(key.public_bytes(Encoding.DER,
                                           PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _topic(topics: Topics, name: str, fallback: str) -> str:
    # The identity topics are new; reading them by attribute with a namespaced fallback lets
    # these tests run (and fail on their assertions) against a collector that predates them.
    value = getattr(topics, name, None)
    if isinstance(value, str):
        return value
    return f"{topics.namespace}.{fallback}"


def collector_specs(topics: Topics) -> list[TopicSpec]:
    """Every topic a namespaced collector (and its identity registry) uses."""
    return [TopicSpec(topics.requests, "t", broker_timestamps=True),
            TopicSpec(topics.evidence, "t", broker_timestamps=True),
            TopicSpec(topics.challenges, "t"), TopicSpec(topics.collected, "t"),
            TopicSpec(topics.rejections, "t"), TopicSpec(topics.dlq("collector"), "t"),
            TopicSpec(identity_topic(topics), "t"),
            TopicSpec(identity_events_topic(topics), "t"),
            TopicSpec(_topic(topics, "ek_bindings", "collector.ek-bindings.v1"), "t"),
            TopicSpec(_topic(topics, "ek_grants", "collector.ek-grants.v1"), "t"),
            TopicSpec(_topic(topics, "policies", "attest.policies.v1"), "t", compacted=True),
            *(TopicSpec(topics.changelog("collector", t), "t", compacted=True) for t in TABLES)]


def identity_topic(topics: Topics) -> str:
    return _topic(topics, "identity", "attest.identity.v1")


def identity_events_topic(topics: Topics) -> str:
    return _topic(topics, "identity_events", "attest.identity.events.v1")


def ek_bindings_topic(topics: Topics) -> str:
    return _topic(topics, "ek_bindings", "collector.ek-bindings.v1")


class CollectorProcess:
    """``hostgate run collector`` as a separate process."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env, self.log_path = dict(env), log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run",
                                          "collector"], cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its partitions (until its session times out) and does
        nothing, so a record for it waits on the topic."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def terminate(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def assigned(self) -> list[int] | None:
        """The partitions of this worker's newest ``tasks.assigned`` log event."""
        found: list[int] | None = None
        for line in self.log().splitlines():
            if '"tasks.assigned"' not in line:
                continue
            try:
                found = [int(p) for p in json.loads(line).get("partitions", [])]
            except (ValueError, TypeError):
                continue
        return found


class RoutedClient(AgentClient):
    """An agent that writes its records to ``partition`` explicitly, whatever its key says:
    what any holder of the agents' principal can do."""

    def __init__(self, *args: Any, partition: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.partition = partition

    async def _send(self, topic: str, subject: str, record: Mapping[str, Any]) -> Any:
        assert self._producer is not None
        value = self.codec.encode(subject, record)
        try:
            return await asyncio.wait_for(self._producer.send_and_wait(
                topic, value, key=self.host.host_id.encode(), partition=self.partition),
                self.config.timeout_s)
        except TimeoutError as exc:
            raise AgentTimeout(f"could not publish {subject}") from exc


class BorrowedSide(SimulatedHostSide):
    """A real swtpm host that claims another host id (its own EK, AK and TPM)."""

    def __init__(self, sim: SimulatedHost, host_id: str) -> None:
        super().__init__(sim)
        self._claimed = host_id

    @property
    def host_id(self) -> str:
        return self._claimed


@dataclass
class Deployment:
    """A namespaced collector deployment: topics, worker processes, the fleet."""

    topics: Topics
    fleet: Fleet
    workers: list[CollectorProcess]
    bootstrap: str
    partitions: int
    env: dict[str, str] = field(default_factory=dict)

    def sim(self, index: int) -> SimulatedHost:
        return self.fleet.hosts[index]

    def client(self, sim: SimulatedHost, host_id: str | None = None, *,
               partition: int | None = None, timeout_s: float = 60) -> AgentClient:
        side = SimulatedHostSide(sim) if host_id is None else BorrowedSide(sim, host_id)
        cfg = ClientConfig(self.bootstrap, self.topics, timeout_s=timeout_s)
        if partition is None:
            return AgentClient(side, cfg, codec=CODEC)
        return RoutedClient(side, cfg, codec=CODEC, partition=partition)

    async def records(self, topic: str) -> list[tuple[rs.Rec, str, dict[str, Any]]]:
        out = []
        for r in await rs.read_committed(topic):
            if r.value is None:
                continue
            decoded = CODEC.decode(r.value)
            out.append((r, decoded.subject, decoded.record))
        return out

    async def rejections(self, host_id: str, reason: str | None = None) -> list[dict[str, Any]]:
        return [rec for _, _, rec in await self.records(self.topics.rejections)
                if rec["host_id"] == host_id and (reason is None or rec["reason"] == reason)]

    async def wait_rejection(self, host_id: str, reason: str, count: int = 1,
                             timeout_s: float = 60) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []

        async def seen() -> bool:
            found[:] = await self.rejections(host_id, reason)
            return len(found) >= count

        await rs.wait_until(seen, timeout_s, f"{count} {reason} rejection(s) for {host_id}")
        return found

    async def collected(self, host_id: str) -> list[dict[str, Any]]:
        return [rec for _, _, rec in await self.records(self.topics.collected)
                if rec["evidence"]["host_id"] == host_id]

    async def results(self, host_id: str) -> list[dict[str, Any]]:
        return [rec for _, subject, rec in await self.records(self.topics.challenges)
                if subject == "hostgate.EnrollmentResult" and rec["host_id"] == host_id]

    async def challenges_for(self, host_id: str) -> list[dict[str, Any]]:
        return [rec for _, subject, rec in await self.records(self.topics.challenges)
                if subject == "hostgate.ActivationChallenge" and rec["host_id"] == host_id]

    async def table(self, table: str) -> dict[str, dict[str, Any] | None]:
        """The newest committed row of every key of a collector state table."""
        rows: dict[str, dict[str, Any] | None] = {}
        for r in sorted(await rs.read_committed(self.topics.changelog("collector", table)),
                        key=lambda r: (r.partition, r.offset)):
            assert r.key is not None
            rows[r.key.decode()] = None if r.value is None else CODEC.decode(r.value).record
        return rows

    async def produce(self, topic: str, key: str, subject: str, record: Mapping[str, Any],
                      partition: int | None = None) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(topic, CODEC.encode(subject, record),
                                         key=key.encode(), partition=partition)
        finally:
            await producer.stop()

    async def collected_count(self, host_id: str, n: int) -> bool:
        return len(await self.collected(host_id)) >= n

    async def wait_collected(self, host_id: str, n: int = 1, timeout_s: float = 60) -> None:
        await rs.wait_until(lambda: self.collected_count(host_id, n), timeout_s,
                            f"{n} EvidenceCollected for {host_id}")

    async def wait_assigned(self, timeout_s: float = 90) -> None:
        """Until every worker holds a non-empty, distinct set of partitions."""
        async def spread() -> bool:
            got = [w.assigned() for w in self.workers]
            if any(not g for g in got):
                return False
            flat = [p for g in got if g for p in g]
            return len(flat) == len(set(flat)) == self.partitions

        await rs.wait_until(spread, timeout_s, "every collector worker to own its partitions")

    def owner_of(self, partition: int) -> CollectorProcess:
        for w in self.workers:
            if partition in (w.assigned() or []):
                return w
        raise AssertionError(f"no collector worker owns partition {partition}")

    def logs(self) -> str:
        return "\n".join(f"--- worker {i}\n{w.log()[-3000:]}" for i, w in enumerate(self.workers))


@asynccontextmanager
async def deployment(tmp_path: Path, bootstrap: str, hosts: Sequence[str], *,
                     workers: int = 1, partitions: int = 2,
                     extra_env: Mapping[str, str] | None = None) -> AsyncIterator[Deployment]:
    """Topics under a fresh namespace, ``workers`` collector processes in one group, and a
    fleet of swtpm hosts named ``hosts``; everything is stopped and deleted afterwards."""
    topics = Topics(f"sec{uuid.uuid4().hex[:8]}")
    specs = collector_specs(topics)
    await ensure_topics(bootstrap, specs=specs, layout=TopicLayout(partitions, 1))
    with Fleet(tmp_path / "fleet", [HostSpec(h, IMAGE, None, i + 1)
                                    for i, h in enumerate(hosts)], workers=2) as fleet:
        ca_dir = tmp_path / "ek-ca"
        ca_dir.mkdir()
        (ca_dir / "root.pem").write_bytes(fleet.ek_ca_root_pem())
        (ca_dir / "intermediate.pem").write_bytes(fleet.ek_ca_intermediate_pem())
        env = {**os.environ, "HOSTGATE_BOOTSTRAP": bootstrap,
               "HOSTGATE_TOPIC_NAMESPACE": topics.namespace,
               "HOSTGATE_GROUP": f"hostgate.collector.{topics.namespace}",
               "HOSTGATE_EK_CA_DIR": str(ca_dir),
               # A task's initialisation (producer, restore, rewind of five inputs) runs
               # without heartbeats; on a loaded two-core machine it can exceed 6 s, and two
               # members would then evict each other forever.
               "HOSTGATE_SESSION_TIMEOUT_MS": "6000" if workers == 1 else "20000",
               "HOSTGATE_BATCH_MAX_MS": "300",
               # No policy is published: challenges fall back to the collector's default
               # coverage, which is all these tests need.
               "HOSTGATE_POLICY_ID": "identity-tests", **(extra_env or {})}
        procs = [CollectorProcess(env, tmp_path / f"collector-{i}.log") for i in range(workers)]
        for p in procs:
            p.start()
        dep = Deployment(topics, fleet, procs, bootstrap, partitions, env)
        try:
            yield dep
        except BaseException:
            print(dep.logs(), file=sys.stderr)
            raise
        finally:
            for p in procs:
                if p.alive():
                    assert p.proc is not None
                    p.proc.send_signal(signal.SIGCONT)
                p.kill()
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([s.name for s in specs])
            except Exception as exc:  # cleanup only
                print(f"could not delete test topics: {exc}", file=sys.stderr)
            finally:
                await admin.close()
