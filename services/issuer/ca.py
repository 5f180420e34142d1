"""The issuing CA: its certificate and a key that never shows itself.

Trust boundary: the CA key comes from an operator-supplied encrypted PEM file
(:func:`load_pem_ca`) or a PKCS#11 token (:mod:`services.issuer.ca_pkcs11`) and never leaves
``IssuingCA`` (no repr, no error message, no log carries it, its passphrase or its PIN). What
the CA signs, and what it puts in it, is :mod:`services.issuer.certificates`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from services.issuer.errors import CaKeyError

__all__ = [
    "MAX_PEM_BYTES",
    "CaPrivateKey",
    "IssuingCA",
    "Secret",
    "check_key_pair",
    "load_ca_certificate",
    "load_pem_ca",
    "load_pem_ca_files",
    "read_secret",
    "self_signed_ca_certificate",
]

#: Largest passphrase/PIN file read (anything larger is not a passphrase).
MAX_SECRET_BYTES = 1024
#: Largest CA key or certificate PEM read.
MAX_PEM_BYTES = 64 * 1024


# -- secrets -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Secret:
    """A passphrase or PIN. Its repr and str never show the value; ``reveal()`` does."""

    _value: bytes = field(repr=False)
    source: str = "secret"

    def reveal(self) -> bytes:
        """The secret bytes, for the one call that needs them."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(source={self.source!r}, value=<redacted>)"

    __str__ = __repr__


def read_secret(*, file: Path | None = None, env: str | None = None,
                environ: dict[str, str] | None = None) -> Secret:
    """Read a passphrase/PIN from exactly one of a file (one trailing newline dropped) or an
    environment variable. Errors name the file or variable, never the content."""
    if (file is None) == (env is None):
        raise CaKeyError("give the CA passphrase either as a file or as an environment variable")
    if file is not None:
        try:
            with file.open("rb") as fh:
                raw = fh.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise CaKeyError(f"cannot read the passphrase file {file}: {exc.strerror}") from None
        if len(raw) > MAX_SECRET_BYTES:
            raise CaKeyError(f"passphrase file {file} is over {MAX_SECRET_BYTES} bytes")
        value, source = raw.removesuffix(b"\n").removesuffix(b"\r"), f"file {file}"
    else:
        assert env is not None
        text = (environ if environ is not None else dict(os.environ)).get(env)
        if text is None:
            raise CaKeyError(f"environment variable {env} (CA passphrase) is not set")
        value, source = text.encode(), f"environment variable {env}"
    if not value:
        raise CaKeyError(f"the CA passphrase from {source} is empty")
    return Secret(value, source)



# -- the CA ----------------------------------------------------------------------------------

CaPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, eq=False)
class IssuingCA:
    """An issuing CA: its certificate and a signer that never shows itself.

    Build with ``load_pem_ca`` or ``load_pkcs11_ca``. ``source`` says where the key lives
    (``pem:<path>`` or ``pkcs11:<token>/<label>``) and is safe to log.
    """

    certificate: x509.Certificate
    _signer: CaPrivateKey = field(repr=False)
    source: str
    _close: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def hash_algorithm(self) -> hashes.SHA256 | hashes.SHA384:
        """SHA-384 for a P-384 key, SHA-256 otherwise."""
        key = self._signer
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
            return hashes.SHA384()
        return hashes.SHA256()

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """``builder`` signed by the CA key (in :attr:`hash_algorithm`)."""
        return builder.sign(self._signer, self.hash_algorithm)

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder
                 ) -> x509.CertificateRevocationList:
        """``builder`` signed by the CA key (in :attr:`hash_algorithm`)."""
        return builder.sign(self._signer, self.hash_algorithm)

    def close(self) -> None:
        """Release the token session (PKCS#11); a no-op for a PEM key."""
        if self._close is not None:
            self._close()

    def __repr__(self) -> str:
        return f"IssuingCA(subject={self.certificate.subject.rfc4514_string()!r}, " \
               f"source={self.source!r})"

    __str__ = __repr__


