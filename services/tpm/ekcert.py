"""EK certificates: chain to trusted TPM-manufacturer CAs, TCG extensions, key binding.

An EK certificate is not a web-PKI certificate: its subject is often empty, its Subject
Alternative Name is a *critical* DirName carrying the TPM manufacturer, model and firmware
version (TCG EK Credential Profile 2.x, 3.2.9), and its EKU (when present) is
``tcg-kp-EKCertificate`` 2.23.133.8.1. ``cryptography``'s web-PKI verifier rejects it, so the
chain is built here link by link with ``Certificate.verify_directly_issued_by`` and checked at
an injected ``now`` (the verifier never reads the clock).

What :func:`verify_ek_certificate` checks, in order (each failure a ``CertificateChainError``):

1. the certificate parses (DER or PEM), its validity covers ``now``, and it is not a CA
   (basicConstraints cA=TRUE on the leaf is refused);
2. an issuer chain exists: each link's issuer name equals the next subject and its signature
   verifies with the next key; every issuer is a CA (basicConstraints cA, keyCertSign when
   keyUsage is present, pathLen respected) and valid at ``now``; the chain ends at a trusted
   certificate within ``max_depth`` links;
3. if the EK certificate has an EKU extension, it contains 2.23.133.8.1;
4. the SAN DirName TPM attributes parse (exposed as :class:`TpmDeviceInfo`);
5. if ``ek_public`` (TPM2B_PUBLIC) is given, the certificate's key is that key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from services.tpm.errors import CertificateChainError
from services.tpm.keys import decode_public, same_key

__all__ = [
    "OID_EK_CERTIFICATE",
    "OID_TPM_MANUFACTURER",
    "OID_TPM_MODEL",
    "OID_TPM_VERSION",
    "TpmDeviceInfo",
    "VerifiedEkCertificate",
    "load_ca_directory",
    "load_certificate",
    "load_pem_bundle",
    "tpm_device_info",
    "verify_ek_certificate",
]

OID_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")
OID_TPM_MANUFACTURER = x509.ObjectIdentifier("2.23.133.2.1")
OID_TPM_MODEL = x509.ObjectIdentifier("2.23.133.2.2")
OID_TPM_VERSION = x509.ObjectIdentifier("2.23.133.2.3")
MAX_CERT_BYTES = 64 * 1024
_MINT = object()


@dataclass(frozen=True)
class TpmDeviceInfo:
    """TPM manufacturer / model / version from the EK certificate's SAN DirName (untrusted
    until the chain verifies). Values as encoded, e.g. ``"id:00001014"``."""

    manufacturer: str | None
    model: str | None
    version: str | None
    san_critical: bool


@dataclass(frozen=True)
class VerifiedEkCertificate:
    """An EK certificate that chains to a trusted CA; built only by :func:`verify_ek_certificate`.

    ``chain`` runs from the EK certificate to the trusted anchor, both included.
    ``key_matches_ek`` is True only when an EK public was given and equals the cert's key.
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    device: TpmDeviceInfo | None
    has_ek_eku: bool
    key_matches_ek: bool
    _mint: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._mint is not _MINT:
            raise TypeError("VerifiedEkCertificate is only constructed by verify_ek_certificate()")


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one untrusted certificate, DER or PEM; ``CertificateChainError`` if it does not."""
    if len(data) > MAX_CERT_BYTES:
        raise CertificateChainError(f"certificate of {len(data)} bytes exceeds {MAX_CERT_BYTES}")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateChainError(f"certificate does not parse: {exc}") from exc


def load_pem_bundle(data: bytes) -> tuple[x509.Certificate, ...]:
    """All certificates of a PEM bundle (operator-supplied trust anchors or intermediates)."""
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise CertificateChainError(f"PEM bundle does not parse: {exc}") from exc


def load_ca_directory(path: Path) -> tuple[x509.Certificate, ...]:
    """Trusted CAs from every ``*.pem``/``*.crt`` file in ``path`` (for shells and the CLI;
    the only file access in ``services.tpm``)."""
    certs: list[x509.Certificate] = []
    for f in sorted(path.iterdir()):
        if f.suffix in (".pem", ".crt") and f.is_file():
            certs.extend(load_pem_bundle(f.read_bytes()))
    if not certs:
        raise CertificateChainError(f"no trusted CA certificates in {path.name}")
    return tuple(certs)


def tpm_device_info(cert: x509.Certificate) -> TpmDeviceInfo | None:
    """The TPM attributes of the SAN DirName, or ``None`` without a SAN."""
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise CertificateChainError(f"EK certificate extensions do not parse: {exc}") from exc
    assert isinstance(ext.value, x509.SubjectAlternativeName)
    found: dict[x509.ObjectIdentifier, str] = {}
    for name in ext.value.get_values_for_type(x509.DirectoryName):
        for attr in name:
            if attr.oid in (OID_TPM_MANUFACTURER, OID_TPM_MODEL, OID_TPM_VERSION):
                value = attr.value
                found[attr.oid] = value if isinstance(value, str) else value.decode("latin-1")
    return TpmDeviceInfo(
        manufacturer=found.get(OID_TPM_MANUFACTURER),
        model=found.get(OID_TPM_MODEL),
        version=found.get(OID_TPM_VERSION),
        san_critical=ext.critical,
    )


def _check_validity(cert: x509.Certificate, now: dt.datetime, role: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateChainError(
            f"{role} {cert.subject.rfc4514_string()!r} is not valid at {now.isoformat()} "
            f"({cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()})"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_ca(cert: x509.Certificate, below: int) -> None:
    """``cert`` issues the link below it; ``below`` = number of CA certs under it in the chain."""
    subject = cert.subject.rfc4514_string()
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise CertificateChainError(f"issuer {subject!r} has no basicConstraints") from exc
    if not bc.ca:
        raise CertificateChainError(f"issuer {subject!r} is not a CA")
    if bc.path_length is not None and below > bc.path_length:
        raise CertificateChainError(f"issuer {subject!r} pathLen {bc.path_length} exceeded")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise CertificateChainError(f"issuer {subject!r} lacks keyCertSign")


def _check_not_ca(cert: x509.Certificate) -> None:
    """An EK certificate certifies a TPM's key, never an issuer: a leaf with basicConstraints
    cA=TRUE is a CA certificate presented as an EK (a mis-filed or leaked sub-CA whose key
    could mint "EK certificates" of its own). Absent basicConstraints is fine (TCG EK profile
    makes the extension optional for a leaf)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    except ValueError as exc:
        raise CertificateChainError(f"EK certificate extensions do not parse: {exc}") from exc
    if bc.ca:
        raise CertificateChainError(
            f"EK certificate {cert.subject.rfc4514_string()!r} has basicConstraints cA=TRUE: "
            "it is a CA certificate, not an endorsement key's")


