"""Issue 6 end to end: real broker, real swtpm hosts (fleet simulator), the issuer and incidents
stages as real processes (``hostgate run issuer`` / ``hostgate run incidents``), the CRL
endpoint as a process (``hostgate issuer serve-crl``) and the operators' CLIs.

The verdicts are built here with the ``hostgate.Verdict`` schema (the verifier is another
area's); a passing verdict carries the PCR values of a real quote of the host's swtpm, verified
with its AK, and the host's real EK public area.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from services.agent.credential_receiver import (
    CredentialRejected,
    open_delivery,
    receive_credential,
)
from services.agent.fleet import Fleet, HostSpec, SimulatedHost
from services.incidents.cloudevents import read_binary_headers
from services.incidents.ocsf import validate
from services.runtime.topics import Topics
from services.tpm.quote import verify_quote
from tests.integration import issuer_e2e_support as es
from tests.integration.runtime_support import REPO, bootstrap, produce_raw, read_committed
from tests.integration.runtime_support import wait_until as _wait_until
from tests.unit.issuer_stage_support import CaFiles, write_pem_ca

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm]


async def wait_until(pred: Any, timeout_s: float, what: str) -> None:
    await _wait_until(pred, timeout_s, what, poll_s=0.5)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    run = uuid.uuid4().hex[:6]
    specs = [HostSpec(f"e2e-{run}-{name}", "ubuntu-24.04-shim", None, seed=i)
             for i, name in enumerate(("clean", "tampered", "other"))]
    fl = Fleet(tmp_path / "fleet", specs, workers=2)
    fl.start()
    try:
        yield fl
    finally:
        fl.stop()


def attested_pcrs(host: SimulatedHost) -> dict[int, bytes]:
    """PCRs 0-9 (sha256) of a fresh quote, verified with the host's AK and nonce."""
    nonce = os.urandom(32)
    ev = host.quote(nonce)
    verified = verify_quote(ev.ak_public, ev.quote.attest, ev.quote.signature, nonce=nonce,
                            pcr_values=ev.quote.pcr_values)
    return {i: v for i, v in verified.pcr_values["sha256"].items() if i < 10}


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *argv], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=120, check=False)


class Pipeline:
    """The topics and processes of one scenario."""

    def __init__(self, prefix: str, ca: CaFiles, log_dir: Path) -> None:
        self.prefix, self.ca, self.log_dir = prefix, ca, log_dir
        self.it = self.nt = Topics(prefix)
        self.issuer = es.StageProcess("issuer", prefix, log_dir,
                                      {**ca.env, "HOSTGATE_LOG_LEVEL": "debug"})
        self.incidents = es.StageProcess("incidents", prefix, log_dir, {})
        self.crl_server: subprocess.Popen[bytes] | None = None
        self.crl_log = log_dir / "serve-crl.log"

    def args(self, *extra: str) -> list[str]:
        return [*extra, "--bootstrap", bootstrap(), "--topic-namespace", self.prefix]

    async def verdict(self, record: dict[str, Any]) -> None:
        await produce_raw(self.it.verdicts, [es.encode_verdict(record)])

    async def credentials(self, host: str) -> list[dict[str, Any]]:
        return [r for r in es.decoded(await read_committed(self.it.credentials))
                if r["host_id"] == host]

    async def incident_events(self, host: str) -> list[dict[str, Any]]:
        return [r for r in es.decoded(await read_committed(self.nt.incidents))
                if r["host_id"] == host]

    def host_state(self, host: str) -> dict[str, Any]:
        out = cli("hosts", *self.args("show", host, "--json"))
        assert out.returncode == 0, out.stderr
        state: dict[str, Any] = json.loads(out.stdout)
        return state

    async def wait_state(self, host: str, state: str, what: str,
                         reason: str | None = None) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def ready() -> bool:
            out = cli("hosts", *self.args("show", host, "--json"))
            if out.returncode != 0:
                return False
            seen.update(json.loads(out.stdout))
            return bool(seen["state"] == state and (reason is None or reason in seen["reason"]))

        await wait_until(ready, 90, what)
        return seen

    def start_crl_server(self) -> int:
        with open(self.crl_log, "wb") as log:
            self.crl_server = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "issuer",
                 *self.args("serve-crl", "--port", "0")], cwd=REPO,
                env={**os.environ, **self.ca.env}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(rb'"event": "crl.listening".*?"port": (\d+)|"port": (\d+).*?'
                          rb'"event": "crl.listening"', self.crl_log.read_bytes())
            if m:
                return int(m.group(1) or m.group(2))
            assert self.crl_server.poll() is None, self.crl_log.read_text(errors="replace")
            time.sleep(0.3)
        raise AssertionError("serve-crl did not start listening")

    def stop(self) -> None:
        if self.crl_server is not None and self.crl_server.poll() is None:
            self.crl_server.terminate()
            try:
                self.crl_server.wait(20)
            except subprocess.TimeoutExpired:
                self.crl_server.kill()
                self.crl_server.wait()
        for p in (self.issuer, self.incidents):
            p.stop()