def _check_ca_certificate(cert: x509.Certificate, where: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CaKeyError(f"CA certificate {where} has no basicConstraints") from None
    if not bc.ca:
        raise CaKeyError(f"CA certificate {where} is not a CA (basicConstraints cA=false)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not (ku.key_cert_sign and ku.crl_sign):
        raise CaKeyError(f"CA certificate {where} lacks keyCertSign/cRLSign in keyUsage")


def load_ca_certificate(cert_pem: bytes, where: str) -> x509.Certificate:
    """The CA certificate in ``cert_pem``, checked to be a CA (``where`` names it in errors)."""
    if len(cert_pem) > MAX_PEM_BYTES:
        raise CaKeyError(f"CA certificate {where} is over {MAX_PEM_BYTES} bytes")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CaKeyError(f"CA certificate {where} is not a PEM X.509 certificate") from None
    _check_ca_certificate(cert, where)
    return cert


def check_key_pair(signer: CaPrivateKey, cert: x509.Certificate, where: str) -> None:
    """Sign a probe with the key and verify it with the certificate's public key."""
    probe = b"hostgate-ca-key-probe"
    pub = cert.public_key()
    try:
        if isinstance(signer, ec.EllipticCurvePrivateKey):
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            pub.verify(signer.sign(probe, ec.ECDSA(hashes.SHA256())), probe,
                       ec.ECDSA(hashes.SHA256()))
        else:
            from cryptography.hazmat.primitives.asymmetric import padding

            if not isinstance(pub, rsa.RSAPublicKey):
                raise InvalidSignature
            sig = signer.sign(probe, padding.PKCS1v15(), hashes.SHA256())
            pub.verify(sig, probe, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise CaKeyError(f"CA key {where} does not match the CA certificate") from None


def _is_encrypted_pem(key_pem: bytes) -> bool:
    return (b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in key_pem
            or b"Proc-Type: 4,ENCRYPTED" in key_pem)


def load_pem_ca(key_pem: bytes, cert_pem: bytes, passphrase: Secret, *,
                where: str = "pem") -> IssuingCA:
    """An ``IssuingCA`` from an *encrypted* PEM private key (PKCS#8 or legacy PEM encryption).

    An unencrypted key is refused. ``where`` names the key in errors (a path, never content).
    """
    if len(key_pem) > MAX_PEM_BYTES:
        raise CaKeyError(f"CA key {where} is over {MAX_PEM_BYTES} bytes")
    if not _is_encrypted_pem(key_pem):
        raise CaKeyError(f"CA key {where} is not an encrypted PEM key; refusing a key stored in "
                         "clear (encrypt it, e.g. `openssl pkcs8 -topk8 -v2 aes-256-cbc`)")
    try:
        key = serialization.load_pem_private_key(key_pem, password=passphrase.reveal())
    except (ValueError, TypeError):
        # cryptography's message says only "incorrect password?"; `from None` keeps the
        # traceback free of the call's arguments.
        raise CaKeyError(f"cannot decrypt the CA key {where} with the passphrase from "
                         f"{passphrase.source}: wrong passphrase or corrupt key") from None
    except UnsupportedAlgorithm:
        raise CaKeyError(f"CA key {where} uses an unsupported encryption") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CaKeyError(f"CA key {where}: curve {key.curve.name} is not P-256 or P-384")
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise CaKeyError(f"CA key {where}: RSA-{key.key_size} is below 2048 bits")
    else:
        raise CaKeyError(f"CA key {where} is not an EC or RSA key")
    cert = load_ca_certificate(cert_pem, f"for {where}")
    check_key_pair(key, cert, where)
    return IssuingCA(cert, key, f"pem:{where}")


def load_pem_ca_files(key_file: Path, cert_file: Path, passphrase: Secret) -> IssuingCA:
    """``load_pem_ca`` from files."""
    try:
        key_pem = key_file.read_bytes()
        cert_pem = cert_file.read_bytes()
    except OSError as exc:
        raise CaKeyError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return load_pem_ca(key_pem, cert_pem, passphrase, where=str(key_file))



def self_signed_ca_certificate(key: CaPrivateKey, common_name: str, not_before: dt.datetime,
                               validity: dt.timedelta = dt.timedelta(days=3650)
                               ) -> x509.Certificate:
    """A self-signed issuing-CA certificate for ``key`` (bootstrap and tests)."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostgate"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    hash_alg: hashes.SHA256 | hashes.SHA384 = hashes.SHA256()
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        hash_alg = hashes.SHA384()
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_before + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hash_alg)
    )
