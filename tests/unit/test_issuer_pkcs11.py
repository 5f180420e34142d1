"""The issuing CA with its key in a PKCS#11 token: SoftHSM2 (Debian ``softhsm2``) in a temp dir.

The token is initialised per session with ``softhsm2-util`` under a private ``SOFTHSM2_CONF``;
the key pair is generated *inside* the token (CKA_SENSITIVE, not extractable).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.issuer.ca import IssuingCA, Secret, self_signed_ca_certificate
from services.issuer.ca_pkcs11 import load_pkcs11_ca
from services.issuer.certificates import (
    CertificateProfile,
    HostCertificateRequest,
    RevokedCertificate,
    build_crl,
    issue_host_certificate,
)
from services.issuer.errors import CaKeyError
from services.issuer.extension import attestation_binding
from services.pkcs11keys import Pkcs11EcKey
from tests.support.softhsm import TOKENS
from tests.unit.issuer_support import APPRAISED, POLICY_DIGEST

TOKEN = "hostgate-ca"
PIN, SO_PIN = TOKENS[TOKEN]
KEY_LABEL = "issuing-ca"
#: Where Debian's softhsm2 package puts the module (override with HOSTGATE_PKCS11_MODULE).
@pytest.fixture(scope="session")
def token(softhsm: Path) -> Iterator[tuple[Path, bytes]]:
    """(module, CA certificate PEM) of a fresh SoftHSM2 token holding the CA key."""
    import pkcs11
    from pkcs11.util.ec import encode_named_curve_parameters

    module = softhsm  # its token is the session's (tests.support.softhsm); the key is made here
    lib = pkcs11.lib(str(module))
    tok = lib.get_token(token_label=TOKEN)
    with tok.open(user_pin=PIN, rw=True) as session:
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC,
            {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True)
        pub, priv = params.generate_keypair(store=True, label=KEY_LABEL)
        public_key = _public_key(pub)
        ca_key = Pkcs11EcKey(priv, public_key, "test", CaKeyError)
        cert = self_signed_ca_certificate(ca_key, "hostgate HSM issuing CA",
                                          APPRAISED - dt.timedelta(days=1))
        assert priv[pkcs11.Attribute.SENSITIVE] and not priv[pkcs11.Attribute.EXTRACTABLE]
    yield module, cert.public_bytes(serialization.Encoding.PEM)


def _public_key(pub: Any) -> ec.EllipticCurvePublicKey:
    from pkcs11.util.ec import encode_ec_public_key

    key = serialization.load_der_public_key(encode_ec_public_key(pub))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


@pytest.fixture
def hsm_ca(token: tuple[Path, bytes]) -> Iterator[IssuingCA]:
    module, cert_pem = token
    ca = load_pkcs11_ca(module, TOKEN, KEY_LABEL, Secret(PIN.encode(), "test"), cert_pem)
    yield ca
    ca.close()


def test_softhsm_ca_issues_a_certificate_that_verifies(hsm_ca: IssuingCA) -> None:
    host_key = ec.generate_private_key(ec.SECP256R1())
    seal = bytes(range(32))
    cert = issue_host_certificate(hsm_ca, HostCertificateRequest(
        "host-hsm-1", host_key.public_key(), "verdict-hsm", POLICY_DIGEST, seal, APPRAISED),
        CertificateProfile())
    cert.verify_directly_issued_by(hsm_ca.certificate)
    pub = hsm_ca.certificate.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert attestation_binding(cert).verdict_id == "verdict-hsm"
    crl = build_crl(hsm_ca, [RevokedCertificate(cert.serial_number, APPRAISED,
                                                cert.not_valid_after_utc)],
                    this_update=APPRAISED, next_update=APPRAISED + dt.timedelta(hours=1))
    assert crl.is_signature_valid(pub)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert "pkcs11:hostgate-ca/issuing-ca" in repr(hsm_ca) and PIN not in repr(hsm_ca)


def test_softhsm_key_is_not_extractable(hsm_ca: IssuingCA) -> None:
    signer = hsm_ca._signer
    with pytest.raises(CaKeyError, match="not extractable"):
        signer.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_wrong_pin_and_unknown_token_or_label_are_clear_errors(token: tuple[Path, bytes]
                                                               ) -> None:
    module, cert_pem = token
    wrong = "0000-wrong-pin"
    with pytest.raises(CaKeyError, match="wrong PIN") as info:
        load_pkcs11_ca(module, TOKEN, KEY_LABEL, Secret(wrong.encode(), "env HG_PIN"), cert_pem)
    assert wrong not in str(info.value) and PIN not in str(info.value)
    with pytest.raises(CaKeyError, match="token 'nope' not found"):
        load_pkcs11_ca(module, "nope", KEY_LABEL, Secret(PIN.encode()), cert_pem)
    with pytest.raises(CaKeyError, match="no unique EC private key labelled 'other'"):
        load_pkcs11_ca(module, TOKEN, "other", Secret(PIN.encode()), cert_pem)
    foreign = self_signed_ca_certificate(ec.generate_private_key(ec.SECP256R1()), "other CA",
                                         APPRAISED)
    with pytest.raises(CaKeyError, match="does not match the CA certificate"):
        load_pkcs11_ca(module, TOKEN, KEY_LABEL, Secret(PIN.encode()),
                       foreign.public_bytes(serialization.Encoding.PEM))
    assert isinstance(x509.load_pem_x509_certificate(cert_pem), x509.Certificate)