def fetch_crl(port: int) -> x509.CertificateRevocationList:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/crl", timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/pkix-crl"
        return x509.load_der_x509_crl(resp.read())


def revoked_serials(crl: x509.CertificateRevocationList) -> set[str]:
    return {format(r.serial_number, "x") for r in crl}


async def test_issue6_credentials_quarantine_incident_lifecycle_and_no_key_leaks(
        kafka_bootstrap: str, tmp_path: Path, fleet: Fleet) -> None:
    prefix = es.fresh_namespace("e2e")
    await es.create_topics(prefix)
    ca = write_pem_ca(tmp_path / "ca")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    p = Pipeline(prefix, ca, tmp_path)
    clean, tampered, other = fleet.hosts
    try:
        p.incidents.start()
        p.issuer.start()

        # -- 1. a clean host receives its credential; only its TPM, unchanged, opens it ------
        v1 = f"v-{clean.host_id}-1"
        await p.verdict(es.wire_verdict(v1, clean.host_id, result="PASS", at=es.now(),
                                        ek_public=clean.ek_public, pcrs=attested_pcrs(clean)))
        got = await receive_credential(bootstrap(), clean.host_id, clean,
                                       topic=p.it.credentials, verdict_id=v1,
                                       ca_certificate=ca_cert, timeout_s=90)
        assert got.certificate.public_key() == got.host_key.public_key()
        (cred,) = await p.credentials(clean.host_id)
        with pytest.raises(CredentialRejected, match="refused to import or unseal"):
            open_delivery(cred, other, host_id=clean.host_id)  # another TPM (other's EK)
        with pytest.raises(CredentialRejected, match="field host_id"):
            open_delivery(cred, other, host_id=other.host_id)  # another host's record
        forged = {**cred, "host_id": other.host_id}
        with pytest.raises(CredentialRejected, match=r"not host .*field certificate"):
            open_delivery(forged, other, host_id=other.host_id)  # relabelled: cert disagrees
        clean.extend(7, {"sha1": b"\x01" * 20, "sha256": b"\x01" * 32})
        with pytest.raises(CredentialRejected, match="refused to import or unseal"):
            open_delivery(cred, clean, host_id=clean.host_id)  # same TPM, one more extend
        st = await p.wait_state(clean.host_id, "TRUSTED", "the clean host to be TRUSTED")
        assert st["cert_serial"] == got.serial == cred["serial"]

        # -- 2. a host trusted, then tampered: quarantined, revoked, exactly one incident ----
        port = p.start_crl_server()
        host = tampered.host_id
        tpcrs = attested_pcrs(tampered)
        await p.verdict(es.wire_verdict(f"v-{host}-1", host, result="PASS", at=es.now(),
                                        ek_public=tampered.ek_public, pcrs=tpcrs))
        first = await receive_credential(bootstrap(), host, tampered, topic=p.it.credentials,
                                         verdict_id=f"v-{host}-1", ca_certificate=ca_cert,
                                         timeout_s=90)
        assert first.serial not in revoked_serials(fetch_crl(port))
        rules = ("secureboot.enabled", "bootapps.approved")
        for n in (2, 3):  # two failures: one incident, two occurrences
            await p.verdict(es.wire_verdict(f"v-{host}-{n}", host, result="FAIL", at=es.now(),
                                            ek_public=tampered.ek_public, rules=rules))
        st = await p.wait_state(host, "QUARANTINED", "the tampered host to be quarantined")
        assert st["cert_serial"] is None

        async def two_events() -> bool:
            return len(await p.incident_events(host)) >= 2

        await wait_until(two_events, 90, "the incident to open and count two occurrences")
        events = await p.incident_events(host)
        assert [(e["event"], e["occurrences"]) for e in events] == [("OPENED", 1),
                                                                    ("UPDATED", 2)]
        inc_id = events[0]["incident_id"]
        assert {e["incident_id"] for e in events} == {inc_id}
        ioc = events[0]["indicators"]
        assert [r["rule_id"] for r in ioc["failed_rules"]] == list(rules)
        assert ioc["record_id"] == f"v-{host}-2" and ioc["record"]["topic"] == p.it.verdicts
        assert ioc["evidence"] == {"topic": "attest.evidence.v1", "partition": 0, "offset": 7}
        assert len(ioc["evidence_digest"]) == 32
        st = await p.wait_state(host, "QUARANTINED", "the issuer to record the incident")
        await wait_until(lambda: _has_incident(p, host, inc_id), 60,
                         "the issuer to name the incident")

        async def crl_lists_it() -> bool:
            return first.serial in revoked_serials(fetch_crl(port))

        await wait_until(crl_lists_it, 30, "serve-crl to list the revoked certificate")
        crl_file = tmp_path / "issuer.crl"
        out = cli("issuer", *p.args("crl", "--out", str(crl_file), "--json"), env=ca.env)
        assert out.returncode == 0, out.stderr
        crl = x509.load_der_x509_crl(crl_file.read_bytes())
        assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
        entry = crl.get_revoked_certificate_by_serial_number(int(first.serial, 16))
        assert entry is not None
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
            x509.ReasonFlags.key_compromise
        assert first.serial in [r["serial"] for r in json.loads(out.stdout)["revoked"]]

        # -- 3. it attests clean while the incident is open: still quarantined -------------
        await p.verdict(es.wire_verdict(f"v-{host}-4", host, result="PASS", at=es.now(),
                                        ek_public=tampered.ek_public, pcrs=tpcrs))
        await p.wait_state(host, "QUARANTINED", "the blocked pass to be recorded",
                           reason=f"v-{host}-4 passed but incident")
        assert [c["verdict_id"] for c in await p.credentials(host)] == [f"v-{host}-1"]

        # -- 4. out-of-order and unknown commands are refused and change nothing -----------
        bad = [cli("incidents", *p.args("close", inc_id, "--actor", "carol",
                                        "--reason", "too early")),
               cli("incidents", *p.args("ack", "inc-does-not-exist", "--host", host,
                                        "--actor", "carol", "--reason", "typo"))]
        assert all(b.returncode == 0 for b in bad), [b.stderr for b in bad]

        async def rejected() -> list[dict[str, Any]]:
            return [e for e in await p.incident_events(host)
                    if e["_subject"] == "hostgate.RemediationRejected"]

        async def two_rejected() -> bool:
            return len(await rejected()) == 2

        await wait_until(two_rejected, 60, "both bad commands to be refused")
        refusals = {r["incident_id"]: r for r in await rejected()}
        assert refusals[inc_id]["reason"] == "INVALID_TRANSITION"
        assert refusals[inc_id]["status"] == "OPEN"
        assert refusals["inc-does-not-exist"]["reason"] != "INVALID_TRANSITION"
        lifecycle = [e for e in await p.incident_events(host)
                     if e["_subject"] == "hostgate.IncidentEvent"]
        assert [e["status"] for e in lifecycle] == ["OPEN", "OPEN"]  # nothing moved
        assert p.host_state(host)["state"] == "QUARANTINED"

        # -- 5. the SOC walks the incident to CLOSED; the next clean attestation releases it --
        steps = [("ack", "ACKNOWLEDGED"), ("root-cause", "ROOT_CAUSED"),
                 ("remediate", "REMEDIATED"), ("close", "CLOSED")]
        for cmd, status in steps:
            done = cli("incidents", *p.args(cmd, inc_id, "--actor", "carol",
                                            "--reason", f"post-mortem step {cmd}"))
            assert done.returncode == 0, done.stderr

            async def applied(status: str = status) -> bool:
                evs = [e for e in await p.incident_events(host)
                       if e["_subject"] == "hostgate.IncidentEvent"]
                return evs[-1]["status"] == status

            await wait_until(applied, 60, f"{cmd} to be applied")
        await p.wait_state(host, "QUARANTINED", "the issuer to see the closed incident",
                           reason="is CLOSED; waiting for a passing attestation")
        v5 = f"v-{host}-5"
        await p.verdict(es.wire_verdict(v5, host, result="PASS", at=es.now(),
                                        ek_public=tampered.ek_public, pcrs=tpcrs))
        st = await p.wait_state(host, "TRUSTED", "the host to be released by a clean pass")
        again = await receive_credential(bootstrap(), host, tampered, topic=p.it.credentials,
                                         verdict_id=v5, ca_certificate=ca_cert, timeout_s=60)
        assert st["cert_serial"] == again.serial != first.serial
        listed = cli("hosts", *p.args("list", "--state", "TRUSTED", "--json"))
        assert listed.returncode == 0, listed.stderr
        assert {h["host_id"] for h in json.loads(listed.stdout)} == {clean.host_id, host}
        assert first.serial in revoked_serials(fetch_crl(port))  # stays revoked

        # -- 6. OCSF findings on the topic validate, one Detection per failure --------------
        findings = await read_committed(p.nt.findings)
        bodies = [json.loads(r.value or b"") for r in findings]
        for r, body in zip(findings, bodies, strict=True):
            validate(body)
            ce = read_binary_headers(r.headers)
            assert ce["content-type"] == "application/json" and ce["ce_subject"] == host
        kinds = [(b["class_uid"], b["activity_id"]) for b in bodies]
        assert kinds.count((2004, 1)) == 2  # Detection Finding: each failure ...
        assert kinds.count((2004, 3)) == 2  # ... resolved when its incident closed
        assert len([k for k in kinds if k[0] == 2005]) == 6  # opened, updated, 4 steps

        # -- 7. nothing it logged or wrote holds CA key material -----------------------------
        p.stop()
        records = await es.read_all_records(prefix)
        assert sum(len(v) for v in records.values()) > 20
        blobs = {"issuer log": p.issuer.log_bytes(), "incidents log": p.incidents.log_bytes(),
                 "serve-crl log": p.crl_log.read_bytes(), **es.record_blobs(records)}
        assert blobs["issuer log"].count(b'"event": "decision"') >= 8, (
            "the issuer logged no decisions: the scan would prove nothing")
        assert es.find_secrets(blobs, ca) == []
        assert await read_committed(p.it.dlq("issuer")) == []
        assert await read_committed(p.nt.dlq("incidents")) == []
    finally:
        p.stop()
        if sys.exc_info()[0] is not None:
            for proc in (p.issuer, p.incidents):
                print(f"--- {proc.stage} log tail", proc.log_bytes()[-3000:].decode(
                    errors="replace"), sep="\n", file=sys.stderr)
        await es.delete_topics(prefix)


async def _has_incident(p: Pipeline, host: str, inc_id: str) -> bool:
    state = await asyncio.to_thread(p.host_state, host)
    return bool(state.get("incident_id") == inc_id)
