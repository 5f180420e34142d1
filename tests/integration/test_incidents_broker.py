"""The incidents stage end to end on the real broker: ``hostgate run incidents`` as a process, a
failed Verdict in, exactly one incident out; commands through the incidents CLI drive it to
CLOSED; an out-of-order command is refused on the topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.incidents.cloudevents import read_binary_headers
from services.incidents.ocsf import validate
from services.runtime.codec import Codec
from services.runtime.topics import Topics
from tests.integration.incidents_topics import create_topics, delete_topics
from tests.integration.runtime_support import (
    REPO,
    Rec,
    bootstrap,
    produce_raw,
    read_committed,
    wait_until,
)
from tests.unit.incidents_support import verdict

pytestmark = pytest.mark.kafka
CODEC = Codec.load()



def _decoded(recs: list[Rec]) -> list[dict[str, Any]]:
    out = []
    for r in recs:
        assert r.value is not None
        d = CODEC.decode(r.value)
        out.append({"_subject": d.subject, **d.record})
    return out


def _cli(t: Topics, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "incidents", *argv,
         "--bootstrap", bootstrap(), "--topic-namespace", t.namespace],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False, input=stdin)


async def test_failed_verdict_opens_one_incident_and_the_cli_walks_it_to_closed(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    t = Topics(f"it-{uuid.uuid4().hex[:8]}")
    await create_topics(t)
    env = {**os.environ, "HOSTGATE_TOPIC_NAMESPACE": t.namespace,
           "HOSTGATE_BOOTSTRAP": bootstrap(), "HOSTGATE_BATCH_MAX_MS": "300", "HOSTGATE_SESSION_TIMEOUT_MS": "6000"}
    log_path = tmp_path / "incidents-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "incidents"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        host = "host-it-0001"
        value = CODEC.encode("hostgate.Verdict", verdict(host, 1))
        await produce_raw(t.verdicts, [(host.encode(), value, [])])

        async def events() -> list[dict[str, Any]]:
            return _decoded(await read_committed(t.incidents))

        async def has(n: int) -> bool:
            return len(await events()) >= n

        await wait_until(lambda: has(1), 90, "the incident to open")
        (opened,) = await events()
        assert opened["_subject"] == "hostgate.IncidentEvent"
        assert (opened["event"], opened["status"], opened["host_id"]) == ("OPENED", "OPEN", host)
        inc_id = opened["incident_id"]

        listed = _cli(t, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [i["incident_id"] for i in json.loads(listed.stdout)] == [inc_id]

        early = _cli(t, "close", inc_id, "--actor", "carol", "--reason", "too early")
        assert early.returncode == 0, early.stderr
        await wait_until(lambda: has(2), 60, "the early close to be refused")
        refused = (await events())[1]
        assert refused["_subject"] == "hostgate.RemediationRejected"
        assert (refused["reason"], refused["status"]) == ("INVALID_TRANSITION", "OPEN")

        steps = [("ack", "ACKNOWLEDGED"), ("root-cause", "ROOT_CAUSED"),
                 ("remediate", "REMEDIATED"), ("close", "CLOSED")]
        for n, (cmd, status) in enumerate(steps, start=3):
            if cmd == "remediate":  # as a SOAR playbook sends it: JSON on stdin, host looked up
                done = _cli(t, "command", "--json-file", "-", stdin=json.dumps({
                    "incident_id": inc_id, "action": "REMEDIATE", "actor": "carol",
                    "reason": f"step {cmd}"}))
            else:
                done = _cli(t, cmd, inc_id, "--actor", "carol", "--reason", f"step {cmd}")
            assert done.returncode == 0, done.stderr
            await wait_until(lambda n=n: has(n), 60, f"{cmd} to be applied")  # type: ignore[misc]
            last = (await events())[-1]
            assert (last["_subject"], last["status"], last["actor"]) == (
                "hostgate.IncidentEvent", status, "carol")
        final = await events()
        assert [e.get("event") for e in final if e["_subject"] == "hostgate.IncidentEvent"] == [
            "OPENED", "ACKNOWLEDGED", "ROOT_CAUSED", "REMEDIATED", "CLOSED"]
        assert {e["incident_id"] for e in final} == {inc_id}
        shown = _cli(t, "show", inc_id)
        assert shown.returncode == 0 and "REJECTED CLOSE by carol: INVALID_TRANSITION" in \
            shown.stdout
        assert await read_committed(t.dlq("incidents")) == []

        findings = await read_committed(t.findings)
        bodies = [json.loads(r.value or b"") for r in findings]
        kinds = [(b["class_uid"], b["activity_id"]) for b in bodies]
        assert kinds.count((2004, 1)) == 1 and kinds.count((2004, 3)) == 1  # created, resolved
        assert len([k for k in kinds if k[0] == 2005]) == 5
        for r, body in zip(findings, bodies, strict=True):
            validate(body)
            ce = read_binary_headers(r.headers)
            assert ce["ce_subject"] == host and ce["content-type"] == "application/json"
            assert r.key == host.encode()
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        if sys.exc_info()[0] is not None:
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
        await delete_topics(t)


def test_cli_help_names_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "services.cli", "incidents", "--help"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    for cmd in ("list", "show", "tail", "ack", "root-cause", "remediate", "close", "command"):
        assert cmd in out
