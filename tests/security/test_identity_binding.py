"""One host id <-> one EK, one EK <-> one host id, across partitions and workers (real broker,
two collector worker processes, swtpm hosts).

Attacks: a host with a real TPM enrols a second host id with its EK (one TPM, many identities:
before the EK registry, nobody noticed when the ids landed on different partitions); a host
borrows an enrolled host's id with its own TPM.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from services.agent.client import AgentTimeout, EnrollmentRefused
from tests.integration import runtime_support as rs
from tests.security import identity_support as ids

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm]


async def test_one_ek_binds_one_host_id_across_partitions_and_workers(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    first = ids.host_id_on(0, 2, f"sec-{tag}-a")
    async with ids.deployment(tmp_path, kafka_bootstrap, [first], workers=2,
                              partitions=2) as dep:
        await dep.wait_assigned()
        sim = dep.sim(0)
        async with dep.client(sim) as client:
            await client.enroll()
        # The same TPM under a second id on the other partition, owned by the other worker.
        second = ids.host_id_on(1, 2, f"sec-{tag}-b")
        assert dep.owner_of(0) is not dep.owner_of(1)
        async with dep.client(sim, second) as twin:
            with pytest.raises(EnrollmentRefused) as refused:
                await twin.enroll()
        assert refused.value.reason == "EK_IN_USE"
        (rejected,) = await dep.wait_rejection(second, "EK_IN_USE")
        assert first in rejected["detail"]  # the SOC learns which id holds the EK
        assert first not in str(refused.value)  # the host is not told
        # ... and on the same partition as the first id.
        third = ids.host_id_on(0, 2, f"sec-{tag}-c")
        async with dep.client(sim, third) as twin:
            with pytest.raises(EnrollmentRefused) as refused3:
                await twin.enroll()
        assert refused3.value.reason == "EK_IN_USE"
        # Neither id can attest.
        for other in (second, third):
            async with dep.client(sim, other, timeout_s=10) as twin:
                with pytest.raises(AgentTimeout):
                    await twin.attest()
            assert await dep.collected(other) == []
        # The holder re-binding its own EK (an AK rotation) is granted, and it attests.
        async with dep.client(sim) as client:
            again = await client.enroll()
            assert again.result == "ENROLLED"
            await client.attest()
        await dep.wait_collected(first, 1)
        bindings = {k: v for k, v in (await dep.table("ek_bindings")).items() if v is not None}
        assert bindings == {ids.ek_digest(sim.ek_public): bindings[ids.ek_digest(sim.ek_public)]}
        assert bindings[ids.ek_digest(sim.ek_public)]["host_id"] == first
        enrolled = {h for h, row in (await dep.table("enrollments")).items()
                    if row is not None and row["state"] == "ENROLLED"}
        assert enrolled == {first}
        assert await rs.read_committed(dep.topics.dlq("collector")) == []


async def test_borrowing_an_enrolled_host_id_with_another_tpm_is_refused(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    async with ids.deployment(tmp_path, kafka_bootstrap,
                              [f"sec-{tag}-owner", f"sec-{tag}-borrower"], workers=2,
                              partitions=2) as dep:
        owner_sim, borrower_sim = dep.sim(0), dep.sim(1)
        owner = owner_sim.host_id
        home = ids.oracle_partition(owner, dep.partitions)
        async with dep.client(owner_sim) as client:
            await client.enroll()
        # Through the owner's own partition: the borrower cannot sign with the owner's AK
        # (an enrolled id's enrolment is a rotation, vouched for by its AK); had it been able
        # to, the enrolled EK would still differ (EK_CHANGED).
        async with dep.client(borrower_sim, owner) as rogue:
            with pytest.raises(EnrollmentRefused) as refused:
                await rogue.enroll()
        assert refused.value.reason == "UNAUTHENTICATED"
        # Through every other partition: refused before anything is looked at.
        for p in range(dep.partitions):
            if p == home:
                continue
            async with dep.client(borrower_sim, owner, partition=p, timeout_s=12) as rogue:
                with pytest.raises(AgentTimeout):
                    await rogue.enroll()
        await dep.wait_rejection(owner, "WRONG_PARTITION")
        enrolments = await dep.table("enrollments")
        assert enrolments[owner] is not None
        assert enrolments[owner]["ak_public"] == owner_sim.ak_public
        # The owner still attests with its own AK; the borrower got nothing for the id.
        async with dep.client(owner_sim) as client:
            await client.attest()
        await dep.wait_collected(owner, 1)
        assert [c["ek"]["ek_public"] for c in await dep.collected(owner)] == \
            [owner_sim.ek_public]
        assert [r["result"] for r in await dep.results(owner)].count("ENROLLED") == 1
