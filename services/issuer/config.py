"""The issuer's settings: one frozen value, read from the environment once by the shell.

=======================================  =========================================  ==========
environment                              meaning                                    default
=======================================  =========================================  ==========
``HOSTGATE_ISSUER_CA_CERT``              PEM certificate of the issuing CA          (required)
``HOSTGATE_ISSUER_CA_KEY``               encrypted PEM key of the issuing CA        —
``HOSTGATE_ISSUER_CA_PASSPHRASE_FILE``   file holding that key's passphrase         —
``HOSTGATE_ISSUER_PKCS11_MODULE``        PKCS#11 module: the CA key on a token      —
                                         instead (with the two below; giving both
                                         key sources is an error)
``HOSTGATE_ISSUER_PKCS11_URI``           RFC 7512 URI of the key (``token`` and     —
                                         ``object``; no ``pin-value``)
``HOSTGATE_ISSUER_PKCS11_PIN_FILE``      file holding the token PIN                 —
``HOSTGATE_ISSUER_CERT_VALIDITY_S``      host certificate lifetime                  ``86400``
``HOSTGATE_ISSUER_CRL_URL``              put into the certificates'                 none
                                         cRLDistributionPoints
``HOSTGATE_TOPIC_NAMESPACE``             the deployment's namespace: every topic    empty
                                         ``<ns>.<name>`` (``runtime.topics.Topics``)
=======================================  =========================================  ==========

``deploy/README.md`` holds the contract. The CA is loaded (and its key checked against its
certificate) when the config is built, so a bad key fails the worker at start-up. Only the
*names* of files and variables ever appear in errors or logs, never their content.

Besides the settings, the config carries the issuer's three capabilities, the only ways the core
touches anything but its inputs: the issuing CA (``CertificateSigner``: signs what the core
builds), the host-key generator and the sealing function (both draw fresh randomness: host key,
content key, nonce, wrap seed). The shell passes the real ones; a test may pass others.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from services.errors import ConfigError
from services.issuer.ca import MAX_PEM_BYTES, IssuingCA, load_pem_ca_files, read_secret
from services.issuer.ca_pkcs11 import load_pkcs11_ca
from services.issuer.certificates import CertificateProfile, CertificateSigner
from services.issuer.errors import IssuerError
from services.issuer.hoststate import MAX_HELD
from services.issuer.sealing import SealedDelivery, new_host_key, seal_credential
from services.pkcs11keys import parse_pkcs11_uri as parse_token_uri
from services.runtime.topics import Topics
from services.tpm.credential import PcrSelection, pcr_selection

ENV_CA_CERT: Final = "HOSTGATE_ISSUER_CA_CERT"
ENV_CA_KEY: Final = "HOSTGATE_ISSUER_CA_KEY"
ENV_CA_PASSPHRASE_FILE: Final = "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE"
ENV_PKCS11_MODULE: Final = "HOSTGATE_ISSUER_PKCS11_MODULE"
ENV_PKCS11_URI: Final = "HOSTGATE_ISSUER_PKCS11_URI"
ENV_PKCS11_PIN_FILE: Final = "HOSTGATE_ISSUER_PKCS11_PIN_FILE"
ENV_VALIDITY_S: Final = "HOSTGATE_ISSUER_CERT_VALIDITY_S"
ENV_CRL_URL: Final = "HOSTGATE_ISSUER_CRL_URL"

HostKeyGenerator = Callable[[], ec.EllipticCurvePrivateKey]
"""A fresh host key per credential (``services.issuer.sealing.new_host_key``)."""


class CredentialSealer(Protocol):
    """Seals a host key to an EK and attested PCRs (``services.issuer.sealing.seal_credential``:
    draws a fresh content key, nonce and wrap seed)."""

    def __call__(self, untrusted_ek_public: bytes, selection: PcrSelection,
                 attested_pcrs: Mapping[str, Mapping[int, bytes]],
                 host_key: ec.EllipticCurvePrivateKey, *, credential_id: str,
                 certificate_der: bytes) -> SealedDelivery:
        """The sealed delivery of ``host_key``."""
        ...


def _default_selection() -> PcrSelection:
    return pcr_selection({"sha256": range(8)})


@dataclass(frozen=True)
class IssuerConfig:
    """Everything :func:`services.issuer.core.decide` needs besides the input and the state."""

    ca: CertificateSigner
    """The issuing CA (an ``IssuingCA`` from the environment: PEM or PKCS#11)."""
    profile: CertificateProfile = field(default_factory=CertificateProfile)
    seal_selection: PcrSelection = field(default_factory=_default_selection)
    """PCRs the credential is sealed to (their attested values must be in the verdict)."""
    max_held: int = MAX_HELD
    topics: Topics = field(default_factory=Topics)
    new_key: HostKeyGenerator = field(default=new_host_key, repr=False, compare=False)
    seal: CredentialSealer = field(default=seal_credential, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IssuerConfig:
        """Build the config from ``env`` (see the module docstring); loads the issuing CA."""
        topics = Topics.from_env(env)
        profile = _profile(env)
        return cls(ca=load_ca_from_env(env), profile=profile, topics=topics)


def parse_pkcs11_uri(uri: str) -> tuple[str, str]:
    """``(token label, object label)`` of the issuer's ``HOSTGATE_ISSUER_PKCS11_URI``
    (:func:`services.pkcs11keys.parse_pkcs11_uri`)."""
    return parse_token_uri(uri, uri_env=ENV_PKCS11_URI, pin_env=ENV_PKCS11_PIN_FILE)


def _path(env: Mapping[str, str], name: str) -> Path:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    return Path(value)


def load_ca_from_env(env: Mapping[str, str]) -> IssuingCA:
    """The issuing CA named by the environment (see the module docstring)."""
    pem = any(env.get(n) for n in (ENV_CA_KEY, ENV_CA_PASSPHRASE_FILE))
    p11 = any(env.get(n) for n in (ENV_PKCS11_MODULE, ENV_PKCS11_URI, ENV_PKCS11_PIN_FILE))
    if pem and p11:
        raise ConfigError(f"both {ENV_CA_KEY}/{ENV_CA_PASSPHRASE_FILE} and "
                          f"{ENV_PKCS11_MODULE}/... are set; choose one CA key source")
    if not pem and not p11:
        raise ConfigError(f"no issuing CA key: set {ENV_CA_KEY} and {ENV_CA_PASSPHRASE_FILE}, "
                          f"or {ENV_PKCS11_MODULE}, {ENV_PKCS11_URI} and {ENV_PKCS11_PIN_FILE}")
    cert_file = _path(env, ENV_CA_CERT)
    try:
        if pem:
            passphrase = read_secret(file=_path(env, ENV_CA_PASSPHRASE_FILE))
            return load_pem_ca_files(_path(env, ENV_CA_KEY), cert_file, passphrase)
        token, label = parse_pkcs11_uri(env.get(ENV_PKCS11_URI, ""))
        pin = read_secret(file=_path(env, ENV_PKCS11_PIN_FILE))
        try:
            with cert_file.open("rb") as fh:
                cert_pem = fh.read(MAX_PEM_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{ENV_CA_CERT}: cannot read {cert_file}: {exc.strerror}"
                              ) from None
        return load_pkcs11_ca(_path(env, ENV_PKCS11_MODULE), token, label, pin, cert_pem)
    except IssuerError as exc:
        raise ConfigError(f"issuing CA: {exc}") from None


def _profile(env: Mapping[str, str]) -> CertificateProfile:
    """The certificate profile from the environment."""
    raw = env.get(ENV_VALIDITY_S, "86400")
    try:
        validity = dt.timedelta(seconds=float(raw))
        return CertificateProfile(validity=validity, crl_url=env.get(ENV_CRL_URL) or None)
    except (ValueError, OverflowError):
        raise ConfigError(f"{ENV_VALIDITY_S}={raw[:40]!r} is not a number of seconds") from None
    except IssuerError as exc:
        raise ConfigError(f"{ENV_VALIDITY_S}: {exc}") from None


__all__ = [
    "CredentialSealer",
    "HostKeyGenerator",
    "IssuerConfig",
    "load_ca_from_env",
    "parse_pkcs11_uri",
]
