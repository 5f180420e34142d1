"""Real-TPM material for the collector's intake security tests: swtpm TPMs with EK certificates
from a private CA, enrolled into the collector's core (``tests.unit.collector_support.Harness``,
which runs ``decide`` with a state view exactly as the runtime does, codec on every edge).

Every quote here is made by swtpm through ``services.agent.tpm.AgentTpm``; nothing is signed in
software. Records are built from the documented formats (the request binding is
``request_digest_spec``), not with the agent's helpers, so the tests check the protocol and not
one implementation against itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from services.agent.swtpm import LocalCA, SwtpmInstance, provision
from services.agent.tpm import AgentTpm, AkInfo, Quote
from services.collector.config import CollectorConfig
from services.tpm.credential import CredentialChallenge
from tests.unit.collector_support import Harness, SeededRandom, only, request_digest_spec

ENROLL = "hostgate.EnrollmentRequested"
PROOF = "hostgate.ActivationProof"
ASK = "hostgate.ChallengeRequested"
EVIDENCE = "hostgate.EvidenceSubmitted"
NONCE = "hostgate.NonceIssued"
COLLECTED = "hostgate.EvidenceCollected"
REJECTED = "hostgate.IntakeRejected"
SYMBOL = {"sha1": "SHA1", "sha256": "SHA256", "sha384": "SHA384", "sha512": "SHA512"}


def now_ms() -> int:
    """The broker time the harness stamps on inputs: now (the EK certificates must be valid)."""
    return int(time.time() * 1000)


@dataclass
class TpmHost:
    """One swtpm with its EK (certificate from the lab's CA) and an AK under it."""

    host_id: str
    tpm: AgentTpm
    ak: AkInfo

    def enroll_record(self, request_id: str = "enr-1") -> dict[str, Any]:
        ek = self.tpm.ek()
        return {"request_id": request_id, "host_id": self.host_id, "agent_version": "test",
                "ek_cert": ek.certificate, "ek_public": ek.public, "ak_public": self.ak.public,
                "sent_at": now_ms(), "request_attest": None, "request_signature": None}

    def sign_binding(self, host_id: str, request_id: str, *, ak: AkInfo | None = None
                     ) -> tuple[bytes, bytes]:
        """A TPM2_Quote (one PCR) whose extraData is the request binding of ``host_id`` and
        ``request_id``: what authenticates a challenge request."""
        q = self.tpm.quote(request_digest_spec(host_id, request_id), [0], banks=("sha256",),
                           ak=ak or self.ak)
        return q.attest, q.signature

    def ask(self, request_id: str, *, offer: Sequence[tuple[str, Sequence[int]]] = (
            ("sha256", tuple(range(8))),), signed_by: TpmHost | None = None,
            bound_to: tuple[str, str] | None = None, ak: AkInfo | None = None,
            auth: tuple[bytes | None, bytes | None] | None = None) -> dict[str, Any]:
        """A ``ChallengeRequested`` for this host offering ``offer``. Signed by this host's AK
        over its own binding unless told otherwise: ``signed_by`` another TPM, ``ak`` another key
        of a TPM, ``bound_to`` another (host, request id), or ``auth`` given as is."""
        if auth is None:
            signer = signed_by or self
            host_id, rid = bound_to or (self.host_id, request_id)
            auth = signer.sign_binding(host_id, rid, ak=ak)
        return {"request_id": request_id, "host_id": self.host_id,
                "requested_pcrs": [{"bank": SYMBOL[b], "pcrs": list(p)} for b, p in offer],
                "sent_at": now_ms(), "request_attest": auth[0], "request_signature": auth[1]}

    def quote(self, nonce: bytes, selection: Sequence[tuple[str, Sequence[int]]]) -> Quote:
        """A quote over ``selection`` bank by bank (one TPM2_Quote per bank group), made with
        the AgentTpm call every version of the agent has (PCRs and banks)."""
        by_pcrs: dict[tuple[int, ...], list[str]] = {}
        for bank, pcrs in selection:
            by_pcrs.setdefault(tuple(sorted(pcrs)), []).append(bank)
        if len(by_pcrs) != 1:
            raise ValueError("this helper quotes one PCR set over one or more banks")
        ((pcrs, banks),) = by_pcrs.items()
        return self.tpm.quote(nonce, pcrs, banks=tuple(banks), ak=self.ak)

    def evidence(self, issued: Mapping[str, Any], quote: Quote, *, evidence_id: str = "ev-1"
                 ) -> dict[str, Any]:
        """``EvidenceSubmitted`` answering ``issued`` (a NonceIssued) with ``quote``."""
        return {"evidence_id": evidence_id, "host_id": self.host_id,
                "challenge_id": issued["challenge_id"], "nonce": issued["nonce"],
                "quote_attest": quote.attest, "quote_signature": quote.signature,
                "pcr_values": [{"bank": SYMBOL[b], "pcr": p, "value": v}
                               for b, vals in sorted(quote.pcr_values.items())
                               for p, v in sorted(vals.items())],
                "active_banks": ["SHA1", "SHA256"], "boot_log": b"\x00" * 64,
                "ima_log": None, "agent_version": "test", "quoted_at": now_ms(),
                "sent_at": now_ms()}


@dataclass
class TpmLab:
    """swtpm hosts sharing one EK CA, and the collector configuration trusting it."""

    ca: LocalCA
    hosts: dict[str, TpmHost]
    ca_dir: Path

    def harness(self, env: dict[str, str] | None = None, **overrides: Any) -> Harness:
        """A collector core configured from the environment (``CollectorConfig.from_env``), trusting this
        lab's EK CA, with deterministic randomness and ``overrides`` applied."""
        cfg = CollectorConfig.from_env({"HOSTGATE_EK_CA_DIR": str(self.ca_dir), **(env or {})})
        return Harness(dataclasses.replace(cfg, random_bytes=SeededRandom(), **overrides))

    def enrol(self, hx: Harness, host_id: str) -> None:
        """Enrol ``host_id``'s AK by credential activation in its own TPM."""
        host = self.hosts[host_id]
        challenge = only(hx.feed(ENROLL, host.enroll_record(), at_ms=now_ms()),
                         "hostgate.ActivationChallenge")
        secret = host.tpm.activate_credential(CredentialChallenge(
            bytes(challenge["credential_blob"]), bytes(challenge["encrypted_secret"])))
        done = hx.feed(PROOF, {"request_id": "proof-1", "host_id": host_id,
                               "challenge_id": challenge["challenge_id"], "secret_proof": secret,
                               "sent_at": now_ms()}, at_ms=now_ms())
        assert only(done, "hostgate.EnrollmentResult")["result"] == "ENROLLED", done


@contextmanager
def tpm_lab(workdir: Path, host_ids: Sequence[str]) -> Iterator[TpmLab]:
    """Provision and start one swtpm per host id (stopped on exit)."""
    ca = LocalCA.create(workdir / "ek-ca")
    ca_dir = workdir / "ek-ca-pem"
    with ExitStack() as stack:
        hosts: dict[str, TpmHost] = {}
        for host_id in host_ids:
            state = provision(workdir / host_id, ca)
            instance = stack.enter_context(SwtpmInstance(state))
            tpm = stack.enter_context(AgentTpm(instance.tcti))
            hosts[host_id] = TpmHost(host_id, tpm, tpm.create_ak("ecc"))
        ca_dir.mkdir(exist_ok=True)
        (ca_dir / "root.pem").write_bytes(ca.root_pem())
        (ca_dir / "intermediate.pem").write_bytes(ca.issuer_pem())
        x509.load_pem_x509_certificate(ca.root_pem())  # fail here, not in the collector
        yield TpmLab(ca, hosts, ca_dir)
