"""Liveness on a silent partition, end to end on the real broker: the incidents stage runs as a
process, a host attests once (a failed Verdict stamped three hours ago), then nothing arrives;
``hostgate incidents tick --once`` ticks every partition of the remediation topic and the stage
publishes exactly one stale-host finding for the host on the findings topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from services.incidents.cloudevents import read_binary_headers
from services.incidents.ocsf import validate
from services.runtime.codec import Codec
from services.runtime.topics import Topics
from tests.integration.incidents_topics import create_topics, delete_topics
from tests.integration.runtime_support import REPO, bootstrap, read_committed, wait_until
from tests.unit.incidents_support import verdict

pytestmark = pytest.mark.kafka
CODEC = Codec.load()
HOUR_MS = 3600 * 1000



async def _findings(t: Topics) -> list[dict[str, Any]]:
    out = []
    for r in await read_committed(t.findings):
        body = json.loads(r.value or b"")
        body["_ce"] = read_binary_headers(r.headers)
        out.append(body)
    return out


def _stale(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in findings if f.get("finding_info", {}).get("analytic", {}).get("uid")
            == "hostgate.liveness.stale"]


async def test_a_tick_reports_a_host_that_went_silent_on_an_idle_partition(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    t = Topics(f"it-tick-{uuid.uuid4().hex[:8]}")
    await create_topics(t)
    env = {**os.environ, "HOSTGATE_TOPIC_NAMESPACE": t.namespace,
           "HOSTGATE_INCIDENTS_STALE_AFTER_S": "3600", "HOSTGATE_BOOTSTRAP": bootstrap(),
           "HOSTGATE_BATCH_MAX_MS": "300", "HOSTGATE_SESSION_TIMEOUT_MS": "6000"}
    log_path = tmp_path / "incidents-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "incidents"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        host = "host-it-silent-0001"
        attested_at = int(time.time() * 1000) - 3 * HOUR_MS  # > the 1 h window, deterministic
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap(), enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(
                t.verdicts, CODEC.encode("hostgate.Verdict", verdict(host, 1, at=attested_at)),
                key=host.encode(), timestamp_ms=attested_at)
        finally:
            await producer.stop()

        async def incident_opened() -> bool:
            return len(await read_committed(t.incidents)) >= 1

        await wait_until(incident_opened, 90, "the incident to open (the host to be seen)")
        assert _stale(await _findings(t)) == []  # seen three hours ago, checked at that time

        ticked = subprocess.run(
            [sys.executable, "-m", "services.cli", "incidents", "tick", "--once",
             "--json", "--bootstrap", bootstrap(), "--topic-namespace", t.namespace],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert ticked.returncode == 0, ticked.stderr
        summary = json.loads(ticked.stdout)
        assert (summary["topic"], summary["partitions"]) == (t.remediation, [0, 1, 2])

        async def stale_reported() -> bool:
            return len(_stale(await _findings(t))) >= 1

        await wait_until(stale_reported, 90, "the stale-host finding")
        (stale,) = _stale(await _findings(t))
        validate({k: v for k, v in stale.items() if k != "_ce"})
        assert stale["_ce"]["ce_subject"] == host
        assert stale["start_time"] == attested_at
        assert stale["time"] >= attested_at + 3 * HOUR_MS
        assert await read_committed(t.dlq("incidents")) == []
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


def test_tick_help_documents_the_ticker() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "incidents", "tick", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    for word in ("--every", "--once", "LivenessTick", "beside the incidents stage"):
        assert word in out
