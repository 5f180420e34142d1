"""Helpers of the issuer-stage tests: an issuing CA written to files the way an operator mounts
it (encrypted PEM key, certificate, passphrase file) and the environment naming them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.unit.issuer_support import PASSPHRASE, pem_ca_material, verdict


@dataclass(frozen=True)
class CaFiles:
    """A CA on disk plus every form of its secret a leak test must look for."""

    env: dict[str, str]
    cert_pem: bytes
    key_pem_encrypted: bytes
    key_pem_clear: bytes
    key_der: bytes
    private_value: bytes
    """The EC private scalar, big-endian, 32 bytes."""
    passphrase: bytes = PASSPHRASE

    def secrets(self) -> dict[str, bytes]:
        """Byte strings that must never appear in a log line or a record."""
        body = b"".join(self.key_pem_clear.splitlines()[1:-1])
        enc_body = b"".join(self.key_pem_encrypted.splitlines()[1:-1])
        return {"passphrase": self.passphrase, "pem-body": body[:48],
                "encrypted-pem-body": enc_body[:48], "pkcs8-der": self.key_der,
                "private-scalar": self.private_value,
                "private-scalar-hex": self.private_value.hex().encode()}


def write_pem_ca(directory: Path) -> CaFiles:
    """Write a fresh CA into ``directory`` and return its environment and secrets."""
    directory.mkdir(parents=True, exist_ok=True)
    key_pem, cert_pem, key = pem_ca_material()
    (directory / "ca.key").write_bytes(key_pem)
    (directory / "ca.crt").write_bytes(cert_pem)
    (directory / "passphrase").write_bytes(PASSPHRASE + b"\n")
    (directory / "passphrase").chmod(0o600)
    env = {"HOSTGATE_ISSUER_CA_CERT": str(directory / "ca.crt"),
           "HOSTGATE_ISSUER_CA_KEY": str(directory / "ca.key"),
           "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE": str(directory / "passphrase")}
    clear = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return CaFiles(env, cert_pem, key_pem, clear, der, scalar)


def wire_verdict(verdict_id: str, **kwargs: Any) -> dict[str, Any]:
    """``tests.unit.issuer_support.verdict`` completed with the fields the current
    ``hostgate.Verdict`` schema adds (EAR status and claims), so it encodes for a topic."""
    record = verdict(verdict_id, **kwargs)
    passed = record["result"] == "PASS"
    record.setdefault("ear_status", "AFFIRMING" if passed else "CONTRAINDICATED")
    record.setdefault("ear_json", "{}")
    return record
