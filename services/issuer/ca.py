"""The issuing CA: key loading, short-lived host certificates, CRLs.

Trust boundary: everything about a host that ends up in a certificate comes from a *verdict*
(already appraised), never from the host directly; the CA key comes from an operator-supplied
encrypted PEM file or a PKCS#11 token and never leaves ``IssuingCA`` (no repr, no error message,
no log carries it, its passphrase or its PIN).

Certificate profile (RFC 5280):

* subject ``CN=<host_id>``; SAN ``URI:urn:hostgate:host:<host_id>``. A URI rather than a
  dNSName because a host id is an inventory name, not a DNS name: a dNSName would let a
  hostgate credential pass as a web server certificate for a name nobody checked, while a
  ``urn:hostgate:`` URI cannot collide with any web-PKI name and can still be pinned by name
  constraints (permittedSubtrees URI ``hostgate``) on the gatekeepers' side.
* validity ``[appraised_at - backdate, appraised_at + validity]`` (24 h by default): times come
  from the verdict, never the clock, so the same verdict gives the same fields.
* serial: ``SHA-256("hostgate-cert-serial\\0" || verdict_id)`` shifted to 159 bits, so it is
  positive, fits 20 octets and is deterministic per verdict.
* a private, non-critical extension ``id-hostgate-attestation`` (``ATTESTATION_OID``, under the
  UUID arc 2.25 of X.667, which needs no registration) holding the verdict id, the policy
  digest and the PolicyPCR digest the key was sealed under (DER, see ``AttestationBinding``).

PKCS#11: ``cryptography``'s builders call ``sign(data, ECDSA(hash))`` on whatever
``EllipticCurvePrivateKey`` they are given, so the token is plugged in through an adapter
(``_Pkcs11EcKey``) that hashes locally and has the token do a raw CKM_ECDSA: the certificate and
CRL are still built by ``cryptography``'s own DER code, and no TBS is assembled by hand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.issuer.errors import CaKeyError, ExtensionError, IssuanceError

#: The hostgate OID arc: a UUID under ``2.25`` (ITU-T X.667), so no registration is needed.
HOSTGATE_ARC = "2.25.10615221145863538997628321078442561070"
#: ``id-hostgate-attestation``: the certificate extension binding it to its verdict.
ATTESTATION_OID = x509.ObjectIdentifier(f"{HOSTGATE_ARC}.1.1")
#: URI SAN prefix of host certificates.
HOST_URN_PREFIX = "urn:hostgate:host:"
#: Host ids: an inventory name, at most 64 characters (RFC 5280 ub-common-name).
HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Longest verdict id accepted into a certificate.
MAX_VERDICT_ID = 256
#: Largest passphrase/PIN file read (anything larger is not a passphrase).
MAX_SECRET_BYTES = 1024
#: Largest CA key or certificate PEM read.
MAX_PEM_BYTES = 64 * 1024
DEFAULT_VALIDITY = dt.timedelta(hours=24)
DEFAULT_BACKDATE = dt.timedelta(minutes=5)


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


def _load_cert(cert_pem: bytes, where: str) -> x509.Certificate:
    if len(cert_pem) > MAX_PEM_BYTES:
        raise CaKeyError(f"CA certificate {where} is over {MAX_PEM_BYTES} bytes")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CaKeyError(f"CA certificate {where} is not a PEM X.509 certificate") from None
    _check_ca_certificate(cert, where)
    return cert


def _check_pair(signer: CaPrivateKey, cert: x509.Certificate, where: str) -> None:
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
    cert = _load_cert(cert_pem, f"for {where}")
    _check_pair(key, cert, where)
    return IssuingCA(cert, key, f"pem:{where}")


def load_pem_ca_files(key_file: Path, cert_file: Path, passphrase: Secret) -> IssuingCA:
    """``load_pem_ca`` from files."""
    try:
        key_pem = key_file.read_bytes()
        cert_pem = cert_file.read_bytes()
    except OSError as exc:
        raise CaKeyError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return load_pem_ca(key_pem, cert_pem, passphrase, where=str(key_file))


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
    cert = _load_cert(cert_pem, f"for {where}")
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
        _check_pair(signer, cert, where)
    except (CaKeyError, p11e.PKCS11Error) as exc:
        session.close()
        if isinstance(exc, CaKeyError):
            raise
        raise CaKeyError(f"PKCS#11 key {where} cannot sign: {type(exc).__name__}") from None
    return IssuingCA(cert, signer, where, session.close)


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


# -- the attestation extension ---------------------------------------------------------------


@dataclass(frozen=True)
class AttestationBinding:
    """What ``id-hostgate-attestation`` records::

        HostgateAttestation ::= SEQUENCE {
            version           INTEGER (1),
            verdictId         UTF8String (SIZE (1..256)),
            policyDigest      OCTET STRING (SIZE (32)),  -- SHA-256 of the policy document
            sealPolicyDigest  OCTET STRING (SIZE (32)) } -- PolicyPCR digest the key is sealed to
    """

    verdict_id: str
    policy_digest: bytes
    seal_policy_digest: bytes

    def to_der(self) -> bytes:
        """DER of ``HostgateAttestation``."""
        vid = self.verdict_id.encode("utf-8")
        body = (_der(0x02, b"\x01") + _der(0x0C, vid) + _der(0x04, self.policy_digest)
                + _der(0x04, self.seal_policy_digest))
        return _der(0x30, body)

    @classmethod
    def from_der(cls, data: bytes) -> AttestationBinding:
        """Parse strict DER (minimal lengths, no trailing bytes, exact field sizes)."""
        tag, body_start, end = _read_tlv(data, 0)
        if tag != 0x30:
            raise ExtensionError("HostgateAttestation is not a SEQUENCE", offset=0)
        if end != len(data):
            raise ExtensionError("trailing bytes after HostgateAttestation", offset=end)
        fields: list[bytes] = []
        pos = body_start
        for want in (0x02, 0x0C, 0x04, 0x04):
            tag, start, stop = _read_tlv(data, pos)
            if tag != want:
                raise ExtensionError(f"expected tag {want:#04x}, got {tag:#04x}", offset=pos)
            fields.append(data[start:stop])
            pos = stop
        if pos != end:
            raise ExtensionError("extra fields in HostgateAttestation", offset=pos)
        if fields[0] != b"\x01":
            raise ExtensionError("unsupported HostgateAttestation version", offset=body_start)
        try:
            verdict_id = fields[1].decode("utf-8")
        except UnicodeDecodeError:
            raise ExtensionError("verdictId is not UTF-8", offset=body_start) from None
        if not 1 <= len(fields[1]) <= MAX_VERDICT_ID:
            raise ExtensionError(f"verdictId must be 1..{MAX_VERDICT_ID} bytes",
                                 offset=body_start)
        if len(fields[2]) != 32 or len(fields[3]) != 32:
            raise ExtensionError("digests must be 32 bytes", offset=body_start)
        return cls(verdict_id, fields[2], fields[3])


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at ``pos``; at most 2 length octets."""
    if pos + 2 > len(data):
        raise ExtensionError("truncated TLV header", offset=pos)
    tag, first = data[pos], data[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 2 or start + count > len(data):
            raise ExtensionError("bad or oversized DER length", offset=pos + 1)
        length = int.from_bytes(data[start:start + count], "big")
        if length < 0x80 or data[start] == 0:
            raise ExtensionError("non-minimal DER length", offset=pos + 1)
        start += count
    if start + length > len(data):
        raise ExtensionError("TLV runs past the end", offset=pos)
    return tag, start, start + length


def attestation_binding(cert: x509.Certificate) -> AttestationBinding:
    """The ``id-hostgate-attestation`` binding of a host certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(ATTESTATION_OID)
    except x509.ExtensionNotFound:
        raise ExtensionError("certificate has no hostgate attestation extension",
                             offset=0) from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ExtensionError("unexpected extension type", offset=0)
    return AttestationBinding.from_der(value.value)


# -- host certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateProfile:
    """Operator choices for host certificates. ``crl_url`` goes into cRLDistributionPoints."""

    validity: dt.timedelta = DEFAULT_VALIDITY
    backdate: dt.timedelta = DEFAULT_BACKDATE
    crl_url: str | None = None

    def __post_init__(self) -> None:
        if not dt.timedelta(minutes=1) <= self.validity <= dt.timedelta(days=30):
            raise IssuanceError("certificate validity must be 1 minute..30 days",
                                field="validity")
        if not dt.timedelta(0) <= self.backdate <= dt.timedelta(hours=1):
            raise IssuanceError("certificate backdate must be 0..1 hour", field="backdate")


@dataclass(frozen=True)
class HostCertificateRequest:
    """Everything a host certificate says, all taken from a passing verdict."""

    host_id: str
    public_key: ec.EllipticCurvePublicKey
    verdict_id: str
    policy_digest: bytes
    seal_policy_digest: bytes
    appraised_at: dt.datetime


def check_host_id(host_id: str) -> str:
    """``host_id`` if it is a valid hostgate host id, else ``IssuanceError``."""
    if not HOST_ID_RE.fullmatch(host_id):
        raise IssuanceError(f"host id {host_id[:80]!r} is not 1-64 characters of "
                            "[A-Za-z0-9._-] starting with a letter or digit", field="host_id")
    return host_id


def serial_for_verdict(verdict_id: str) -> int:
    """The certificate serial for a verdict: positive, < 2**159 (so at most 20 DER octets)."""
    digest = hashlib.sha256(b"hostgate-cert-serial\0" + verdict_id.encode("utf-8")).digest()
    serial = int.from_bytes(digest[:20], "big") >> 1
    if serial == 0:  # 2**-159: cannot happen, but a zero serial must never be issued
        raise IssuanceError("derived serial is zero", field="verdict_id")
    return serial


def _utc(when: dt.datetime, what: str) -> dt.datetime:
    if when.tzinfo is None:
        raise IssuanceError(f"{what} has no time zone", field=what)
    return when.astimezone(dt.UTC)


def issue_host_certificate(ca: IssuingCA, request: HostCertificateRequest,
                           profile: CertificateProfile = CertificateProfile()
                           ) -> x509.Certificate:
    """Sign a short-lived host certificate (see the module docstring for the profile)."""
    host_id = check_host_id(request.host_id)
    if not 1 <= len(request.verdict_id.encode("utf-8")) <= MAX_VERDICT_ID:
        raise IssuanceError(f"verdict id must be 1..{MAX_VERDICT_ID} bytes", field="verdict_id")
    for name in ("policy_digest", "seal_policy_digest"):
        if len(getattr(request, name)) != 32:
            raise IssuanceError(f"{name} must be 32 bytes", field=name)
    appraised = _utc(request.appraised_at, "appraised_at")
    binding = AttestationBinding(request.verdict_id, request.policy_digest,
                                 request.seal_policy_digest)
    ca_cert = ca.certificate
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(request.public_key)
        .serial_number(serial_for_verdict(request.verdict_id))
        .not_valid_before(appraised - profile.backdate)
        .not_valid_after(appraised + profile.validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(HOST_URN_PREFIX + host_id)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(request.public_key),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.certificate.public_key()), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.UnrecognizedExtension(ATTESTATION_OID, binding.to_der()),
                       critical=False)
    )
    if profile.crl_url:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(profile.crl_url)], None, None, None)]),
            critical=False)
    return builder.sign(ca._signer, ca.hash_algorithm)


# -- revocation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokedCertificate:
    """One revoked host certificate as the CRL lists it."""

    serial: int
    revoked_at: dt.datetime
    not_after: dt.datetime
    reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise


def build_crl(ca: IssuingCA, revoked: Iterable[RevokedCertificate], *,
              this_update: dt.datetime, next_update: dt.datetime,
              crl_number: int | None = None) -> x509.CertificateRevocationList:
    """A CRL of ``revoked``, sorted by serial, deterministic in its inputs (times included).

    An entry is kept until it has appeared on at least one CRL issued after the certificate
    expired (RFC 5280, 3.3): it is dropped only once ``not_after`` is more than one CRL
    interval before ``this_update``. ``crl_number`` defaults to ``this_update`` in ms, which
    grows with every later CRL. Duplicate serials keep the earliest revocation.
    """
    this_update, next_update = _utc(this_update, "this_update"), _utc(next_update, "next_update")
    if next_update <= this_update:
        raise IssuanceError("next_update must be after this_update", field="next_update")
    keep_after = this_update - (next_update - this_update)
    by_serial: dict[int, RevokedCertificate] = {}
    for entry in revoked:
        if _utc(entry.not_after, "not_after") < keep_after:
            continue
        seen = by_serial.get(entry.serial)
        if seen is None or entry.revoked_at < seen.revoked_at:
            by_serial[entry.serial] = entry
    number = crl_number if crl_number is not None else int(this_update.timestamp() * 1000)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(this_update).next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.certificate.public_key()), critical=False)  # type: ignore[arg-type]
    )
    for serial in sorted(by_serial):
        entry = by_serial[serial]
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(_utc(entry.revoked_at, "revoked_at"))
            .add_extension(x509.CRLReason(entry.reason), critical=False).build())
    return builder.sign(ca._signer, ca.hash_algorithm)


__all__ = [
    "ATTESTATION_OID",
    "HOSTGATE_ARC",
    "HOST_URN_PREFIX",
    "AttestationBinding",
    "CertificateProfile",
    "HostCertificateRequest",
    "IssuingCA",
    "RevokedCertificate",
    "Secret",
    "attestation_binding",
    "build_crl",
    "check_host_id",
    "issue_host_certificate",
    "load_pem_ca",
    "load_pem_ca_files",
    "load_pkcs11_ca",
    "read_secret",
    "self_signed_ca_certificate",
    "serial_for_verdict",
]
