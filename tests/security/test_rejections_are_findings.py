"""An intake rejection names a host but proves nothing about it: it is a SOC finding, never an
incident, and never changes the trust state of the host it names.

Anyone who can write to the request or evidence topics can make the collector refuse a record
naming any host (evidence signed by the wrong key, a copied nonce, an unsigned request...). If
the incidents stage opened an incident for it, the issuer would quarantine that host and revoke
its certificate (and a host back from remediation would regress). So a rejection becomes one
OCSF Detection Finding (class 2004) about the record, and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.incidents.core import COMMAND, INTAKE_REJECTED, VERDICT
from services.incidents.ocsf import validate
from services.issuer.config import IssuerConfig
from services.issuer.core import apply_incident_event, apply_verdict
from services.issuer.hoststate import HostTrust
from services.runtime.codec import Codec
from services.runtime.topics import Topics
from tests.integration.incidents_topics import create_topics, delete_topics
from tests.integration.runtime_support import (
    REPO,
    bootstrap,
    produce_raw,
    read_committed,
    wait_until,
)
from tests.unit.incidents_support import T0, Driver, command, rejection, verdict
from tests.unit.issuer_support import pem_ca, software_ek_public
from tests.unit.issuer_support import verdict as issuer_verdict

CODEC = Codec.load()
# Every reason intake refuses for that used to open an incident (RATE_LIMITED and STALE_NONCE,
# a busy or slow host, never did and still make neither incident nor finding); UNKNOWN is what a
# reader makes of a reason newer than its schema.
REASONS = ("UNENROLLED_AK", "UNKNOWN_NONCE", "REPLAYED_NONCE", "OVER_LIMITS",
           "BAD_EK_CERTIFICATE", "BAD_AK_ATTRIBUTES", "FAILED_ACTIVATION", "MALFORMED",
           "HOST_MISMATCH", "EK_CHANGED", "BAD_SIGNATURE", "WRONG_PARTITION", "EK_IN_USE",
           "SELECTION_MISMATCH", "UNAUTHENTICATED", "UNKNOWN")


@pytest.mark.parametrize("reason", REASONS)
def test_a_rejection_opens_no_incident_and_is_a_detection_finding(reason: str) -> None:
    d = Driver()
    result = d.feed(INTAKE_REJECTED, rejection("host-x", 1, reason=reason, at=T0 + 5))
    assert [o.subject for o in result.decision.outputs] == [], result.decision.outputs
    assert d.incident("host-x") is None
    assert not [u for u in result.decision.state_updates if u.table == "incidents"]
    (finding,) = result.findings
    validate(finding.body)
    body = finding.body
    assert body["class_uid"] == 2004 and body["time"] == T0 + 5
    assert body["device"]["uid"] == "host-x" and body["observables"][0]["value"] == "host-x"
    hg = body["unmapped"]["hostgate"]
    assert hg["incident_id"] is None and hg["trust_state_changed"] is False
    (evidence,) = body["evidences"]
    assert [r["rule_id"] for r in evidence["data"]["failed_rules"]] == \
        [f"intake.{reason.lower()}"]
    assert evidence["data"]["evidence"] == "attest.evidence.v1[2]@501"


def test_a_rejection_does_not_quarantine_a_trusted_host() -> None:
    """The chain the attacker wants: a wrong-key evidence naming host X → rejection →
    incidents stage → issuer. X stays TRUSTED with its certificate."""
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    ek = software_ek_public()
    trusted = apply_verdict(issuer_verdict("v-1", host_id="host-x", ek_public=ek), None, cfg)
    assert trusted.state.state is HostTrust.TRUSTED
    d = Driver()
    result = d.feed(INTAKE_REJECTED, rejection("host-x", 1, reason="BAD_SIGNATURE"))
    state = trusted.state
    for out in result.decision.outputs:  # what the issuer reads from attest.incidents.v1
        if out.subject == "hostgate.IncidentEvent":
            state = apply_incident_event({**out.record, "occurred_at": dt.datetime.fromtimestamp(
                out.record["occurred_at"] / 1000, tz=dt.UTC)}, state).state
    assert state.state is HostTrust.TRUSTED, state
    assert state.cert_serial == trusted.state.cert_serial and not state.revoked


def test_a_rejection_does_not_regress_a_remediated_incident() -> None:
    d = Driver()
    d.feed(VERDICT, verdict("host-x", 1))
    inc = d.incident("host-x")
    assert inc is not None
    for n, action in enumerate(("ACKNOWLEDGE", "ROOT_CAUSE", "REMEDIATE"), start=1):
        d.feed(COMMAND, command("host-x", inc["incident_id"], action, n=n))
    d.feed(VERDICT, verdict("host-x", 2, result="PASS"))
    before = d.incident("host-x")
    assert before is not None and before["status"] == "REMEDIATED"
    result = d.feed(INTAKE_REJECTED, rejection("host-x", 3, reason="REPLAYED_NONCE"))
    assert result.decision.outputs == () and d.incident("host-x") == before
    (finding,) = result.findings
    validate(finding.body)


def _decoded(recs: list[Any]) -> list[dict[str, Any]]:
    return [{"_subject": (d := CODEC.decode(r.value)).subject, **d.record} for r in recs]


@pytest.mark.kafka
async def test_through_the_broker_a_rejection_is_a_finding_and_no_incident(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    t = Topics(f"sec-{uuid.uuid4().hex[:8]}")
    await create_topics(t)
    env = {**os.environ, "HOSTGATE_TOPIC_NAMESPACE": t.namespace,
           "HOSTGATE_BOOTSTRAP": bootstrap(),
           "HOSTGATE_BATCH_MAX_MS": "300", "HOSTGATE_SESSION_TIMEOUT_MS": "6000"}
    log_path = tmp_path / "incidents-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "incidents"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        host = "host-sec-0001"
        rejections: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [(host.encode(), CODEC.encode(INTAKE_REJECTED, rejection(
            host, n, reason=reason)), []) for n, reason in
            enumerate(("BAD_SIGNATURE", "UNAUTHENTICATED", "REPLAYED_NONCE"), start=1)]
        await produce_raw(t.rejections, rejections)
        # Then a failed verdict for another host: once its incident is out, the rejections
        # before it on the same worker have been decided too.
        marker = "host-sec-0002"
        await produce_raw(t.verdicts, [(marker.encode(), CODEC.encode(
            VERDICT, verdict(marker, 1)), [])])

        async def findings() -> list[dict[str, Any]]:
            return [json.loads(r.value or b"") for r in await read_committed(t.findings)]

        async def all_seen() -> bool:
            mine = [f for f in await findings()
                    if f["unmapped"]["hostgate"].get("host_id") == host]
            return len(mine) >= 3 and any(
                f["unmapped"]["hostgate"].get("host_id") == marker for f in await findings())

        await wait_until(all_seen, 90, "the rejections' findings")
        mine = [f for f in await findings() if f["unmapped"]["hostgate"].get("host_id") == host]
        assert sorted(f["class_uid"] for f in mine) == [2004, 2004, 2004]
        for f in mine:
            validate(f)
        events = _decoded(await read_committed(t.incidents))
        assert [e["host_id"] for e in events] == [marker], events  # nothing for the named host
        changelog = await read_committed(t.changelog("incidents", "incidents"))
        assert {r.key for r in changelog} == {marker.encode()}
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