def _build_chain(
    leaf: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    now: dt.datetime,
    max_depth: int,
) -> tuple[x509.Certificate, ...]:
    chain = [leaf]
    current = leaf
    for _ in range(max_depth):
        anchor = next((t for t in trusted if _issued_by(current, t)), None)
        nxt = anchor or next(
            (i for i in intermediates if i not in chain and _issued_by(current, i)), None
        )
        if nxt is None:
            raise CertificateChainError(
                f"no trusted or intermediate issuer for {current.subject.rfc4514_string()!r} "
                f"(issuer {current.issuer.rfc4514_string()!r}, depth {len(chain) - 1})"
            )
        _check_ca(nxt, len(chain) - 1)
        _check_validity(nxt, now, "trusted CA" if anchor is not None else "intermediate CA")
        chain.append(nxt)
        if anchor is not None:
            return tuple(chain)
        current = nxt
    raise CertificateChainError(f"no trusted CA within {max_depth} links")


def verify_ek_certificate(
    ek_cert: bytes | x509.Certificate,
    *,
    trusted: Sequence[x509.Certificate],
    now: dt.datetime,
    intermediates: Sequence[x509.Certificate] = (),
    ek_public: bytes | None = None,
    max_depth: int = 6,
) -> VerifiedEkCertificate:
    """Verify an untrusted EK certificate (see the module docstring for the checks).

    ``now`` must be timezone-aware (the time of the input record, not the clock).
    """
    if now.tzinfo is None:
        raise CertificateChainError("now must be timezone-aware")
    cert = ek_cert if isinstance(ek_cert, x509.Certificate) else load_certificate(ek_cert)
    _check_validity(cert, now, "EK certificate")
    _check_not_ca(cert)
    chain = _build_chain(cert, trusted, intermediates, now, max_depth)
    has_eku = False
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if OID_EK_CERTIFICATE not in eku:
            raise CertificateChainError(
                "EK certificate EKU lacks tcg-kp-EKCertificate 2.23.133.8.1"
            )
        has_eku = True
    except x509.ExtensionNotFound:
        pass
    except ValueError as exc:
        raise CertificateChainError(f"EK certificate extensions do not parse: {exc}") from exc
    device = tpm_device_info(cert)
    matches = False
    if ek_public is not None:
        pub = decode_public(ek_public)
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CertificateChainError(f"EK certificate key does not load: {exc}") from exc
        if not same_key(pub, key):
            raise CertificateChainError("EK certificate key is not the TPM's EK public key")
        matches = True
    return VerifiedEkCertificate(cert, chain, device, has_eku, matches, _mint=_MINT)
