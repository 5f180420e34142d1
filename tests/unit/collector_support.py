"""Material for the collector's core tests: software TPM keys in real TPM encodings, an EK PKI,
software-signed quotes, and a harness that runs ``decide`` the way the runtime does (every
input, output and state row goes through the real Avro codec; state rows are read back as the
restore path decodes them).

The keys are software keys, but every structure is the TPM's own marshalling (tpm2-pytss
TPM2B_PUBLIC / TPMS_ATTEST / TPMT_SIGNATURE), so the collector parses exactly what a TPM sends;
the real-TPM path is covered by ``tests/integration/test_agent_kafka.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from tpm2_pytss.constants import TPM2_ALG, TPM2_GENERATED, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_ECC_PARAMETER,
    TPM2B_NAME,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_QUOTE_INFO,
    TPMS_SIGNATURE_ECC,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF_OBJECT,
    TPMU_ATTEST,
    TPMU_SIGNATURE,
)

from services.collector.config import CollectorConfig
from services.collector.request_auth import rotation_binding
from services.collector.stage import stage_from_config
from services.errors import HostgateError
from services.runtime.codec import Codec
from services.runtime.faults import Fault, classify
from services.runtime.stage import Coordinates, Decision, InputRecord, Stage
from services.verifier.policy_in_force import published_record

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
NOW_MS = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)
AK_ATTRS = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH)
EK_ATTRS = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.ADMINWITHPOLICY)
TOPIC_OF = {"hostgate.EnrollmentRequested": "attest.requests.v1",
            "hostgate.ActivationProof": "attest.requests.v1",
            "hostgate.ChallengeRequested": "attest.requests.v1",
            "hostgate.EvidenceSubmitted": "attest.evidence.v1",
            "hostgate.IdentityCommand": "attest.identity.v1",
            "hostgate.EkBindingRequested": "collector.ek-bindings.v1",
            "hostgate.EkBindingDecided": "collector.ek-grants.v1"}


POLICY_TABLE = "policies"
"""The collector's global table over ``attest.policies.v1`` (as the verifier's)."""


def request_digest_spec(host_id: str, request_id: str) -> bytes:
    """The challenge-request binding, computed here from its documented format (not with the
    collector's own function, so a test compares the two)::

        SHA-256("hostgate.challenge-request.v1\\0" || u32be(len(host_id)) || host_id
                || u32be(len(request_id)) || request_id)      (ids UTF-8)
    """
    h, r = host_id.encode("utf-8"), request_id.encode("utf-8")
    return hashlib.sha256(b"hostgate.challenge-request.v1\x00" + len(h).to_bytes(4, "big") + h
                          + len(r).to_bytes(4, "big") + r).digest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: x509.Name, public: Any, issuer: x509.Name, issuer_key: Any, *, ca: bool
          ) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


@dataclass
class EkPki:
    """A manufacturer root and intermediate that issue EK certificates."""

    label: str = "Test TPM Manufacturer"
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ica_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.root = _cert(_name(f"{self.label} Root"), self.root_key.public_key(),
                          _name(f"{self.label} Root"), self.root_key, ca=True)
        self.ica = _cert(_name(f"{self.label} EK CA"), self.ica_key.public_key(),
                         _name(f"{self.label} Root"), self.root_key, ca=True)

    def issue_ek(self, public_key: Any) -> bytes:
        cert = _cert(x509.Name([]), public_key, _name(f"{self.label} EK CA"), self.ica_key,
                     ca=False)
        return cert.public_bytes(Encoding.DER)


def _pem(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def ek_public_of(key: rsa.RSAPrivateKey) -> bytes:
    sym = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES)
    sym.keyBits.aes = 128
    sym.mode.aes = TPM2_ALG.CFB
    return bytes(TPM2B_PUBLIC.from_pem(_pem(key), symmetric=sym,
                                       objectAttributes=EK_ATTRS).marshal())


def ak_public_of(key: ec.EllipticCurvePrivateKey, attrs: TPMA_OBJECT = AK_ATTRS) -> bytes:
    return bytes(TPM2B_PUBLIC.from_pem(_pem(key), objectAttributes=attrs).marshal())


@dataclass
class SoftHost:
    """One host's keys: RSA EK with a certificate from ``pki``, ECC P-256 AK."""

    host_id: str
    pki: EkPki
    ek_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ak_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    reset_count: int = 3
    clock: int = 10_000

    @property
    def ek_public(self) -> bytes:
        return ek_public_of(self.ek_key)

    @property
    def ek_cert(self) -> bytes:
        return self.pki.issue_ek(self.ek_key.public_key())

    @property
    def ak_public(self) -> bytes:
        return ak_public_of(self.ak_key)

    def quote(self, nonce: bytes, *, key: ec.EllipticCurvePrivateKey | None = None,
              pcrs: str = "sha256:0,1,2,3,4,5,6,7") -> tuple[bytes, bytes]:
        """A TPMS_ATTEST quote over ``nonce`` and its TPMT_SIGNATURE by the AK (or ``key``)."""
        signer = key or self.ak_key
        name = TPM2B_PUBLIC.unmarshal(ak_public_of(signer))[0].get_name()
        self.clock += 1000
        attest = TPMS_ATTEST(
            magic=TPM2_GENERATED.VALUE, type=TPM2_ST.ATTEST_QUOTE,
            qualifiedSigner=TPM2B_NAME(bytes(name)), extraData=TPM2B_DATA(nonce),
            clockInfo=TPMS_CLOCK_INFO(clock=self.clock, resetCount=self.reset_count,
                                      restartCount=0, safe=1),
            firmwareVersion=0x20191023,
            attested=TPMU_ATTEST(quote=TPMS_QUOTE_INFO(
                pcrSelect=TPML_PCR_SELECTION.parse(pcrs),
                pcrDigest=TPM2B_DIGEST(hashlib.sha256(b"pcrs").digest()))),
        ).marshal()
        r, s = decode_dss_signature(signer.sign(bytes(attest), ec.ECDSA(hashes.SHA256())))
        sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA, signature=TPMU_SIGNATURE(
            ecdsa=TPMS_SIGNATURE_ECC(hash=TPM2_ALG.SHA256,
                                     signatureR=TPM2B_ECC_PARAMETER(r.to_bytes(32, "big")),
                                     signatureS=TPM2B_ECC_PARAMETER(s.to_bytes(32, "big")))))
        return bytes(attest), bytes(sig.marshal())

    # -- records the agent would send -----------------------------------------------------
    def enroll(self, request_id: str = "enr-1", *, ak_public: bytes | None = None,
               ek_cert: bytes | bool | None = True,
               rotating_from: ec.EllipticCurvePrivateKey | None = None) -> dict[str, Any]:
        """An ``EnrollmentRequested`` for ``ak_public`` (default this host's AK). An AK rotation
        of an enrolled host is signed by its current AK (``rotating_from``) over the rotation
        binding, as the agent signs it; a first enrolment is not signed."""
        cert = self.ek_cert if ek_cert is True else (None if ek_cert is False else ek_cert)
        new_ak = ak_public or self.ak_public
        attest = signature = None
        if rotating_from is not None:
            name = bytes(TPM2B_PUBLIC.unmarshal(new_ak)[0].get_name())
            attest, signature = self.quote(rotation_binding(self.host_id, request_id, name),
                                           key=rotating_from, pcrs="sha256:0")
        return {"request_id": request_id, "host_id": self.host_id, "agent_version": "test",
                "ek_cert": cert, "ek_public": self.ek_public, "ak_public": new_ak,
                "sent_at": NOW_MS, "request_attest": attest, "request_signature": signature}

    def proof(self, challenge_id: str, secret: bytes, request_id: str = "proof-1"
              ) -> dict[str, Any]:
        return {"request_id": request_id, "host_id": self.host_id, "challenge_id": challenge_id,
                "secret_proof": secret, "sent_at": NOW_MS}

    def ask(self, request_id: str = "ask-1", pcrs: tuple[int, ...] = tuple(range(8)), *,
            banks: tuple[str, ...] = ("SHA256", "SHA1"), signed: bool = True,
            key: ec.EllipticCurvePrivateKey | None = None, bound_to: str | None = None
            ) -> dict[str, Any]:
        """A ``ChallengeRequested`` offering ``pcrs`` in ``banks``, signed like the agent signs
        it (a quote by the AK, or ``key``, over the request binding of this host and
        ``bound_to`` or ``request_id``) unless ``signed`` is False."""
        attest = signature = None
        if signed:
            digest = request_digest_spec(self.host_id, bound_to or request_id)
            attest, signature = self.quote(digest, key=key, pcrs="sha256:0")
        return {"request_id": request_id, "host_id": self.host_id,
                "requested_pcrs": [{"bank": b, "pcrs": list(pcrs)} for b in banks],
                "sent_at": NOW_MS, "request_attest": attest, "request_signature": signature}

    def evidence(self, challenge_id: str, nonce: bytes, *, quote_nonce: bytes | None = None,
                 key: ec.EllipticCurvePrivateKey | None = None, boot_log: bytes = b"\x00" * 64,
                 ima_log: bytes | None = None, evidence_id: str = "ev-1",
                 pcrs: str = "sha256:0,1,2,3,4,5,6,7") -> dict[str, Any]:
        """``EvidenceSubmitted`` with a quote over ``pcrs`` (tpm2-tools selection syntax;
        the default is what a challenge asks when no policy is in force)."""
        attest, sig = self.quote(nonce if quote_nonce is None else quote_nonce, key=key,
                                 pcrs=pcrs)
        return {"evidence_id": evidence_id, "host_id": self.host_id,
                "challenge_id": challenge_id, "nonce": nonce, "quote_attest": attest,
                "quote_signature": sig,
                "pcr_values": [{"bank": "SHA256", "pcr": i, "value": bytes(32)}
                               for i in range(8)],
                "active_banks": ["SHA256"], "boot_log": boot_log, "ima_log": ima_log, "agent_version": "test",
                "quoted_at": NOW_MS, "sent_at": NOW_MS}


