"""What the issuing CA signs: short-lived host certificates and the CRL.

Everything about a host that ends up in a certificate comes from a *verdict* (already
appraised), never from the host directly.

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
* the ``id-hostgate-attestation`` extension (:mod:`services.issuer.extension`) binding it to its
  verdict, policy and seal.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.issuer.ca import IssuingCA
from services.issuer.errors import IssuanceError
from services.issuer.extension import ATTESTATION_OID, MAX_VERDICT_ID, AttestationBinding
from services.wire.ids import text_digest
from services.wire.time import epoch_ms

__all__ = [
    "HOST_URN_PREFIX",
    "CertificateProfile",
    "CertificateSigner",
    "HostCertificateRequest",
    "RevokedCertificate",
    "build_crl",
    "check_host_id",
    "issue_host_certificate",
    "serial_for_verdict",
]

#: URI SAN prefix of host certificates.
HOST_URN_PREFIX = "urn:hostgate:host:"
#: Host ids: an inventory name, at most 64 characters (RFC 5280 ub-common-name).
HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_VALIDITY = dt.timedelta(hours=24)
DEFAULT_BACKDATE = dt.timedelta(minutes=5)


class CertificateSigner(Protocol):
    """What issuing a host certificate needs of the CA (an ``IssuingCA`` is one): its
    certificate and a signature over a builder, the key never showing itself."""

    @property
    def certificate(self) -> x509.Certificate:
        """The CA's own certificate (issuer name, authority key identifier)."""
        ...

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """``builder`` signed by the CA key."""
        ...


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
    digest = text_digest("hostgate-cert-serial", verdict_id)
    serial = int.from_bytes(digest[:20], "big") >> 1
    if serial == 0:  # 2**-159: cannot happen, but a zero serial must never be issued
        raise IssuanceError("derived serial is zero", field="verdict_id")
    return serial


def _utc(when: dt.datetime, what: str) -> dt.datetime:
    if when.tzinfo is None:
        raise IssuanceError(f"{what} has no time zone", field=what)
    return when.astimezone(dt.UTC)


def issue_host_certificate(ca: CertificateSigner, request: HostCertificateRequest,
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
    return ca.sign_certificate(builder)


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
    number = crl_number if crl_number is not None else epoch_ms(this_update)
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
    return ca.sign_crl(builder)
