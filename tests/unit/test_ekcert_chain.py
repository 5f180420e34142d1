"""EK certificate chains built in-test with ``cryptography`` (a root, an intermediate and EK
certificates shaped like the TCG EK Credential Profile: critical SAN DirName, EKU 2.23.133.8.1).
The real swtpm chain is in tests/integration/test_quote_swtpm.py."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tpm2_pytss import TPM2B_PUBLIC

from services.tpm import ekcert
from services.tpm.errors import CertificateChainError

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_len: int | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    san: bool = False,
    not_after: dt.datetime = T0 + dt.timedelta(days=3650),
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True)
    )
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        dirname = x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(ekcert.OID_TPM_MANUFACTURER, "id:49465800"),
                        x509.NameAttribute(ekcert.OID_TPM_MODEL, "SLB9670"),
                        x509.NameAttribute(ekcert.OID_TPM_VERSION, "id:00070055"),
                    ]
                )
            ]
        )
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DirectoryName(dirname)]), critical=True
        )
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    def __init__(
        self, *, intermediate_is_ca: bool = True, root_path_len: int | None = None
    ) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.ica_key = ec.generate_private_key(ec.SECP256R1())
        self.ek_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(
            _name("root"),
            self.root_key,
            _name("root"),
            self.root_key,
            ca=True,
            path_len=root_path_len,
        )
        self.ica = _cert(
            _name("ica"), self.ica_key, _name("root"), self.root_key, ca=intermediate_is_ca
        )

    def ek(self, **kw: object) -> x509.Certificate:
        return _cert(x509.Name([]), self.ek_key, _name("ica"), self.ica_key, ca=False, **kw)  # type: ignore[arg-type]

    def ek_public(self) -> bytes:
        pem = self.ek_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return bytes(TPM2B_PUBLIC.from_pem(pem).marshal())


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


def test_tcg_shaped_ek_cert_verifies_and_exposes_device(pki: Pki) -> None:
    ek = pki.ek(eku=[ekcert.OID_EK_CERTIFICATE], san=True)
    v = ekcert.verify_ek_certificate(
        _der(ek), trusted=[pki.root], intermediates=[pki.ica], now=NOW, ek_public=pki.ek_public()
    )
    assert v.chain == (ek, pki.ica, pki.root) and v.has_ek_eku and v.key_matches_ek
    assert v.device == ekcert.TpmDeviceInfo("id:49465800", "SLB9670", "id:00070055", True)


def test_ek_cert_without_eku_is_accepted_but_flagged(pki: Pki) -> None:
    v = ekcert.verify_ek_certificate(
        _der(pki.ek()), trusted=[pki.root], intermediates=[pki.ica], now=NOW
    )
    assert not v.has_ek_eku and v.device is None and not v.key_matches_ek


def test_ek_cert_with_other_eku_fails(pki: Pki) -> None:
    ek = pki.ek(eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(CertificateChainError, match=r"2\.23\.133\.8\.1"):
        ekcert.verify_ek_certificate(_der(ek), trusted=[pki.root], intermediates=[pki.ica], now=NOW)


def test_expired_ek_cert_fails_at_injected_time(pki: Pki) -> None:
    ek = pki.ek(not_after=T0 + dt.timedelta(days=10))
    with pytest.raises(CertificateChainError, match="not valid at"):
        ekcert.verify_ek_certificate(_der(ek), trusted=[pki.root], intermediates=[pki.ica], now=NOW)
    ekcert.verify_ek_certificate(
        _der(ek), trusted=[pki.root], intermediates=[pki.ica], now=T0 + dt.timedelta(days=1)
    )


def test_intermediate_that_is_not_a_ca_fails() -> None:
    p = Pki(intermediate_is_ca=False)
    with pytest.raises(CertificateChainError, match="is not a CA"):
        ekcert.verify_ek_certificate(_der(p.ek()), trusted=[p.root], intermediates=[p.ica], now=NOW)


def test_root_path_length_zero_forbids_an_intermediate() -> None:
    p = Pki(root_path_len=0)
    with pytest.raises(CertificateChainError, match="pathLen"):
        ekcert.verify_ek_certificate(_der(p.ek()), trusted=[p.root], intermediates=[p.ica], now=NOW)


def test_same_names_other_keys_do_not_chain(pki: Pki) -> None:
    impostor = Pki()  # same subject names "root"/"ica", different keys
    with pytest.raises(CertificateChainError, match="no trusted or intermediate issuer"):
        ekcert.verify_ek_certificate(
            _der(impostor.ek()), trusted=[pki.root], intermediates=[pki.ica], now=NOW
        )


def test_key_mismatch_and_naive_time_fail(pki: Pki) -> None:
    with pytest.raises(CertificateChainError, match="not the TPM's EK"):
        ekcert.verify_ek_certificate(
            _der(pki.ek()),
            trusted=[pki.root],
            intermediates=[pki.ica],
            now=NOW,
            ek_public=Pki().ek_public(),
        )
    with pytest.raises(CertificateChainError, match="timezone"):
        ekcert.verify_ek_certificate(
            _der(pki.ek()), trusted=[pki.root], intermediates=[pki.ica], now=dt.datetime(2025, 1, 1)
        )


def test_garbage_is_a_chain_error() -> None:
    with pytest.raises(CertificateChainError, match="does not parse"):
        ekcert.load_certificate(b"\x30\x03\x02\x01\x00")
