"""The identity of an endorsement key: SHA-256 of its SubjectPublicKeyInfo DER. Pure.

Why the key and not the marshalled TPM2B_PUBLIC: the same EK key can be presented in public
areas that differ in bits MakeCredential never reads (object attributes, auth policy), and a
TPM holding that key activates a challenge made to any of them. Hashing the key itself (what
the EK certificate certifies, and what ``same_key`` compares) gives one TPM key exactly one
identity, however its public area is dressed up. The collector's EK registry is keyed by it
and the issuer binds each host to it, so both agree on "the same EK".
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.tpm.keys import decode_public


def ek_key_sha256(ek_public: bytes) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo DER of the key in ``ek_public`` (TPM2B_PUBLIC);
    raises the tpm library's ``MalformedInput``/``Unsupported`` if it is not an RSA or ECC key."""
    key = decode_public(ek_public).crypto_key()
    return hashlib.sha256(key.public_bytes(Encoding.DER,
                                           PublicFormat.SubjectPublicKeyInfo)).digest()