class SeededRandom:
    """``random_bytes`` for tests: deterministic, and remembers what it handed out."""

    def __init__(self, seed: int = 1) -> None:
        self._rng = random.Random(seed)
        self.handed_out: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = self._rng.randbytes(n)
        self.handed_out.append(out)
        return out


class MapState:
    """The committed state tables, as the worker holds them after a restore."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Mapping[str, Any]]] = {}

    def get(self, table: str, key: str) -> Mapping[str, Any] | None:
        return self.tables.get(table, {}).get(key)


class Harness:
    """Runs the collector's ``decide`` like the runtime: codec on every edge, state kept."""

    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.stage: Stage = stage_from_config(cfg)
        self.codec = Codec.load()
        self.state = MapState()
        self.offset = 0
        self.encoded_state: list[bytes] = []

    def publish_policy(self, document: str, *, version: int = 1,
                       policy_id: str | None = None) -> None:
        """Put a ``PolicyPublished`` record into the policies table, as the runtime's global
        table over ``attest.policies.v1`` would hold it (through the codec, like all state)."""
        rec = published_record(document, version=version, published_at_ms=NOW_MS,
                               author="tests", policy_id=policy_id)
        blob = self.codec.encode("hostgate.PolicyPublished", rec)
        self.state.tables.setdefault(POLICY_TABLE, {})[str(rec["policy_id"])] = \
            self.codec.decode(blob).record

    def snapshot(self) -> dict[str, dict[str, Mapping[str, Any]]]:
        """A copy of every state table (to show a decision changed nothing)."""
        return {t: dict(rows) for t, rows in self.state.tables.items()}

    def feed(self, subject: str, record: Mapping[str, Any], *, at_ms: int = NOW_MS,
             key: str | None = "", follow: bool = True) -> Decision:
        """Decide one input. With ``follow`` (the default), the collector's own EK-registry
        records it produces are decided next, as the runtime would consume them; the result
        holds every decision's outside outputs and state changes, and the last one's log."""
        decision = self._feed_one(subject, record, at_ms=at_ms, key=key)
        if not follow:
            return decision
        internal = (self.cfg.topics.ek_bindings, self.cfg.topics.ek_grants)
        outputs, updates, log = [], list(decision.state_updates), dict(decision.log)
        queue = list(decision.outputs)
        while queue:
            out = queue.pop(0)
            if out.topic not in internal:
                outputs.append(out)
                continue
            nxt = self._feed_one(out.subject, out.record, at_ms=at_ms, key=out.key,
                                 topic=out.topic)
            updates.extend(nxt.state_updates)
            log.update(nxt.log)
            queue = [*nxt.outputs, *queue]
        return Decision(tuple(outputs), tuple(updates), log)

    def _feed_one(self, subject: str, record: Mapping[str, Any], *, at_ms: int,
                  key: str | None, topic: str | None = None) -> Decision:
        raw = self.codec.encode(subject, record)
        decoded = self.codec.decode(raw, expected=self.stage.input_subjects)
        self.offset += 1
        inp = InputRecord(key=str(record["host_id"]) if key == "" else key,
                          subject=decoded.subject, record=decoded.record,
                          coordinates=Coordinates(topic or TOPIC_OF[subject], 0, self.offset),
                          timestamp_ms=at_ms,
                          # one partition: every keyed record is on its key's partition
                          key_partition=None if key is None else 0)
        try:
            decision = self.stage.decide(inp, self.state)
        except HostgateError as exc:  # as the runtime maps faults (services.runtime.faults)
            if classify(exc) is not Fault.HOST or self.stage.on_host_fault is None:
                raise
            decision = self.stage.on_host_fault(inp, exc)
        for out in decision.outputs:
            self.codec.encode(out.subject, out.record)  # every output must fit its schema
        for upd in decision.state_updates:
            rows = self.state.tables.setdefault(upd.table, {})
            if upd.value is None:
                rows.pop(upd.key, None)
                continue
            blob = self.codec.encode(self.stage.tables[upd.table], upd.value)
            self.encoded_state.append(blob)
            rows[upd.key] = self.codec.decode(blob).record
        return decision


def only(decision: Decision, subject: str) -> Mapping[str, Any]:
    """The single output of ``decision``, which must be of ``subject``."""
    assert len(decision.outputs) == 1, decision
    out = decision.outputs[0]
    assert out.subject == subject, (out.subject, out.record.get("reason"),
                                    out.record.get("detail"))
    return out.record


def rejection(decision: Decision) -> tuple[str, str]:
    """(reason, detail) of a decision that must be a single rejection."""
    rec = only(decision, "hostgate.IntakeRejected")
    return str(rec["reason"]), str(rec["detail"])
