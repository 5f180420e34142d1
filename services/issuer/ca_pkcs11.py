"""An issuing CA whose EC key stays in a PKCS#11 token (SoftHSM2, a real HSM).

``cryptography``'s builders call ``sign(data, ECDSA(hash))`` on whatever
``EllipticCurvePrivateKey`` they are given, so the token is plugged in through an adapter
(``_Pkcs11EcKey``) that hashes locally and has the token do a raw CKM_ECDSA: the certificate and
CRL are still built by ``cryptography``'s own DER code, and no TBS is assembled by hand. The PIN
never leaves its :class:`~services.issuer.ca.Secret`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from services.issuer.ca import IssuingCA, Secret, check_key_pair, load_ca_certificate
from services.issuer.errors import CaKeyError

__all__ = ["load_pkcs11_ca"]


class _Pkcs11EcKey(ec.EllipticCurvePrivateKey):
    """An EC private key that lives in a PKCS#11 token: ``sign`` hashes here and has the token
    do raw CKM_ECDSA; nothing else is possible (the key is not extractable)."""

    def __init__(self, key: Any, public: ec.EllipticCurvePublicKey, label: str) -> None:
        self._key = key
        self._public = public
        self._label = label

    def sign(self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
             ) -> bytes:
        import pkcs11

        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)
        else:
            h = hashes.Hash(algorithm)
            h.update(bytes(data))
            digest = h.finalize()
        raw = bytes(self._key.sign(digest, mechanism=pkcs11.Mechanism.ECDSA))
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                    int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise CaKeyError(f"PKCS#11 key {self._label} is for signing only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise CaKeyError(f"PKCS#11 key {self._label} is not extractable")

    def private_bytes(self, encoding: serialization.Encoding,
                      format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        raise CaKeyError(f"PKCS#11 key {self._label} is not extractable")

    def __copy__(self) -> _Pkcs11EcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _Pkcs11EcKey:
        return self

    def __repr__(self) -> str:
        return f"_Pkcs11EcKey(label={self._label!r})"


def load_pkcs11_ca(module: Path, token_label: str, key_label: str, pin: Secret,
                   cert_pem: bytes) -> IssuingCA:
    """An ``IssuingCA`` whose EC key stays in a PKCS#11 token (e.g. SoftHSM2, a real HSM).

    Opens one logged-in session kept for the CA's lifetime (``IssuingCA.close`` ends it) and
    checks the token key against the certificate by signing a probe.
    """
    import pkcs11
    from pkcs11 import exceptions as p11e

    where = f"pkcs11:{token_label}/{key_label}"
    cert = load_ca_certificate(cert_pem, f"for {where}")
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise CaKeyError(f"CA certificate for {where} is not for an EC key (PKCS#11 CAs are EC)")
    try:
        lib = pkcs11.lib(str(module))
    except (RuntimeError, OSError) as exc:
        raise CaKeyError(f"cannot load the PKCS#11 module {module}: {type(exc).__name__}"
                         ) from None
    try:
        token = lib.get_token(token_label=token_label)
    except (p11e.NoSuchToken, p11e.MultipleTokensReturned):
        raise CaKeyError(f"PKCS#11 token {token_label!r} not found (or not unique) in {module}"
                         ) from None
    try:
        session = token.open(user_pin=pin.reveal().decode())
    except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
        raise CaKeyError(f"PKCS#11 login to token {token_label!r} failed: wrong PIN "
                         f"(from {pin.source})") from None
    except p11e.PinLocked:
        raise CaKeyError(f"PKCS#11 token {token_label!r}: the user PIN is locked") from None
    except (p11e.PKCS11Error, UnicodeDecodeError) as exc:
        raise CaKeyError(f"PKCS#11 login to token {token_label!r} failed: "
                         f"{type(exc).__name__}") from None
    try:
        key = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, pkcs11.KeyType.EC,
                              label=key_label)
    except (p11e.NoSuchKey, p11e.MultipleObjectsReturned):
        session.close()
        raise CaKeyError(f"no unique EC private key labelled {key_label!r} in token "
                         f"{token_label!r}") from None
    signer = _Pkcs11EcKey(key, pub, where)
    try:
        check_key_pair(signer, cert, where)
    except (CaKeyError, p11e.PKCS11Error) as exc:
        session.close()
        if isinstance(exc, CaKeyError):
            raise
        raise CaKeyError(f"PKCS#11 key {where} cannot sign: {type(exc).__name__}") from None
    return IssuingCA(cert, signer, where, session.close)
