"""An issuing CA whose EC key stays in a PKCS#11 token (SoftHSM2, a real HSM).

``cryptography``'s builders call ``sign(data, ECDSA(hash))`` on whatever
``EllipticCurvePrivateKey`` they are given, so the token is plugged in through an adapter
(``services.pkcs11keys.Pkcs11EcKey``) that hashes locally and has the token do a raw CKM_ECDSA:
the certificate and CRL are still built by ``cryptography``'s own DER code, and no TBS is
assembled by hand. The PIN never leaves its :class:`~services.issuer.ca.Secret` but for the
login itself.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from services.issuer.ca import IssuingCA, Secret, check_key_pair, load_ca_certificate
from services.issuer.errors import CaKeyError
from services.pkcs11keys import Pkcs11EcKey, open_token_key

__all__ = ["load_pkcs11_ca"]


def load_pkcs11_ca(module: Path, token_label: str, key_label: str, pin: Secret,
                   cert_pem: bytes) -> IssuingCA:
    """An ``IssuingCA`` whose EC key stays in a PKCS#11 token (e.g. SoftHSM2, a real HSM).

    Opens one logged-in session kept for the CA's lifetime (``IssuingCA.close`` ends it) and
    checks the token key against the certificate by signing a probe.
    """
    from pkcs11 import exceptions as p11e

    where = f"pkcs11:{token_label}/{key_label}"
    cert = load_ca_certificate(cert_pem, f"for {where}")
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise CaKeyError(f"CA certificate for {where} is not for an EC key (PKCS#11 CAs are EC)")
    found = open_token_key(module, token_label, key_label, pin.reveal(), error=CaKeyError,
                           pin_source=pin.source)
    signer = Pkcs11EcKey(found.private, pub, where, CaKeyError)
    try:
        check_key_pair(signer, cert, where)
    except (CaKeyError, p11e.PKCS11Error) as exc:
        found.close()
        if isinstance(exc, CaKeyError):
            raise
        raise CaKeyError(f"PKCS#11 key {where} cannot sign: {type(exc).__name__}") from None
    return IssuingCA(cert, signer, where, found.close)
