"""Unauthenticated input harms no one else: a challenge request counts only when the host's
enrolled AK signed it.

Anyone who can write to ``attest.requests.v1`` can name any host (the agents share one Kafka
principal). A ``ChallengeRequested`` must carry a TPM2_Quote by the named host's enrolled AK
whose extraData binds the host id and request id, made later (TPM clock) than the host's last
accepted request. Anything else is refused ``UNAUTHENTICATED`` and changes no state at all, so a
flood naming a host cannot use up its rate limit or its open-challenge slots, and a captured
request cannot be replayed.

Every signature here is made by swtpm. The core tests run the collector's ``decide`` with a
state view (``tests.unit.collector_support.Harness``); the broker test runs ``hostgate run
collector`` as a process with real agents.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.agent.client import AgentClient, ClientConfig
from services.agent.fleet import Fleet, HostSpec
from services.agent.hosts import SimulatedHostSide
from services.runtime.codec import Codec
from services.runtime.topics import TopicLayout, Topics, TopicSpec, ensure_topics
from services.tpm.quote import decode_attest
from services.verifier.policy_in_force import published_record
from tests.integration import runtime_support as rs
from tests.security.intake_support import (
    ASK,
    COLLECTED,
    EVIDENCE,
    NONCE,
    TpmLab,
    now_ms,
    tpm_lab,
)
from tests.unit.collector_support import Harness, only, rejection, request_digest_spec

REPO = Path(__file__).resolve().parents[2]
POLICY_ID = "auth-policy"
POLICY = f"""\
apiVersion: hostgate/v1
kind: AttestationPolicy
metadata:
  id: {POLICY_ID}
  version: 1
spec:
  secureBoot:
    enabled: true
