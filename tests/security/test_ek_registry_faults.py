"""The EK registry keeps one binding per EK when a collector worker is killed -9 between an
activation proof and the registry's grant (real broker, two collector processes, swtpm).

Two host ids race to bind one TPM's EK. The worker that owns the EK's registry partition is
frozen (SIGSTOP) before either proof is sent, so both proofs are judged and both binding
requests are committed while no grant can have been made; then it is killed -9 and a fresh
worker takes its place. Whatever the order, exactly one id may end ENROLLED with that EK, the
other hears ``EK_IN_USE``, and the registry holds one row for the EK naming the winner.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.agent.client import AgentClient, EnrollmentRefused, EnrollResult
from tests.integration import runtime_support as rs
from tests.security import identity_support as ids

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm, pytest.mark.slow]


async def _bind_requests(dep: ids.Deployment, digest: str) -> int:
    return sum(1 for r, _, _ in await dep.records(ids.ek_bindings_topic(dep.topics))
               if r.key == digest.encode())


async def test_registry_keeps_one_binding_when_killed_between_proof_and_grant(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    first = f"sec-{tag}-tpm"
    async with ids.deployment(tmp_path, kafka_bootstrap, [first], workers=2,
                              partitions=2) as dep:
        await dep.wait_assigned()
        sim = dep.sim(0)
        digest = ids.ek_digest(sim.ek_public)
        ek_part = ids.oracle_partition(digest, dep.partitions)
        # Both ids live on the partition the registry does not: their tasks keep running.
        home = 1 - ek_part
        racers = [ids.host_id_on(home, dep.partitions, f"sec-{tag}-x"),
                  ids.host_id_on(home, dep.partitions, f"sec-{tag}-y")]
        registry = dep.owner_of(ek_part)
        clients: list[AgentClient] = [dep.client(sim, h, timeout_s=120) for h in racers]
        for c in clients:
            await c.start()
        try:
            registry.freeze()
            outcomes: list[Any] = list(await asyncio.gather(
                *(_enroll(c) for c in clients), _kill_after_requests(dep, digest, registry)))
        finally:
            for c in clients:
                await c.stop()
        results = outcomes[:2]
        enrolled = [h for h, r in zip(racers, results, strict=True)
                    if isinstance(r, EnrollResult)]
        refused = [h for h, r in zip(racers, results, strict=True)
                   if isinstance(r, EnrollmentRefused) and r.reason == "EK_IN_USE"]
        assert len(enrolled) == 1 and len(refused) == 1, results
        (winner,) = enrolled
        bindings = {k: v for k, v in (await dep.table("ek_bindings")).items() if v is not None}
        assert list(bindings) == [digest]
        assert bindings[digest]["host_id"] == winner
        rows = await dep.table("enrollments")
        assert [h for h in racers if rows.get(h) and rows[h]["state"] == "ENROLLED"] == [winner]
        # One answer per proof, no duplicate despite the crash.
        for h in racers:
            answers = [r["result"] for r in await dep.results(h)]
            assert len(answers) == 1, (h, answers)


async def _enroll(client: AgentClient) -> EnrollResult | EnrollmentRefused:
    try:
        return await client.enroll()
    except EnrollmentRefused as exc:
        return exc


async def _kill_after_requests(dep: ids.Deployment, digest: str,
                               registry: ids.CollectorProcess) -> None:
    """Wait until both binding requests are committed (no grant possible yet), then kill -9
    the frozen registry owner and start a replacement."""
    async def both() -> bool:
        return await _bind_requests(dep, digest) >= 2

    await rs.wait_until(both, 90, "two binding requests for the EK", poll_s=0.2)
    registry.kill()
    replacement = ids.CollectorProcess(dep.env, registry.log_path.with_suffix(".2.log"))
    replacement.start()
    dep.workers.append(replacement)
