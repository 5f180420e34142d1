"""``hostgate agent credential`` against the real broker and real swtpm TPMs.

Credentials are built by the issuer's own core (``apply_verdict``: the verdict carries the TPM's
real EK public and its real PCR values) and published, Avro-encoded, to an isolated
``<namespace>.attest.credentials.v1``; the command runs as a separate process, as on a host.
One TPM opens them; another TPM, and the same TPM after one more measurement, must not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.agent.swtpm import LocalCA, SwtpmInstance, provision
from services.agent.tpm import AgentTpm
from services.demo.orchestrator import ISSUER_CA_ENV, create_issuing_ca
from services.errors import ExitCode
from services.issuer.config import IssuerConfig, load_ca_from_env
from services.issuer.core import apply_verdict
from services.runtime.codec import Codec
from services.runtime.topics import TopicLayout, TopicSpec, ensure_topics
from tests.integration.issuer_e2e_support import wire_verdict
from tests.integration.runtime_support import produce_raw

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm]
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Tpms:
    a: SwtpmInstance
    b: SwtpmInstance


@pytest.fixture(scope="module")
def tpms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tpms]:
    base = tmp_path_factory.mktemp("credcli")
    ca = LocalCA.create(base / "ek-ca")
    a = SwtpmInstance(provision(base / "a", ca)).start()
    try:
        b = SwtpmInstance(provision(base / "b", ca)).start()
        try:
            yield Tpms(a, b)
        finally:
            b.stop()
    finally:
        a.stop()


def _ek_and_pcrs(tcti: str) -> tuple[bytes, dict[int, bytes]]:
    """The TPM's RSA EK public and its SHA-256 PCRs 0-7 (one short connection: swtpm serves
    one client at a time)."""
    with AgentTpm(tcti) as tpm:
        return tpm.ek().public, tpm.pcr_read([("sha256", range(8))])["sha256"]


def _hostgate(*argv: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOSTGATE_BOOTSTRAP": bootstrap}
    return subprocess.run([sys.executable, "-m", "services.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


async def _publish(topic: str, records: list[Mapping[str, Any]]) -> None:
    codec = Codec.load()
    await produce_raw(topic, [(r["host_id"].encode(),
                               codec.encode("hostgate.CredentialIssued", r), [])
                              for r in records])


async def _delete(topic: str, bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def test_agent_credential_opens_only_in_its_tpm_and_state(
        tpms: Tpms, tmp_path: Path, kafka_bootstrap: str) -> None:
    ns = f"credcli-{uuid.uuid4().hex[:8]}"
    topic = f"{ns}.attest.credentials.v1"
    asyncio.run(ensure_topics(kafka_bootstrap, specs=[TopicSpec(topic, "agent credential test")],
                              layout=TopicLayout(3, 1)))
    ca_paths = create_issuing_ca(tmp_path / "ca", dt.datetime.now(dt.UTC))
    ca = load_ca_from_env({ISSUER_CA_ENV[k]: str(p) for k, p in ca_paths.items()})
    cfg = IssuerConfig(ca=ca)
    host = f"credcli-{uuid.uuid4().hex[:6]}"
    ek_public, pcrs = _ek_and_pcrs(tpms.a.tcti)
    # two passing verdicts for the host: the command must take the newer credential
    creds = []
    for n in (1, 2):
        at = dt.datetime.now(dt.UTC)
        out = apply_verdict(wire_verdict(f"v-{host}-{n}", host, result="PASS", at=at,
                                         ek_public=ek_public, pcrs=pcrs), None, cfg)
        assert out.credential is not None
        creds.append(out.credential)
    assert creds[0]["serial"] != creds[1]["serial"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    stale_key = out_dir / f"{host}.key"
    stale_key.write_bytes(b"an older key file someone left world-readable\n")
    stale_key.chmod(0o644)
    common = ("--host-id", host, "--bootstrap", kafka_bootstrap, "--topic-namespace", ns,
              "--ca-cert", str(ca_paths["cert"]), "--timeout", "30")
    try:
        asyncio.run(_publish(topic, creds))

        # 1. this TPM, unchanged since the quote: the newest credential opens
        run = _hostgate("agent", "credential", *common, "--tcti", tpms.a.tcti,
                        "--out", str(out_dir), "--json", bootstrap=kafka_bootstrap)
        assert run.returncode == 0, run.stderr[-3000:]
        doc = json.loads(run.stdout)
        assert (doc["host_id"], doc["serial"], doc["credential_id"]) == (
            host, creds[1]["serial"], creds[1]["credential_id"])
        assert doc["record"].startswith(f"{topic}[")
        cert = x509.load_pem_x509_certificate(Path(doc["certificate"]).read_bytes())
        key_path = Path(doc["key"])
        assert key_path == stale_key
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert format(cert.serial_number, "x") == creds[1]["serial"]
        assert cert.public_key() == key.public_key()
        cert.verify_directly_issued_by(ca.certificate)
        assert "PRIVATE KEY" not in run.stdout + run.stderr
        assert sorted(p.name for p in out_dir.iterdir()) == [f"{host}.crt", f"{host}.key"]

        # the human-readable form names the files and the serial
        again = _hostgate("agent", "credential", *common, "--tcti", tpms.a.tcti,
                          "--out", str(tmp_path / "out2"), bootstrap=kafka_bootstrap)
        assert again.returncode == 0, again.stderr[-3000:]
        assert creds[1]["serial"] in again.stdout and "mode 0600" in again.stdout

        # 2. another TPM cannot import it: one clear line, no traceback, nothing written
        other = _hostgate("agent", "credential", *common, "--tcti", tpms.b.tcti,
                          "--out", str(tmp_path / "other"), bootstrap=kafka_bootstrap)
        assert other.returncode == ExitCode.ERROR
        assert "not sealed to this TPM's EK" in other.stderr, other.stderr
        assert "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "other").exists()

        # 3. the same TPM after one more measurement: sealed to it, but the state moved
        with AgentTpm(tpms.a.tcti) as tpm:
            tpm.extend(7, {"sha1": b"\x01" * 20, "sha256": b"\x01" * 32})
        moved = _hostgate("agent", "credential", *common, "--tcti", tpms.a.tcti,
                          "--out", str(tmp_path / "moved"), bootstrap=kafka_bootstrap)
        assert moved.returncode == ExitCode.ERROR
        assert "no longer hold the attested values" in moved.stderr, moved.stderr
        assert "Traceback" not in moved.stderr

        # 4. a host with no credential on the topic: a timeout that says so
        none = _hostgate("agent", "credential", "--host-id", f"{host}-none", "--bootstrap",
                         kafka_bootstrap, "--topic-namespace", ns, "--timeout", "3",
                         "--tcti", tpms.a.tcti, "--out", str(tmp_path / "none"),
                         bootstrap=kafka_bootstrap)
        assert none.returncode == ExitCode.UNAVAILABLE  # nothing there yet: try again
        assert f"no credential for host {host}-none on {topic}" in none.stderr, none.stderr
    finally:
        asyncio.run(_delete(topic, kafka_bootstrap))
