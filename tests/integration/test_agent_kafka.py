"""Enrolment and attestation through Kafka: real broker, real swtpm hosts, and the collector as a
real separate process (``hostgate run collector``) with a policy in force on its policies topic:
the agent signs its challenge requests and quotes exactly the coverage the policy asks for.

Every run uses its own topic namespace (``HOSTGATE_TOPIC_NAMESPACE``), consumer group and host
ids, so runs never see each other's records; everything started here is stopped here.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.agent.client import (
    ActivationFailed,
    AgentClient,
    AgentTimeout,
    ClientConfig,
    EnrollmentRefused,
)
from services.agent.fleet import Fleet, HostSpec
from services.agent.hooks import hold_past_expiry, replay_previous_nonce
from services.agent.hosts import SimulatedHostSide
from services.runtime.codec import Codec
from services.runtime.topics import TopicLayout, Topics, TopicSpec, ensure_topics
from services.tpm.keys import decode_public
from services.tpm.quote import verify_quote
from services.verifier.policy_in_force import published_record
from tests.integration import runtime_support as rs

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm]
REPO = Path(__file__).resolve().parents[2]
NONCE_TTL_S = 4
TABLES = ("enrollments", "challenges", "nonces", "hosts", "ek_bindings")
POLICY_ID = "agent-kafka"
# Secure Boot reads PCR 7 and the kernel command line PCRs 8, 9 and 12, in both banks the policy
# requires: the challenge asks for sha1 and sha256, each with PCRs 0-9 and 12.
POLICY = f"""\
apiVersion: hostgate/v1
kind: AttestationPolicy
metadata:
  id: {POLICY_ID}
  version: 1
spec:
  banks:
    require: [sha1, sha256]
  secureBoot:
    enabled: true
  bootChain:
    kernelCmdline:
      forbidden: ["init=/bin/sh"]
"""
COVERAGE = tuple((bank, (*range(10), 12)) for bank in ("sha1", "sha256"))


def _specs(topics: Topics) -> list[TopicSpec]:
    return [TopicSpec(topics.requests, "t", broker_timestamps=True),
            TopicSpec(topics.evidence, "t", broker_timestamps=True),
            TopicSpec(topics.challenges, "t"), TopicSpec(topics.collected, "t"),
            TopicSpec(topics.rejections, "t"), TopicSpec(topics.dlq("collector"), "t"),
            TopicSpec(topics.identity, "t"), TopicSpec(topics.identity_events, "t"),
            TopicSpec(topics.ek_bindings, "t"), TopicSpec(topics.ek_grants, "t"),
            TopicSpec(topics.policies, "t", compacted=True),
            *(TopicSpec(topics.changelog("collector", t), "t", compacted=True) for t in TABLES)]


class Collector:
    """``hostgate run collector`` as a separate process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run",
                                          "collector"], cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class Env:
    topics: Topics
    fleet: Fleet
    collector: Collector
    bootstrap: str
    codec: Codec

    def client(self, host_id: str, *, timeout_s: float = 60, **kw: Any) -> AgentClient:
        side = SimulatedHostSide(self.fleet.host(host_id), **kw)
        return AgentClient(side, ClientConfig(self.bootstrap, self.topics, timeout_s=timeout_s),
                           codec=self.codec)

    async def records(self, topic: str, subject: str) -> list[tuple[rs.Rec, dict[str, Any]]]:
        out = []
        for r in await rs.read_committed(topic):
            assert r.value is not None
            out.append((r, self.codec.decode(r.value, expected={subject}).record))
        return out

    async def rejections(self, host_id: str) -> list[dict[str, Any]]:
        recs = await self.records(self.topics.rejections, "hostgate.IntakeRejected")
        return [rec for _, rec in recs if rec["host_id"] == host_id]

    async def wait_rejection(self, host_id: str, reason: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        async def seen() -> bool:
            found[:] = [r for r in await self.rejections(host_id) if r["reason"] == reason]
            return bool(found)

        await rs.wait_until(seen, 60, f"{reason} rejection for {host_id}")
        return found[0]

    async def collected(self, host_id: str) -> list[dict[str, Any]]:
        recs = await self.records(self.topics.collected, "hostgate.EvidenceCollected")
        return [rec for _, rec in recs if rec["evidence"]["host_id"] == host_id]


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:6]
    specs = [HostSpec(f"it-{tag}-honest", "ubuntu-24.04-shim", None, 1),
             HostSpec(f"it-{tag}-wrongak", "ubuntu-24.04-shim", "wrong_ak", 2),
             HostSpec(f"it-{tag}-foreign", "ubuntu-24.04-shim", None, 3)]
    with Fleet(tmp_path / "fleet", specs, workers=2) as f:
        yield f