"""
LIMITS = {"HOSTGATE_CHALLENGE_RATE": "3/60", "HOSTGATE_MAX_OPEN_CHALLENGES": "2",
          "HOSTGATE_POLICY_ID": POLICY_ID}


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[TpmLab]:
    with tpm_lab(tmp_path, ["victim", "other"]) as lab:
        yield lab


def _harness(lab: TpmLab) -> Harness:
    hx = lab.harness(LIMITS)
    hx.publish_policy(POLICY)
    lab.enrol(hx, "victim")
    lab.enrol(hx, "other")
    return hx


def _refused_without_a_trace(hx: Harness, record: dict[str, Any], what: str) -> str:
    """Feed ``record``; it must be refused UNAUTHENTICATED with no state change. Returns the
    detail."""
    before = hx.snapshot()
    decision = hx.feed(ASK, record, at_ms=now_ms())
    reason, detail = rejection(decision)
    assert reason == "UNAUTHENTICATED", (what, reason, detail)
    assert decision.state_updates == (), what
    assert hx.snapshot() == before, what
    return detail


def _attest_once(hx: Harness, lab: TpmLab, request_id: str) -> dict[str, Any]:
    host = lab.hosts["victim"]
    issued = only(hx.feed(ASK, host.ask(request_id), at_ms=now_ms()), NONCE)
    selection = [(s["bank"].lower(), list(s["pcrs"])) for s in issued["pcr_selection"]]
    quote = host.quote(bytes(issued["nonce"]), selection)
    return dict(only(hx.feed(EVIDENCE, host.evidence(issued, quote, evidence_id=request_id),
                             at_ms=now_ms()), COLLECTED))


def test_an_unauthenticated_flood_changes_nothing_and_the_host_still_attests(
        lab: TpmLab) -> None:
    hx = _harness(lab)
    victim, other = lab.hosts["victim"], lab.hosts["other"]
    never_enrolled = victim.tpm.create_ak("ecc", remember=False)
    good_attest, _ = victim.sign_binding("victim", "x")
    _, other_signature = victim.sign_binding("victim", "y")
    flood: dict[str, Callable[[str], dict[str, Any]]] = {
        "no signature (anyone on the topic)": lambda rid: victim.ask(rid, auth=(None, None)),
        "garbage": lambda rid: victim.ask(rid, auth=(b"\x00\x01garbage", b"\x00\x14junk")),
        "another host's certified TPM": lambda rid: victim.ask(rid, signed_by=other),
        "a key of the host's TPM never enrolled": lambda rid: victim.ask(rid, ak=never_enrolled),
        "the host's AK, for another request": lambda rid: victim.ask(
            rid, bound_to=("victim", f"{rid}-other")),
        "the host's AK, for another host": lambda rid: victim.ask(rid, bound_to=("other", rid)),
        "a signature over other bytes": lambda rid: victim.ask(
            rid, auth=(good_attest, other_signature)),
        "only half of the proof": lambda rid: victim.ask(rid, auth=(good_attest, None)),
    }
    for i, (what, make) in enumerate(flood.items()):
        for n in range(3):  # more than the rate limit (3) and the open-challenge bound (2)
            _refused_without_a_trace(hx, make(f"flood-{i}-{n}"), what)
    # The host was not harmed: it gets nonces up to its own limits, and its evidence passes.
    collected = _attest_once(hx, lab, "honest-1")
    assert collected["evidence"]["host_id"] == "victim"
    _attest_once(hx, lab, "honest-2")


def test_a_replayed_authenticated_request_is_refused_and_changes_nothing(lab: TpmLab) -> None:
    hx = _harness(lab)
    victim = lab.hosts["victim"]
    earlier = victim.ask("req-0")  # signed first, delivered last
    first = victim.ask("req-1")
    only(hx.feed(ASK, first, at_ms=now_ms()), NONCE)
    detail = _refused_without_a_trace(hx, first, "the same request again")
    assert "request" in detail
    _refused_without_a_trace(hx, earlier, "a request signed before the last accepted one")
    _refused_without_a_trace(hx, {**first, "request_id": "req-1-again"},
                             "a captured signature under a new request id")
    # A new request, signed now, still works.
    only(hx.feed(ASK, victim.ask("req-2"), at_ms=now_ms()), NONCE)


# -- through the broker: the real collector worker, real agents -------------------------------

def _specs(topics: Topics) -> list[TopicSpec]:
    """Every declared pipeline and collector topic, under the run's namespace (with the
    declared settings: broker timestamps on the inputs, compaction of changelogs)."""
    keep = tuple(topics.name(p) for p in ("attest.", "collector.", "hostgate.collector."))
    return [dataclasses.replace(spec, partitions=None)
            for spec in topics.all_specs() if spec.name.startswith(keep)]


@dataclass
class Broker:
    topics: Topics
    fleet: Fleet
    bootstrap: str
    codec: Codec
    collector: subprocess.Popen[bytes]
    log: Path

    def client(self, host_id: str) -> AgentClient:
        return AgentClient(SimulatedHostSide(self.fleet.host(host_id)),
                           ClientConfig(self.bootstrap, self.topics, timeout_s=60),
                           codec=self.codec)

    async def decoded(self, topic: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for r in await rs.read_committed(topic):
            assert r.value is not None
            d = self.codec.decode(r.value)
            out.append((d.subject, dict(d.record)))
        return out


@pytest.fixture()
async def broker(tmp_path: Path, kafka_bootstrap: str) -> AsyncIterator[Broker]:
    tag = uuid.uuid4().hex[:6]
    specs = [HostSpec(f"sec-{tag}-victim", "ubuntu-24.04-shim", None, 1),
             HostSpec(f"sec-{tag}-other", "ubuntu-24.04-shim", None, 2)]
    topics = Topics(f"sec{uuid.uuid4().hex[:8]}")
    codec = Codec.load()
    with Fleet(tmp_path / "fleet", specs, workers=2) as fleet:
        await ensure_topics(kafka_bootstrap, specs=_specs(topics), layout=TopicLayout(3, 1))
        policy = published_record(POLICY, version=1, published_at_ms=now_ms(), author="tests")
        await rs.produce_raw(topics.policies,
                             [(POLICY_ID.encode(), codec.encode("hostgate.PolicyPublished",
                                                                policy), [])])
        ca_dir = tmp_path / "ek-ca"
        ca_dir.mkdir()
        (ca_dir / "root.pem").write_bytes(fleet.ek_ca_root_pem())
        (ca_dir / "intermediate.pem").write_bytes(fleet.ek_ca_intermediate_pem())
        env = {**os.environ, **LIMITS, "HOSTGATE_BOOTSTRAP": kafka_bootstrap,
               "HOSTGATE_TOPIC_NAMESPACE": topics.namespace,
               "HOSTGATE_GROUP": f"hostgate.collector.{topics.namespace}",
               "HOSTGATE_EK_CA_DIR": str(ca_dir), "HOSTGATE_SESSION_TIMEOUT_MS": "6000",
               "HOSTGATE_BATCH_MAX_MS": "300"}
        log = tmp_path / "collector.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "collector"],
                                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            yield Broker(topics, fleet, kafka_bootstrap, codec, proc, log)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if sys.exc_info()[0] is not None:
                print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([s.name for s in _specs(topics)])
            except Exception as exc:  # cleanup only
                print(f"could not delete test topics: {exc}", file=sys.stderr)
            finally:
                await admin.close()


@pytest.mark.kafka
@pytest.mark.swtpm
async def test_a_flood_on_the_topic_naming_a_host_leaves_it_able_to_attest(
        broker: Broker) -> None:
    victim, other = (next(h.host_id for h in broker.fleet if h.host_id.endswith(s))
                     for s in ("victim", "other"))
    async with broker.client(other) as client:
        await client.enroll()
    async with broker.client(victim) as client:
        await client.enroll()
        # Attacker (c) writes unsigned requests naming the victim; attacker (b), another
        # enrolled host with a real TPM, signs the victim's request binding with its own AK.
        other_sim = broker.fleet.host(other)
        flood: list[tuple[bytes, bytes, list[Any]]] = []
        for n in range(12):
            rid = f"flood-{n}"
            auth: tuple[bytes | None, bytes | None] = (None, None)
            if n % 2:
                q = other_sim.quote(request_digest_spec(victim, rid), [0]).quote
                auth = (q.attest, q.signature)
            record = {"request_id": rid, "host_id": victim,
                      "requested_pcrs": [{"bank": "SHA256", "pcrs": [0]}], "sent_at": now_ms(),
                      "request_attest": auth[0], "request_signature": auth[1]}
            flood.append((victim.encode(), broker.codec.encode(ASK, record), []))
        await rs.produce_raw(broker.topics.requests, flood)

        async def refused() -> bool:
            recs = await broker.decoded(broker.topics.rejections)
            return sum(1 for s, r in recs if r["host_id"] == victim
                       and r["reason"] == "UNAUTHENTICATED") >= len(flood)

        await rs.wait_until(refused, 90, "every flooded request refused UNAUTHENTICATED")
        # The victim attests as usual, within its own limits, quoting what the policy asks.
        done = await client.attest()
        second = await client.attest()

        async def collected() -> list[dict[str, Any]]:
            return [r for s, r in await broker.decoded(broker.topics.collected)
                    if r["evidence"]["host_id"] == victim]

        async def both() -> bool:
            return len(await collected()) >= 2

        await rs.wait_until(both, 90, "the victim's evidence collected")
    got = await collected()
    assert sorted(c["evidence"]["evidence_id"] for c in got) == sorted(
        [done.evidence_id, second.evidence_id])
    for c in got:
        quoted = decode_attest(bytes(c["evidence"]["quote_attest"])).selection
        assert quoted == (("sha256", tuple(range(8))),), quoted
    # No nonce was ever issued for a flooded request.
    issued = [r["request_id"] for s, r in await broker.decoded(broker.topics.challenges)
              if s == NONCE and r["host_id"] == victim]
    assert len(issued) == 2 and not any(i.startswith("flood-") for i in issued), issued
    assert await rs.read_committed(broker.topics.dlq("collector")) == []
