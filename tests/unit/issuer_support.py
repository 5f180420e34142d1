"""Shared helpers of the issuer tests: an encrypted-PEM CA, EK public areas, verdict records."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.issuer.ca import IssuingCA, Secret, load_pem_ca, self_signed_ca_certificate

UTC = dt.UTC
APPRAISED = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
PASSPHRASE = b"correct horse battery staple 7"
POLICY_DIGEST = hashlib.sha256(b"policy document v3").digest()
PCRS = {i: hashlib.sha256(b"pcr%d" % i).digest() for i in range(10)}


def pem_ca_material(curve: ec.EllipticCurve | None = None) -> tuple[bytes, bytes,
                                                                     ec.EllipticCurvePrivateKey]:
    """(encrypted key PEM, certificate PEM, the key) of a fresh issuing CA."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    cert = self_signed_ca_certificate(key, "hostgate test issuing CA",
                                      APPRAISED - dt.timedelta(days=30))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(PASSPHRASE))
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), key


def pem_ca() -> tuple[IssuingCA, ec.EllipticCurvePrivateKey]:
    key_pem, cert_pem, key = pem_ca_material()
    return load_pem_ca(key_pem, cert_pem, Secret(PASSPHRASE, "test"), where="ca-key.pem"), key


def software_ek_public() -> bytes:
    """A TPM2B_PUBLIC with the EK template attributes around a software RSA-2048 key."""
    from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_SYM_DEF_OBJECT

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    sym = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES)
    sym.keyBits.aes = 128
    sym.mode.aes = TPM2_ALG.CFB
    pub = TPM2B_PUBLIC.from_pem(
        pem, symmetric=sym,
        objectAttributes=(TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM
                          | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                          | TPMA_OBJECT.ADMINWITHPOLICY))
    return bytes(pub.marshal())


def attested(pcrs: dict[int, bytes], bank: str = "SHA256") -> list[dict[str, Any]]:
    return [{"bank": bank, "pcr": i, "value": v} for i, v in sorted(pcrs.items())]


def verdict(verdict_id: str, *, result: str = "PASS", host_id: str = "host-0007",
            at: dt.datetime = APPRAISED, ek_public: bytes = b"", rules: tuple[str, ...] = (),
            pcrs: dict[int, bytes] | None = None) -> dict[str, Any]:
    """A ``hostgate.Verdict`` record as the codec decodes it (only the fields the issuer reads
    are meaningful; the rest are filled so the record is whole)."""
    coords = {"topic": "attest.evidence.v1", "partition": 0, "offset": 1}
    tiers = dict.fromkeys(("instance_identity", "configuration", "executables", "file_system",
                           "hardware", "runtime_opaque", "storage_opaque", "sourced_data"),
                          "NONE")
    return {
        "verdict_id": verdict_id, "host_id": host_id, "result": result,
        "failed_rules": [{"rule_id": r, "sentence": f"{r} broke", "event": None} for r in rules],
        "claims_json": "{}", "policy_id": "default", "policy_version": 3,
        "policy_digest": POLICY_DIGEST, "evidence": coords,
        "evidence_digest": hashlib.sha256(verdict_id.encode()).digest(),
        "collected": {**coords, "topic": "attest.collected.v1"},
        "trustworthiness": tiers, "ear_status": "NONE", "ear_json": "{}",
        "quote_counters": None, "ek_public": ek_public,
        "ak_name": b"\x00\x0b" + bytes(32),
        "attested_pcrs": attested(PCRS if pcrs is None else pcrs) if result == "PASS" else [],
        "appraised_at": at,
    }


def incident(incident_id: str, event: str, status: str, at: dt.datetime, *,
             host_id: str = "host-0007") -> dict[str, Any]:
    """The fields of a ``hostgate.IncidentEvent`` the issuer reads."""
    return {"event_id": f"ev-{incident_id}-{event}-{at.timestamp()}", "incident_id": incident_id,
            "host_id": host_id, "event": event, "status": status,
            "resolved": status in ("REMEDIATED", "CLOSED"), "occurred_at": at}