@pytest.fixture()
async def env(tmp_path: Path, fleet: Fleet, kafka_bootstrap: str) -> AsyncIterator[Env]:
    topics = Topics(f"it{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka_bootstrap, specs=_specs(topics), layout=TopicLayout(3, 1))
    codec = Codec.load()
    policy = published_record(POLICY, version=1, published_at_ms=1, author="tests")
    await rs.produce_raw(topics.policies, [(POLICY_ID.encode(), codec.encode(
        "hostgate.PolicyPublished", policy), [])])
    ca_dir = tmp_path / "ek-ca"
    ca_dir.mkdir()
    (ca_dir / "root.pem").write_bytes(fleet.ek_ca_root_pem())
    (ca_dir / "intermediate.pem").write_bytes(fleet.ek_ca_intermediate_pem())
    proc_env = {**os.environ, "HOSTGATE_BOOTSTRAP": kafka_bootstrap,
                "HOSTGATE_TOPIC_NAMESPACE": topics.namespace,
                "HOSTGATE_GROUP": f"hostgate.collector.{topics.namespace}",
                "HOSTGATE_EK_CA_DIR": str(ca_dir), "HOSTGATE_NONCE_TTL_S": str(NONCE_TTL_S),
                "HOSTGATE_POLICY_ID": POLICY_ID,
                "HOSTGATE_SESSION_TIMEOUT_MS": "6000", "HOSTGATE_BATCH_MAX_MS": "300"}
    collector = Collector(proc_env, tmp_path / "collector.log")
    collector.start()
    try:
        yield Env(topics, fleet, collector, kafka_bootstrap, codec)
    finally:
        collector.kill()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([s.name for s in _specs(topics)])
        except Exception as exc:  # cleanup only
            print(f"could not delete test topics: {exc}", file=sys.stderr)
        finally:
            await admin.close()


def _host(env: Env, suffix: str) -> str:
    return next(h.host_id for h in env.fleet if h.host_id.endswith(suffix))


async def test_enrol_attest_and_intake_refusals(env: Env) -> None:
    honest, wrongak, foreign = (_host(env, s) for s in ("honest", "wrongak", "foreign"))

    # 1. Honest host: credential activation through Kafka, then evidence is collected.
    async with env.client(honest) as client:
        enrolled = await client.enroll()
        first = await client.attest()
        await rs.wait_until(lambda: _has_collected(env, honest, 1), 60, "EvidenceCollected")
        (got,) = await env.collected(honest)
        assert got["evidence"]["evidence_id"] == first.evidence_id
        assert got["source"] == {"topic": env.topics.evidence, "partition": first.partition,
                                 "offset": first.offset}
        host = env.fleet.host(honest)
        assert got["ak_public"] == host.ak_public and got["ek"]["chain_verified"] is True
        assert got["ek"]["ek_public"] == host.ek_public
        assert got["previous_counters"] is None
        ev = got["evidence"]
        values: dict[str, dict[int, bytes]] = {}
        for v in ev["pcr_values"]:
            values.setdefault(v["bank"].lower(), {})[v["pcr"]] = v["value"]
        verified = verify_quote(got["ak_public"], ev["quote_attest"], ev["quote_signature"],
                                nonce=first.nonce, pcr_values=values)
        # Exactly the policy's coverage, bank by bank; the values reported are those quoted.
        assert verified.selection == COVERAGE
        assert {b: tuple(sorted(v)) for b, v in values.items()} == dict(COVERAGE)
        assert enrolled.challenge_id.startswith("act-")
        # The collector confirmed the enrolment to the agent, naming the AK it enrolled.
        assert enrolled.result == "ENROLLED"
        assert enrolled.ak_name == decode_public(host.ak_public).name
        decoded = [env.codec.decode(r.value) for r in
                   await rs.read_committed(env.topics.challenges) if r.value is not None]
        results = [d.record for d in decoded if d.subject == "hostgate.EnrollmentResult"
                   and d.record["host_id"] == honest]
        assert [(r["result"], r["request_id"]) for r in results] == \
            [("ENROLLED", enrolled.proof_request_id)]

        # 2. replayed_nonce: the previous round's challenge and nonce, quoted anew.
        client.hook = replay_previous_nonce
        await client.attest()
        replay = await env.wait_rejection(honest, "REPLAYED_NONCE")
        assert "already used by evidence" in replay["detail"]

        # 3. stale_quote: quoted at once, sent after the nonce expired.
        client.hook = hold_past_expiry
        await client.attest()
        stale = await env.wait_rejection(honest, "STALE_NONCE")
        assert "expired" in stale["detail"]

        # The second honest round carries the first round's quote counters.
        client.hook = None
        await client.attest()
        await rs.wait_until(lambda: _has_collected(env, honest, 2), 60, "2nd EvidenceCollected")
        second = (await env.collected(honest))[1]
        assert second["previous_counters"] is not None
        assert second["previous_counters"]["reset_count"] >= 0

    # 4. wrong_ak: enrols with its real AK, then quotes with a never-enrolled one.
    async with env.client(wrongak) as client:
        await client.enroll()
        await client.attest()
        bad = await env.wait_rejection(wrongak, "BAD_SIGNATURE")
        assert "enrolled AK" in bad["detail"]
    assert await env.collected(wrongak) == []

    # 5. An AK that is not in the EK's TPM: this TPM cannot activate; a guess is refused and
    #    the host is never enrolled.
    async with env.client(foreign, timeout_s=15,
                          ak_public=env.fleet.host(honest).ak_public) as client:
        with pytest.raises(ActivationFailed) as failed:
            await client.enroll()
        with pytest.raises(EnrollmentRefused) as refused:
            await client.prove(failed.value.challenge_id, secrets.token_bytes(32))
        assert refused.value.reason == "FAILED_ACTIVATION"
        assert refused.value.challenge_id == failed.value.challenge_id
        assert "FAILED_ACTIVATION" in str(refused.value) and "\n" not in str(refused.value)
        await env.wait_rejection(foreign, "FAILED_ACTIVATION")
        with pytest.raises(AgentTimeout):
            await client.attest()
        await env.wait_rejection(foreign, "UNENROLLED_AK")
    assert await env.collected(foreign) == []

    # Nothing went to the DLQ, and the collector shuts down cleanly.
    assert await rs.read_committed(env.topics.dlq("collector")) == []
    assert env.collector.terminate() == 0, env.collector.log()


@pytest.mark.slow
async def test_collector_sigkill_mid_run_gives_no_duplicate(env: Env) -> None:
    honest = _host(env, "honest")
    async with env.client(honest) as client:
        await client.enroll()
        first = await client.attest()
        env.collector.kill()  # the evidence is on the topic; its transaction may be open
        env.collector.start()
        await rs.wait_until(lambda: _has_collected(env, honest, 1), 90, "EvidenceCollected")
        second = await client.attest()
        await rs.wait_until(lambda: _has_collected(env, honest, 2), 90, "2nd EvidenceCollected")
        env.collector.kill()
        env.collector.start()
        await asyncio.sleep(8)  # the restarted worker re-reads from its committed offsets
    ids = [c["evidence"]["evidence_id"] for c in await env.collected(honest)]
    assert sorted(ids) == sorted([first.evidence_id, second.evidence_id]), ids
    assert env.collector.terminate() == 0, env.collector.log()


async def _has_collected(env: Env, host_id: str, n: int) -> bool:
    return len(await env.collected(host_id)) >= n


async def test_cli_enroll_and_attest_with_a_real_tpm(env: Env, tmp_path: Path) -> None:
    """``hostgate agent enroll`` / ``attest`` as processes, on a TPM with an EK certificate
    from the trusted CA and no fleet machinery around it."""
    from services.agent.swtpm import SwtpmInstance, provision

    state = tmp_path / "cli-tpm"
    provision(state, env.fleet.ca)
    host_id = f"it-cli-{uuid.uuid4().hex[:6]}"
    boot_log = tmp_path / "boot.log"
    boot_log.write_bytes(b"\x00" * 32)
    with SwtpmInstance(state) as tpm:
        base = [sys.executable, "-m", "services.cli", "agent"]
        opts = ["--tcti", tpm.tcti, "--state-file", str(tmp_path / "agent.json"), "--host-id",
                host_id, "--bootstrap", env.bootstrap, "--topic-namespace",
                env.topics.namespace, "--json"]
        for cmd in (["enroll", *opts], ["attest", *opts, "--boot-log", str(boot_log)]):
            done = await asyncio.to_thread(subprocess.run, [*base, *cmd], cwd=REPO,
                                           capture_output=True, timeout=120)
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            if cmd[0] == "enroll":
                enrolled = json.loads(done.stdout)["enroll"]
                assert enrolled["result"] == "ENROLLED" and len(enrolled["ak_name"]) == 68
        await rs.wait_until(lambda: _has_collected(env, host_id, 1), 60, "EvidenceCollected")
    (got,) = await env.collected(host_id)
    assert got["evidence"]["boot_log"] == b"\x00" * 32 and got["ek"]["chain_verified"]
    assert await env.rejections(host_id) == []
