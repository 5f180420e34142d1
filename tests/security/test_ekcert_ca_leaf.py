"""An EK certificate whose leaf is a CA is refused.

A manufacturer's CA key signs EK certificates; a certificate with basicConstraints cA=TRUE is
an issuer, not an endorsement key. Accepting one as a host's EK would let whoever holds such a
CA certificate's key (an intermediate mis-filed as a leaf, a leaked sub-CA) enrol it as a "TPM"
and mint further "EK certificates" under it.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.tpm.ekcert import verify_ek_certificate
from services.tpm.errors import CertificateChainError

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool | None) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=3650)))
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    return _cert("Root", root_key, "Root", root_key, ca=True), root_key


def test_a_ca_leaf_is_not_an_ek_certificate(
        pki: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    root, root_key = pki
    leaf = _cert("Sub CA posing as an EK", ec.generate_private_key(ec.SECP256R1()), "Root",
                 root_key, ca=True)
    with pytest.raises(CertificateChainError, match="cA=TRUE"):
        verify_ek_certificate(leaf, trusted=[root], now=NOW)
