"""The issuer issues only for the host's own EK (real broker, real ``hostgate run issuer``).

The first verdict for a host binds its EK in the issuer's host state; a verdict for that host
carrying another EK issues nothing and quarantines the host (a verdict that names another TPM
for a host is suspicious whatever it says). An operator release (the collector's
``IdentityEvent`` RELEASED) resets the binding, so the re-imaged host gets credentials for its
new TPM.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from services.runtime.topics import Topics
from tests.integration import issuer_e2e_support as es
from tests.integration.runtime_support import produce_raw, read_committed, wait_until
from tests.unit.issuer_stage_support import write_pem_ca
from tests.unit.issuer_support import PCRS, software_ek_public

pytestmark = [pytest.mark.kafka]


def _pass(verdict_id: str, host: str, ek: bytes, at: dt.datetime
          ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return es.encode_verdict(es.wire_verdict(verdict_id, host, result="PASS", at=at,
                                             ek_public=ek, pcrs=PCRS))


async def test_issuer_refuses_a_verdict_whose_ek_is_not_the_hosts(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = es.fresh_namespace("seciss")
    topics = Topics(prefix)
    await es.create_topics(prefix)  # the identity events topic included: an issuer input
    ca = write_pem_ca(tmp_path / "ca")
    issuer = es.StageProcess("issuer", prefix, tmp_path, ca.env)
    host, ek_own, ek_other = "sec-iss-web-042", software_ek_public(), software_ek_public()
    base = es.now()
    try:
        issuer.start()
        await produce_raw(topics.verdicts, [_pass("v-1", host, ek_own, base)])

        async def creds(n: int) -> bool:
            return len(es.decoded(await read_committed(topics.credentials))) >= n

        await wait_until(lambda: creds(1), 60, "the first credential")
        # A passing verdict for the same host naming another EK.
        await produce_raw(topics.verdicts,
                          [_pass("v-2", host, ek_other, base + dt.timedelta(seconds=1))])

        async def states(n: int) -> bool:
            return len(es.decoded(await read_committed(topics.hosts))) >= n

        await wait_until(lambda: states(2), 60, "the host state after the second verdict")
        hosts = es.decoded(await read_committed(topics.hosts))
        assert hosts[-1]["state"] == "QUARANTINED", hosts[-1]
        assert "EK" in hosts[-1]["reason"] and "v-2" in hosts[-1]["reason"]
        issued = es.decoded(await read_committed(topics.credentials))
        assert [c["verdict_id"] for c in issued] == ["v-1"]
        # Another pass with the host's own EK does not lift it: only an operator release does.
        await produce_raw(topics.verdicts,
                          [_pass("v-3", host, ek_own, base + dt.timedelta(seconds=2))])
        await wait_until(lambda: states(3), 60, "the host state after the third verdict")
        assert es.decoded(await read_committed(topics.hosts))[-1]["state"] == "QUARANTINED"
        assert [c["verdict_id"] for c in es.decoded(await read_committed(
            topics.credentials))] == ["v-1"]

        # The operator releases the host (as the collector reports it), then the new TPM passes.
        await produce_raw(topics.identity_events, [(host.encode(), es.CODEC.encode(
            "hostgate.IdentityEvent", {
                "event_id": "idev-1", "host_id": host, "event": "RELEASED",
                "command_id": "cmd-1", "actor": "alice", "reason": "new TPM",
                "previous_state": "ENROLLED", "released_ek_sha256": [],
                "released_ak_name": None, "detail": "released",
                "occurred_at": base + dt.timedelta(seconds=3),
                "source": {"topic": "attest.identity.v1", "partition": 0, "offset": 0}}), [])])
        await wait_until(lambda: states(4), 60, "the host state after the release")
        await produce_raw(topics.verdicts,
                          [_pass("v-4", host, ek_other, base + dt.timedelta(seconds=4))])
        await wait_until(lambda: creds(2), 60, "a credential for the new EK")
        issued = es.decoded(await read_committed(topics.credentials))
        assert [c["verdict_id"] for c in issued] == ["v-1", "v-4"]
        assert es.decoded(await read_committed(topics.hosts))[-1]["state"] == "TRUSTED"
        assert await read_committed(topics.dlq("issuer")) == []
    finally:
        issuer.stop()
        if issuer.proc is not None and issuer.proc.returncode not in (0, None):
            print(issuer.log_bytes()[-3000:].decode(errors="replace"))
        await es.delete_topics(prefix)
