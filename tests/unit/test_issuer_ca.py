"""The issuing CA: PEM and PKCS#11 (SoftHSM2) keys, host certificate profile, CRLs."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.issuer.ca import Secret, load_pem_ca, load_pem_ca_files, read_secret
from services.issuer.certificates import (
    CertificateProfile,
    HostCertificateRequest,
    RevokedCertificate,
    build_crl,
    issue_host_certificate,
    serial_for_verdict,
)
from services.issuer.errors import CaKeyError, ExtensionError, IssuanceError
from services.issuer.extension import ATTESTATION_OID, AttestationBinding, attestation_binding
from tests.unit.issuer_support import APPRAISED, PASSPHRASE, POLICY_DIGEST, pem_ca, pem_ca_material

SEAL = hashlib.sha256(b"policy pcr").digest()


def _request(verdict_id: str = "verdict-abc", host_id: str = "host-0007"
             ) -> tuple[HostCertificateRequest, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return HostCertificateRequest(host_id, key.public_key(), verdict_id, POLICY_DIGEST, SEAL,
                                  APPRAISED), key


def test_host_certificate_fields_follow_the_profile() -> None:
    ca, ca_key = pem_ca()
    req, host_key = _request()
    cert = issue_host_certificate(ca, req, CertificateProfile(crl_url="http://crl.example/ca.crl"))
    cert.verify_directly_issued_by(ca.certificate)
    ca_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                               ec.ECDSA(hashes.SHA256()))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host-0007"
    assert cert.issuer == ca.certificate.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:hostgate:host:host-0007"]
    assert san.get_values_for_type(x509.DNSName) == []
    # Validity from the verdict's appraised_at (5 min backdate, 24 h), never from the clock.
    assert cert.not_valid_before_utc == APPRAISED - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == APPRAISED + dt.timedelta(hours=24)
    assert cert.public_key() == host_key.public_key()
    assert cert.serial_number == serial_for_verdict("verdict-abc")
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ext = cert.extensions.get_extension_for_oid(ATTESTATION_OID)
    assert not ext.critical
    assert attestation_binding(cert) == AttestationBinding("verdict-abc", POLICY_DIGEST, SEAL)
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name == [x509.UniformResourceIdentifier("http://crl.example/ca.crl")]


def test_validity_is_configurable_and_times_come_only_from_the_input() -> None:
    ca, _ = pem_ca()
    req, _ = _request()
    profile = CertificateProfile(validity=dt.timedelta(hours=2), backdate=dt.timedelta(0))
    a = issue_host_certificate(ca, req, profile)
    later = HostCertificateRequest(req.host_id, req.public_key, req.verdict_id, POLICY_DIGEST,
                                   SEAL, APPRAISED + dt.timedelta(days=400))
    b = issue_host_certificate(ca, later, profile)
    assert (a.not_valid_before_utc, a.not_valid_after_utc) == (
        APPRAISED, APPRAISED + dt.timedelta(hours=2))
    assert b.not_valid_before_utc == APPRAISED + dt.timedelta(days=400)
    with pytest.raises(IssuanceError, match="validity"):
        CertificateProfile(validity=dt.timedelta(days=365))


def test_serial_is_deterministic_positive_and_fits_20_octets() -> None:
    serials = {serial_for_verdict(f"v-{i}") for i in range(2000)}
    assert len(serials) == 2000
    assert all(0 < s < 2**159 for s in serials)
    assert serial_for_verdict("v-1") == serial_for_verdict("v-1")
    expected = int.from_bytes(hashlib.sha256(b"hostgate-cert-serial\0v-1").digest()[:20],
                              "big") >> 1
    assert serial_for_verdict("v-1") == expected
    # < 2**159: the DER INTEGER needs no sign-padding octet beyond 20 octets.
    assert max(s.bit_length() for s in serials) <= 159


@pytest.mark.parametrize("host_id", ["", "-lead", "a" * 65, "host/1", "hôte", "a b"])
def test_bad_host_ids_are_refused(host_id: str) -> None:
    ca, _ = pem_ca()
    with pytest.raises(IssuanceError, match="host id") as info:
        issue_host_certificate(ca, _request(host_id=host_id)[0])
    assert info.value.field == "host_id"


def test_attestation_extension_der_is_strict() -> None:
    binding = AttestationBinding("v" * 200, POLICY_DIGEST, SEAL)
    der = binding.to_der()
    assert der[:4] == b"\x30\x82\x01\x12"  # 274-byte body: two-octet long-form length
    assert AttestationBinding.from_der(der) == binding
    with pytest.raises(ExtensionError, match="trailing") as info:
        AttestationBinding.from_der(der + b"\x00")
    assert info.value.offset == len(der)
    with pytest.raises(ExtensionError, match="non-minimal"):
        AttestationBinding.from_der(b"\x30\x81\x05" + der[3:8])
    with pytest.raises(ExtensionError, match="runs past"):
        AttestationBinding.from_der(der[:-1])
    short = AttestationBinding("v", POLICY_DIGEST[:31] + b"", SEAL).to_der()
    with pytest.raises(ExtensionError, match="32 bytes"):
        AttestationBinding.from_der(short)


# -- encrypted PEM ---------------------------------------------------------------------------


def test_wrong_passphrase_is_a_clear_error_without_the_passphrase() -> None:
    key_pem, cert_pem, _ = pem_ca_material()
    wrong = b"not-the-passphrase-42"
    with pytest.raises(CaKeyError) as info:
        load_pem_ca(key_pem, cert_pem, Secret(wrong, "file ca.pass"), where="ca-key.pem")
    message = str(info.value)
    assert "cannot decrypt the CA key ca-key.pem" in message
    assert "wrong passphrase" in message and "file ca.pass" in message
    for secret in (wrong, PASSPHRASE):
        assert secret.decode() not in message and secret.decode() not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unencrypted_or_mismatched_keys_are_refused() -> None:
    key_pem, cert_pem, key = pem_ca_material()
    clear = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    with pytest.raises(CaKeyError, match="not an encrypted PEM key"):
        load_pem_ca(clear, cert_pem, Secret(PASSPHRASE))
    other_key_pem, _, _ = pem_ca_material()
    with pytest.raises(CaKeyError, match="does not match the CA certificate"):
        load_pem_ca(other_key_pem, cert_pem, Secret(PASSPHRASE))
    with pytest.raises(CaKeyError, match=r"not a PEM X\.509"):
        load_pem_ca(key_pem, b"junk", Secret(PASSPHRASE))


def test_p384_ca_signs_with_sha384() -> None:
    key_pem, cert_pem, _key = pem_ca_material(ec.SECP384R1())
    ca = load_pem_ca(key_pem, cert_pem, Secret(PASSPHRASE))
    cert = issue_host_certificate(ca, _request()[0])
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    cert.verify_directly_issued_by(ca.certificate)


def test_passphrase_from_file_or_env(tmp_path: Path) -> None:
    key_pem, cert_pem, _ = pem_ca_material()
    (tmp_path / "ca.key").write_bytes(key_pem)
    (tmp_path / "ca.crt").write_bytes(cert_pem)
    (tmp_path / "ca.pass").write_bytes(PASSPHRASE + b"\n")
    secret = read_secret(file=tmp_path / "ca.pass")
    assert secret.reveal() == PASSPHRASE and PASSPHRASE.decode() not in repr(secret)
    ca = load_pem_ca_files(tmp_path / "ca.key", tmp_path / "ca.crt", secret)
    assert "ca.key" in repr(ca) and "PRIVATE" not in repr(ca)
    env = read_secret(env="HG_CA_PASS", environ={"HG_CA_PASS": PASSPHRASE.decode()})
    assert env.reveal() == PASSPHRASE
    with pytest.raises(CaKeyError, match=r"HG_CA_PASS .* is not set"):
        read_secret(env="HG_CA_PASS", environ={})
    with pytest.raises(CaKeyError, match="either"):
        read_secret()
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(CaKeyError, match="is empty"):
        read_secret(file=tmp_path / "empty")


# -- CRL -------------------------------------------------------------------------------------


def test_crl_lists_revoked_serials_and_verifies() -> None:
    ca, ca_key = pem_ca()
    now = APPRAISED + dt.timedelta(hours=1)
    entries = [
        RevokedCertificate(serial_for_verdict("v-2"), now, now + dt.timedelta(hours=20)),
        RevokedCertificate(serial_for_verdict("v-1"), now - dt.timedelta(minutes=5),
                           now + dt.timedelta(hours=3), x509.ReasonFlags.superseded),
        # expired more than one CRL interval ago: dropped
        RevokedCertificate(77, now - dt.timedelta(days=3), now - dt.timedelta(days=2)),
        # expired within the last interval: still listed once more
        RevokedCertificate(78, now - dt.timedelta(days=1), now - dt.timedelta(minutes=30)),
    ]
    crl = build_crl(ca, entries, this_update=now, next_update=now + dt.timedelta(hours=1))
    assert crl.is_signature_valid(ca_key.public_key())
    assert crl.issuer == ca.certificate.subject
    serials = [r.serial_number for r in crl]
    assert serials == sorted([serial_for_verdict("v-1"), serial_for_verdict("v-2"), 78])
    got = crl.get_revoked_certificate_by_serial_number(serial_for_verdict("v-1"))
    assert got is not None
    assert got.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.superseded
    assert crl.last_update_utc == now
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    later = build_crl(ca, entries, this_update=now + dt.timedelta(minutes=1),
                      next_update=now + dt.timedelta(hours=2))
    assert later.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
    other, _ = pem_ca()
    assert not crl.is_signature_valid(other.certificate.public_key())  # type: ignore[arg-type]
