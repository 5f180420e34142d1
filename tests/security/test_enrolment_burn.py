"""Unauthenticated input cannot burn or displace a pending enrolment (real broker, collector,
swtpm hosts).

Anyone with the agents' principal reads every ``ActivationChallenge`` (they are public) and may
write any ``ActivationProof`` or ``EnrollmentRequested``. Before the fix a wrong proof burnt the
host's pending challenge and a new request replaced it, so a host's enrolment could be stopped
by anyone. The activation secret is 32 random bytes: a wrong proof is noise, not a guess that
deserves a lockout.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.agent.client import AgentClient, EnrollmentRefused
from services.tpm.credential import CredentialChallenge
from services.wire.subjects import ACTIVATION_CHALLENGE, ENROLLMENT_RESULT
from tests.integration import runtime_support as rs
from tests.security import identity_support as ids

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm]


async def _challenge(client: AgentClient, dep: ids.Deployment) -> dict[str, Any]:
    """Send an ``EnrollmentRequested`` for the client's host and return its challenge."""
    ident = await asyncio.to_thread(client.host.identity)
    request_id = f"enr-{uuid.uuid4().hex}"
    answer = await client._request(
        dep.topics.requests, "hostgate.EnrollmentRequested",
        {"request_id": request_id, "host_id": client.host.host_id, "agent_version": "test",
         "ek_cert": ident.ek_cert, "ek_public": ident.ek_public,
         "ak_public": ident.ak_public, "sent_at": 0, "request_attest": None,
         "request_signature": None},
        {ACTIVATION_CHALLENGE, ENROLLMENT_RESULT}, request_id, "ActivationChallenge")
    assert answer.get("challenge_id", "").startswith("act-"), answer
    return dict(answer)


async def test_wrong_proofs_and_new_requests_do_not_burn_a_pending_enrolment(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    async with ids.deployment(tmp_path, kafka_bootstrap,
                              [f"sec-{tag}-host", f"sec-{tag}-rogue"]) as dep:
        host_sim, rogue_sim = dep.sim(0), dep.sim(1)
        host = host_sim.host_id
        async with dep.client(host_sim) as client:
            pending = await _challenge(client, dep)

            # Anyone: wrong proofs for the host's public challenge id.
            for _ in range(3):
                await dep.produce(dep.topics.requests, host, "hostgate.ActivationProof", {
                    "request_id": f"proof-{uuid.uuid4().hex}", "host_id": host,
                    "challenge_id": pending["challenge_id"],
                    "secret_proof": secrets.token_bytes(32), "sent_at": 0})
            await dep.wait_rejection(host, "FAILED_ACTIVATION", count=3)

            # Another host with a real, certified TPM asks to enrol the same id meanwhile.
            async with dep.client(rogue_sim, host) as rogue:
                rogue_challenge = await _challenge(rogue, dep)
            assert rogue_challenge["challenge_id"] != pending["challenge_id"]

            # The real host activates its (first) challenge: it is still pending.
            secret = await asyncio.to_thread(host_sim.activate, CredentialChallenge(
                bytes(pending["credential_blob"]), bytes(pending["encrypted_secret"])))
            done = await client.prove(pending["challenge_id"], secret)
            assert done.result == "ENROLLED"
            await client.attest()
        await dep.wait_collected(host, 1)

        # The rogue's own challenge, proved afterwards, cannot take the enrolled id.
        async with dep.client(rogue_sim, host) as rogue:
            rogue_secret = await asyncio.to_thread(rogue_sim.activate, CredentialChallenge(
                bytes(rogue_challenge["credential_blob"]),
                bytes(rogue_challenge["encrypted_secret"])))
            with pytest.raises(EnrollmentRefused) as refused:
                await rogue.prove(rogue_challenge["challenge_id"], rogue_secret)
        assert refused.value.reason == "EK_CHANGED"
        row = (await dep.table("enrollments"))[host]
        assert row is not None and row["state"] == "ENROLLED"
        assert row["ak_public"] == host_sim.ak_public
        assert row["ek"]["ek_public"] == host_sim.ek_public
        assert [c["ak_public"] for c in await dep.collected(host)] == [host_sim.ak_public]
        assert await rs.read_committed(dep.topics.dlq("collector")) == []
