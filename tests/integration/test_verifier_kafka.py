"""The verifier stage as a real process on the real broker, with real swtpm evidence.

``hostgate run verifier`` consumes ``EvidenceCollected`` records (built from simulator quotes
directly, as the collector would), reads the policy from the compacted policies topic through
its global table, and writes verdicts exactly once — also when SIGKILLed mid-stream and
restarted (read_committed: one verdict per verdict id, and every evidence has one).
Every test uses its own topic namespace, so runs never see each other's records.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from services.runtime.codec import Codec
from services.runtime.topics import TopicLayout, Topics, TopicSpec, ensure_topics
from services.verifier import reasons
from services.verifier.audit_replay import PolicyIndex
from services.verifier.cli_audit_replay import read_recorded
from services.verifier.policy_in_force import load_in_force, published_record
from services.verifier.publish import PublishRefused, publish
from services.wire.subjects import POLICY_PUBLISHED
from tests.integration.runtime_support import REPO, bootstrap, read_committed
from tests.unit.verifier_support import SimFleet, collected_for, sim_fleet

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm]
PARTITIONS = 3
POLICY_ID = "fleet-baseline"
TAMPERED = ("forged_log", "secure_boot_off", "pcr_bank_downgrade")
EXPECT = {"forged_log": reasons.REPLAY_PCR_MISMATCH, "secure_boot_off": "policy.secureboot.enabled",
          "pcr_bank_downgrade": reasons.BANKS_DOWNGRADE}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[SimFleet]:
    with sim_fleet(tmp_path_factory.mktemp("vkfleet"), tampered=TAMPERED,
                   clean_per_image=1) as s:
        yield s


async def _create(topics: Topics) -> None:
    specs = [TopicSpec(topics.collected, "test collected"),
             TopicSpec(topics.verdicts, "test verdicts"),
             TopicSpec(topics.policies, "test policies", compacted=True),
             TopicSpec(topics.policy_history, "test policy history"),
             TopicSpec(topics.dlq("verifier"), "test dlq")]
    await ensure_topics(bootstrap(), specs=specs, layout=TopicLayout(PARTITIONS, 1))


async def _delete(topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    await admin.start()
    try:
        await admin.delete_topics([topics.collected, topics.verdicts, topics.policies,
                                   topics.policy_history, topics.dlq("verifier")])
    except Exception as exc:  # cleanup only
        print(f"could not delete test topics: {exc}", file=sys.stderr)
    finally:
        await admin.close()


async def _produce(topic: str, records: list[dict[str, Any]], codec: Codec) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(), enable_idempotence=True,
                                linger_ms=5)
    await producer.start()
    try:
        futs = [await producer.send(topic, codec.encode("hostgate.EvidenceCollected", r),
                                    key=r["evidence"]["host_id"].encode()) for r in records]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def _records(sim: SimFleet, rounds: int) -> tuple[list[dict[str, Any]], dict[bytes, str]]:
    """``rounds`` quotes of every host; returns records and evidence digest -> tamper name."""
    out, kinds = [], {}
    for r in range(rounds):
        for i, h in enumerate(sim.fleet):
            rec = collected_for(h, round_no=r, offset=r * 100 + i)
            out.append(rec)
            kinds[rec["evidence_digest"]] = h.tamper or "clean"
    return out, kinds


class VerifierProcess:
    """``hostgate run verifier`` as a separate process, logging to a file."""

    def __init__(self, topics: Topics, group: str, log_path: Path,
                 batch_max_records: int = 500) -> None:
        self.env = {**os.environ, "HOSTGATE_TOPIC_NAMESPACE": topics.namespace,
                    "HOSTGATE_POLICY_ID": POLICY_ID, "HOSTGATE_GROUP": group,
                    "HOSTGATE_BOOTSTRAP": bootstrap(), "HOSTGATE_SESSION_TIMEOUT_MS": "6000",
                    "HOSTGATE_BATCH_MAX_RECORDS": str(batch_max_records)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "verifier"],
                                         cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def _wait_for(topic: str, count: int, proc: VerifierProcess, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    recs: list[Any] = []
    while time.monotonic() < deadline:
        assert proc.alive(), f"verifier exited early:\n{proc.log()[-3000:]}"
        recs = await read_committed(topic)
        if len(recs) >= count:
            return recs
        await asyncio.sleep(0.5)
    raise AssertionError(f"{len(recs)}/{count} verdicts after {timeout_s}s:\n{proc.log()[-3000:]}")


def _check_exactly_once(verdicts: list[Any], kinds: dict[bytes, str], codec: Codec) -> None:
    ids: Counter[str] = Counter()
    per_evidence: Counter[bytes] = Counter()
    for rec in verdicts:
        v = codec.decode(rec.value, expected={"hostgate.Verdict"}).record
        ids[v["verdict_id"]] += 1
        per_evidence[v["evidence_digest"]] += 1
        assert [val for k, val in rec.headers if k == "hg-id"] == [v["verdict_id"].encode()]
        assert rec.key == v["host_id"].encode()
        kind = kinds[v["evidence_digest"]]
        if kind == "clean":
            assert v["result"] == "PASS", v["failed_rules"]
        else:
            assert v["result"] == "FAIL"
            assert EXPECT[kind] in {f["rule_id"] for f in v["failed_rules"]}, v["failed_rules"]
        assert v["policy_id"] == POLICY_ID and v["policy_version"] == 1
    dupes = [k for k, n in ids.items() if n > 1]
    assert not dupes, f"{len(dupes)} verdict ids appear more than once"
    assert set(per_evidence) == set(kinds), "some evidence has no verdict"
    assert max(per_evidence.values()) == 1


def test_verdicts_exactly_once_with_policy_from_the_global_table(sim: SimFleet,
                                                                  tmp_path: Path) -> None:
    topics = Topics(f"vt{uuid.uuid4().hex[:8]}")
    codec = Codec.load()
    records, kinds = _records(sim, rounds=3)

    async def scenario() -> None:
        await _create(topics)
        proc = VerifierProcess(topics, f"hostgate.verifier.{topics.namespace}",
                               tmp_path / "verifier.log")
        try:
            await publish(sim.policy_text, bootstrap=bootstrap(), version=1, author="tests",
                          topics=topics, first_only=True)
            with pytest.raises(PublishRefused, match="not newer"):
                await publish(sim.policy_text, bootstrap=bootstrap(), version=1,
                              author="tests", topics=topics)
            await _produce(topics.collected, records, codec)
            proc.start()
            verdicts = await _wait_for(topics.verdicts, len(records), proc, 120)
            await asyncio.sleep(2)  # anything extra would show up now
            verdicts = await read_committed(topics.verdicts)
            assert len(verdicts) == len(records)
            _check_exactly_once(verdicts, kinds, codec)
            assert await read_committed(topics.dlq("verifier")) == []
            assert proc.stop() == 0
            assert "global_table.loaded" in proc.log()
        finally:
            if proc.alive():
                proc.kill()
            await _delete(topics)

    asyncio.run(scenario())


def test_replay_finds_superseded_policy_versions_on_the_history_topic(sim: SimFleet) -> None:
    """Kafka compaction leaves only the newest version of a policy on ``attest.policies.v1``,
    while verdicts naming older versions are kept forever. ``publish`` writes every version to
    the history topic too, and replay indexes policies from it."""
    topics = Topics(f"vh{uuid.uuid4().hex[:8]}")
    codec = Codec.load()
    v2_text = sim.policy_text.replace('description: "', 'description: "second version; ', 1)
    assert v2_text != sim.policy_text

    async def scenario() -> None:
        await _create(topics)
        try:
            # Version 1 as compaction would leave it: on the history topic only.
            v1 = published_record(sim.policy_text, version=1, author="tests",
                                  published_at_ms=1_000)
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap())
            await producer.start()
            try:
                await producer.send_and_wait(topics.policy_history,
                                             codec.encode(POLICY_PUBLISHED, v1),
                                             key=POLICY_ID.encode())
            finally:
                await producer.stop()
            done = await publish(v2_text, bootstrap=bootstrap(), version=2, author="tests",
                                 topics=topics)
            assert (done.topic, done.history_topic) == (topics.policies, topics.policy_history)
            in_force = await read_committed(topics.policies)
            history = await read_committed(topics.policy_history)
            assert [r.value for r in in_force] == [history[-1].value]  # the same record
            assert [codec.decode(r.value).record["version"] for r in history] == [1, 2]

            recorded = await read_recorded(bootstrap(), namespace=topics.namespace)
            index = PolicyIndex.build(p.record for p in recorded.policies)
            digests = {load_in_force(codec.decode(r.value).record).digest for r in history}
            assert len(digests) == 2 and set(index.by_digest) == digests
            assert index.unusable == ()
        finally:
            await _delete(topics)

    asyncio.run(scenario())


@pytest.mark.slow
def test_sigkill_mid_stream_never_yields_two_verdicts(sim: SimFleet, tmp_path: Path) -> None:
    topics = Topics(f"vk{uuid.uuid4().hex[:8]}")
    codec = Codec.load()
    records, kinds = _records(sim, rounds=40)  # 40 x 6 hosts = 240 evidences

    async def scenario() -> None:
        await _create(topics)
        group = f"hostgate.verifier.{topics.namespace}"
        proc = VerifierProcess(topics, group, tmp_path / "verifier.log", batch_max_records=10)
        try:
            await publish(sim.policy_text, bootstrap=bootstrap(), version=1, author="tests",
                          topics=topics)
            await _produce(topics.collected, records, codec)
            proc.start()
            kills = 0
            deadline = time.monotonic() + 120
            while kills < 2 and time.monotonic() < deadline:
                done = len(await read_committed(topics.verdicts))
                if done >= 10 * (kills + 1) and done < len(records):
                    proc.kill()  # SIGKILL: no shutdown, a transaction may be open
                    kills += 1
                    proc.start()
                await asyncio.sleep(0.2)
            assert kills >= 1, "the verifier finished before it could be killed"
            verdicts = await _wait_for(topics.verdicts, len(records), proc, 180)
            await asyncio.sleep(3)
            verdicts = await read_committed(topics.verdicts)
            _check_exactly_once(verdicts, kinds, codec)
            assert len(verdicts) == len(records)
            assert proc.stop() == 0
        finally:
            if proc.alive():
                proc.kill()
            await _delete(topics)

    asyncio.run(scenario())
