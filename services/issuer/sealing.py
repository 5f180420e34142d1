"""Credential packaging that only one TPM, in one measured state, can open.

The issuer holds no TPM. For each passing verdict it

1. generates a fresh host key pair (ECDSA P-256; never derived from anything, so a secret cannot
   be recomputed from public inputs),
2. draws a fresh 32-byte *content key* and encrypts the host key (PKCS#8 DER) with AES-256-GCM,
   the associated data binding it to the credential id and the certificate's SHA-256,
3. seals the content key with ``services.tpm.credential.seal_to_ek``: a KEYEDHASH object whose
   authPolicy is PolicyPCR over the *attested* PCR values, outer-wrapped to the host's EK.

The host imports the blob under its EK, satisfies PolicyPCR with its current PCRs, unseals the
content key and calls ``open_credential``. Another TPM cannot import it (seed encrypted to this
EK), and the same TPM in another state cannot unseal it (policy digest differs).

Payload format (``encrypted_payload`` in ``hostgate.CredentialIssued``)::

    "HGC1" (4) || nonce (12) || AES-256-GCM(content key, nonce, PKCS#8 DER, aad) incl. 16-byte tag
    aad = "hostgate-credential-v1\\0" || SHA-256(certificate DER) || credential id (UTF-8)

Exactly-once: a crash between sealing and commit aborts the transaction, so the credential built
in it is never visible; the re-run seals a *new* key in a new transaction.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.issuer.errors import IssuanceError, SealedPayloadError
from services.tpm.credential import (
    BANKS,
    PcrSelection,
    SealedCredential,
    policy_pcr_digest,
    seal_to_ek,
)

PAYLOAD_MAGIC = b"HGC1"
CONTENT_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: Largest encrypted payload accepted (a P-256 PKCS#8 DER is ~138 bytes).
MAX_PAYLOAD_BYTES = 4096
_AAD_LABEL = b"hostgate-credential-v1\0"


def new_host_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 host key from the OS CSPRNG."""
    return ec.generate_private_key(ec.SECP256R1())


def payload_aad(credential_id: str, certificate_der: bytes) -> bytes:
    """The AES-GCM associated data binding a payload to one certificate and credential id."""
    return _AAD_LABEL + hashlib.sha256(certificate_der).digest() + credential_id.encode("utf-8")


def pcr_values_digest(selection: PcrSelection,
                      attested_pcrs: Mapping[str, Mapping[int, bytes]]) -> bytes:
    """SHA-256 of the selected PCR values in selection order: PolicyPCR's ``pcrDigest``."""
    concat = bytearray()
    for bank, pcrs in selection.banks:
        size = BANKS[bank][1]
        for pcr in pcrs:
            value = attested_pcrs.get(bank, {}).get(pcr)
            if value is None or len(value) != size:
                raise IssuanceError(f"no {size}-byte attested value for PCR {bank}:{pcr}",
                                    field="attested_pcrs")
            concat += value
    return hashlib.sha256(concat).digest()


def seal_policy(selection: PcrSelection,
                attested_pcrs: Mapping[str, Mapping[int, bytes]]) -> bytes:
    """The PolicyPCR policy digest the credential will be sealed under (goes into the cert)."""
    pcr_values_digest(selection, attested_pcrs)  # names a missing PCR as an IssuanceError
    return policy_pcr_digest(selection, attested_pcrs)


@dataclass(frozen=True)
class SealedDelivery:
    """What travels to the host: the import blob and the payload it unlocks."""

    sealed: SealedCredential
    encrypted_payload: bytes = field(repr=False)
    pcr_digest: bytes


def seal_credential(
    untrusted_ek_public: bytes,
    selection: PcrSelection,
    attested_pcrs: Mapping[str, Mapping[int, bytes]],
    host_key: ec.EllipticCurvePrivateKey,
    *,
    credential_id: str,
    certificate_der: bytes,
) -> SealedDelivery:
    """Encrypt ``host_key`` under a fresh content key sealed to the EK and attested PCRs."""
    pcr_digest = pcr_values_digest(selection, attested_pcrs)
    content_key = AESGCM.generate_key(bit_length=CONTENT_KEY_BYTES * 8)
    payload = encrypt_payload(content_key, host_key, credential_id=credential_id,
                              certificate_der=certificate_der)
    sealed = seal_to_ek(untrusted_ek_public, content_key, selection, attested_pcrs)
    return SealedDelivery(sealed, payload, pcr_digest)


def encrypt_payload(content_key: bytes, host_key: ec.EllipticCurvePrivateKey, *,
                    credential_id: str, certificate_der: bytes) -> bytes:
    """``HGC1 || nonce || AES-256-GCM(content_key, PKCS#8(host_key), aad)`` (fresh nonce)."""
    if len(content_key) != CONTENT_KEY_BYTES:
        raise IssuanceError(f"content key must be {CONTENT_KEY_BYTES} bytes", field="content_key")
    nonce = os.urandom(NONCE_BYTES)
    plaintext = host_key.private_bytes(serialization.Encoding.DER,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext,
                                             payload_aad(credential_id, certificate_der))
    return PAYLOAD_MAGIC + nonce + ciphertext


def open_credential(content_key: bytes, encrypted_payload: bytes, *, credential_id: str,
                    certificate_der: bytes) -> ec.EllipticCurvePrivateKey:
    """Host side, after TPM2_Unseal returned ``content_key``: decrypt and load the host key.

    Fails with ``SealedPayloadError`` (byte offset into the payload) if the payload is
    malformed, was made for another certificate or credential id, or was tampered with.
    """
    if len(content_key) != CONTENT_KEY_BYTES:
        raise SealedPayloadError(f"content key is {len(content_key)} bytes, expected "
                                 f"{CONTENT_KEY_BYTES}", offset=0)
    if len(encrypted_payload) > MAX_PAYLOAD_BYTES:
        raise SealedPayloadError(f"payload is over {MAX_PAYLOAD_BYTES} bytes",
                                 offset=MAX_PAYLOAD_BYTES)
    header = len(PAYLOAD_MAGIC) + NONCE_BYTES
    if len(encrypted_payload) < header + TAG_BYTES:
        raise SealedPayloadError("payload is truncated", offset=len(encrypted_payload))
    if encrypted_payload[:4] != PAYLOAD_MAGIC:
        raise SealedPayloadError("payload does not start with HGC1", offset=0)
    nonce = encrypted_payload[4:header]
    try:
        plaintext = AESGCM(content_key).decrypt(nonce, encrypted_payload[header:],
                                                payload_aad(credential_id, certificate_der))
    except InvalidTag:
        raise SealedPayloadError("payload does not authenticate for this certificate and "
                                 "credential id", offset=header) from None
    try:
        key = serialization.load_der_private_key(plaintext, password=None)
    except ValueError:
        raise SealedPayloadError("decrypted payload is not a PKCS#8 key", offset=header
                                 ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SealedPayloadError("decrypted payload is not an EC key", offset=header)
    return key


__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PAYLOAD_MAGIC",
    "SealedDelivery",
    "encrypt_payload",
    "new_host_key",
    "open_credential",
    "payload_aad",
    "pcr_values_digest",
    "seal_credential",
    "seal_policy",
]
