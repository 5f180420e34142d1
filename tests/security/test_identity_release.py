"""Re-binding a host id is an explicit, audited operator command (real broker, collector,
swtpm hosts, the ``hostgate identity`` CLI as a process).

An enrolled host id keeps its EK (``EK_CHANGED``) and an EK keeps its host id (``EK_IN_USE``)
until an operator releases them with ``hostgate identity release``; the release leaves an
audit record (who, why, what) on the identity events topic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.agent.client import EnrollmentRefused
from services.errors import ExitCode
from tests.integration import runtime_support as rs
from tests.security import identity_support as ids

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm]


async def _identity_cli(dep: ids.Deployment, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "services.cli", "identity", *args, "--bootstrap",
           dep.bootstrap, "--topic-namespace", dep.topics.namespace]
    return await asyncio.to_thread(subprocess.run, cmd, cwd=ids.REPO, capture_output=True,
                                   timeout=120)


async def _audit(dep: ids.Deployment, host_id: str) -> list[dict[str, Any]]:
    return [rec for _, subject, rec in await dep.records(ids.identity_events_topic(dep.topics))
            if subject == "hostgate.IdentityEvent" and rec["host_id"] == host_id]


async def test_operator_release_allows_reenrolment_with_a_new_tpm_and_is_audited(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    async with ids.deployment(tmp_path, kafka_bootstrap,
                              [f"sec-{tag}-web", f"sec-{tag}-newtpm"]) as dep:
        old_sim, new_sim = dep.sim(0), dep.sim(1)
        host = old_sim.host_id
        async with dep.client(old_sim) as client:
            await client.enroll()
        # The re-imaged machine (a new TPM) under the same id: refused until released (it
        # cannot sign with the enrolled AK, which an enrolled id's enrolment needs).
        async with dep.client(new_sim, host) as newcomer:
            with pytest.raises(EnrollmentRefused) as refused:
                await newcomer.enroll()
        assert refused.value.reason == "UNAUTHENTICATED"

        done = await _identity_cli(dep, "release", host, "--actor", "alice", "--reason",
                                   "re-imaged with a new mainboard (CHG-1234)", "--json")
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        published = json.loads(done.stdout)
        assert published["host_id"] == host and published["command_id"]

        async def released() -> bool:
            return any(e["event"] == "RELEASED" for e in await _audit(dep, host))

        await rs.wait_until(released, 60, f"RELEASED audit event for {host}")
        (event,) = [e for e in await _audit(dep, host) if e["event"] == "RELEASED"]
        assert event["actor"] == "alice"
        assert event["reason"] == "re-imaged with a new mainboard (CHG-1234)"
        assert event["command_id"] == published["command_id"]
        assert event["previous_state"] == "ENROLLED"
        assert [bytes(d).hex() for d in event["released_ek_sha256"]] == \
            [ids.ek_digest(old_sim.ek_public)]
        assert event["released_ak_name"] is not None

        # Now the new TPM enrols the id and attests with it.
        async with dep.client(new_sim, host) as newcomer:
            enrolled = await newcomer.enroll()
            assert enrolled.result == "ENROLLED"
            await newcomer.attest()
        await dep.wait_collected(host, 1)
        assert [c["ek"]["ek_public"] for c in await dep.collected(host)] == [new_sim.ek_public]
        # ... and the old TPM's EK is free again: it may enrol a new id.
        reborn = f"sec-{tag}-reborn"
        async with dep.client(old_sim, reborn) as client:
            assert (await client.enroll()).result == "ENROLLED"

        shown = await _identity_cli(dep, "show", host, "--json")
        assert shown.returncode == 0, shown.stderr.decode()[-2000:]
        view = json.loads(shown.stdout)
        assert view["enrollment"]["state"] == "ENROLLED"
        assert view["ek_sha256"] == ids.ek_digest(new_sim.ek_public)
        assert view["binding"]["host_id"] == host
        assert [e["event"] for e in view["audit"]] == ["RELEASED"]

        # An unknown host: the command is refused on the audit topic, nothing changes.
        ghost = f"sec-{tag}-ghost"
        done = await _identity_cli(dep, "release", ghost, "--actor", "bob", "--reason", "typo")
        assert done.returncode == 0, done.stderr.decode()[-2000:]

        async def refused_audit() -> bool:
            return any(e["event"] == "REFUSED" for e in await _audit(dep, ghost))

        await rs.wait_until(refused_audit, 60, "REFUSED audit event for an unknown host")


async def test_release_needs_actor_and_reason(kafka_bootstrap: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "services.cli", "identity", "release", "web-1", "--actor",
           " ", "--reason", "x", "--bootstrap", kafka_bootstrap]
    done = await asyncio.to_thread(subprocess.run, cmd, cwd=ids.REPO, capture_output=True,
                                   timeout=60)
    assert done.returncode == ExitCode.CONFIG
    assert b"--actor" in done.stderr
