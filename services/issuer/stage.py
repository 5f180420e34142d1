"""The issuer stage as the runtime runs it (``hostgate run issuer``).

``build_stage(env)`` loads the issuing CA once and wires the pure core (``services.issuer.core``)
into a runtime ``Stage``: inputs ``attest.verdicts.v1``, ``attest.incidents.v1`` and
``attest.identity.events.v1`` (all keyed by host id, so one host's verdicts, incident events
and identity releases meet on one task; a record on a partition other than its key's goes to
the DLQ), state table ``hosts``
(``hostgate.IssuerHostState``), outputs ``attest.credentials.v1`` and ``attest.hosts.v1``.

A decision the core refuses (an ``IssuerError``: a passing verdict without the attested PCRs
the seal needs, an EK public area that does not parse, corrupt state) has no ``on_error``
policy on purpose: the record goes to ``issuer.dlq.v1`` with the reason, and the host gets no
credential (fail closed, never silently dropped).

Environment (``deploy/README.md`` holds the contract):

* ``HOSTGATE_ISSUER_CA_CERT``: PEM certificate of the issuing CA (always needed);
* either ``HOSTGATE_ISSUER_CA_KEY`` + ``HOSTGATE_ISSUER_CA_PASSPHRASE_FILE`` (an encrypted PEM
  key and the file holding its passphrase),
* or ``HOSTGATE_ISSUER_PKCS11_MODULE`` + ``HOSTGATE_ISSUER_PKCS11_URI`` (RFC 7512, with
  ``token`` and ``object``) + ``HOSTGATE_ISSUER_PKCS11_PIN_FILE``; giving both is an error;
* ``HOSTGATE_ISSUER_CERT_VALIDITY_S`` (optional): host certificate lifetime, default 86400;
* ``HOSTGATE_ISSUER_CRL_URL`` (optional): put into the certificates' cRLDistributionPoints;
* ``HOSTGATE_ISSUER_TOPIC_PREFIX`` (optional, tests): prefix of every topic the stage uses.

Only the *names* of files and variables ever appear in errors or logs, never their content.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote

from services.errors import ConfigError
from services.issuer.ca import (
    MAX_PEM_BYTES,
    CertificateProfile,
    IssuingCA,
    load_pem_ca_files,
    load_pkcs11_ca,
    read_secret,
)
from services.issuer.core import (
    HOSTS_TABLE,
    IDENTITY_SUBJECT,
    INCIDENT_SUBJECT,
    VERDICT_SUBJECT,
    IssuerConfig,
    make_decide,
)
from services.issuer.errors import IssuerError
from services.runtime.stage import MISROUTED_DLQ, Stage
from services.runtime.topics import IDENTITY_EVENTS_TOPIC

ENV_CA_CERT: Final = "HOSTGATE_ISSUER_CA_CERT"
ENV_CA_KEY: Final = "HOSTGATE_ISSUER_CA_KEY"
ENV_CA_PASSPHRASE_FILE: Final = "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE"
ENV_PKCS11_MODULE: Final = "HOSTGATE_ISSUER_PKCS11_MODULE"
ENV_PKCS11_URI: Final = "HOSTGATE_ISSUER_PKCS11_URI"
ENV_PKCS11_PIN_FILE: Final = "HOSTGATE_ISSUER_PKCS11_PIN_FILE"
ENV_VALIDITY_S: Final = "HOSTGATE_ISSUER_CERT_VALIDITY_S"
ENV_CRL_URL: Final = "HOSTGATE_ISSUER_CRL_URL"
ENV_TOPIC_PREFIX: Final = "HOSTGATE_ISSUER_TOPIC_PREFIX"
HOST_STATE_SUBJECT: Final = "hostgate.IssuerHostState"
REJECTED_SUBJECT: Final = "hostgate.RemediationRejected"


@dataclass(frozen=True)
class IssuerTopics:
    """The topics one issuer deployment uses (an optional prefix for tests)."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def verdicts(self) -> str:
        return self.name("attest.verdicts.v1")

    @property
    def incidents(self) -> str:
        return self.name("attest.incidents.v1")

    @property
    def identity_events(self) -> str:
        """The collector's identity audit: an operator release resets the host's EK."""
        return self.name(IDENTITY_EVENTS_TOPIC)

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.verdicts, self.incidents, self.identity_events)

    @property
    def credentials(self) -> str:
        return self.name("attest.credentials.v1")

    @property
    def hosts(self) -> str:
        return self.name("attest.hosts.v1")

    @property
    def dlq(self) -> str:
        return self.name("issuer.dlq.v1")

    @property
    def hosts_changelog(self) -> str:
        """The compacted changelog of the ``hosts`` table: the issuer's full per-host state,
        revoked certificates included (what the CRL is built from)."""
        return self.name(f"hostgate.issuer.{HOSTS_TABLE}.changelog.v1")

    def all(self) -> tuple[str, ...]:
        return (*self.inputs, self.credentials, self.hosts, self.dlq, self.hosts_changelog)


def parse_pkcs11_uri(uri: str) -> tuple[str, str]:
    """``(token label, object label)`` from an RFC 7512 ``pkcs11:`` URI (path attributes
    ``token`` and ``object``, percent-decoded; query attributes such as ``pin-value`` are
    refused: the PIN comes from its file only)."""
    if not uri.startswith("pkcs11:"):
        raise ConfigError(f"{ENV_PKCS11_URI} does not start with 'pkcs11:'")
    path, _, query = uri[len("pkcs11:"):].partition("?")
    if "pin-value" in query:
        raise ConfigError(f"{ENV_PKCS11_URI} carries a pin-value; give the PIN in "
                          f"{ENV_PKCS11_PIN_FILE} instead")
    attrs: dict[str, str] = {}
    for part in filter(None, path.split(";")):
        name, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"{ENV_PKCS11_URI}: path attribute {name[:40]!r} has no value")
        attrs[name] = unquote(value)
    missing = [a for a in ("token", "object") if not attrs.get(a)]
    if missing:
        raise ConfigError(f"{ENV_PKCS11_URI} names no {' and no '.join(missing)}")
    return attrs["token"], attrs["object"]


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


def config_from_env(env: Mapping[str, str]) -> IssuerConfig:
    """Certificate profile and seal settings from the environment."""
    raw = env.get(ENV_VALIDITY_S, "86400")
    try:
        validity = dt.timedelta(seconds=float(raw))
        profile = CertificateProfile(validity=validity, crl_url=env.get(ENV_CRL_URL) or None)
    except (ValueError, OverflowError):
        raise ConfigError(f"{ENV_VALIDITY_S}={raw[:40]!r} is not a number of seconds") from None
    except IssuerError as exc:
        raise ConfigError(f"{ENV_VALIDITY_S}: {exc}") from None
    return IssuerConfig(profile=profile)


def build_stage(env: Mapping[str, str]) -> Stage:
    """The issuer stage, configured from ``env`` (loads the CA: fails fast on a bad key)."""
    topics = IssuerTopics(env.get(ENV_TOPIC_PREFIX, ""))
    config = config_from_env(env)
    ca = load_ca_from_env(env)
    return Stage(
        name="issuer",
        input_topics=topics.inputs,
        # attest.incidents.v1 also carries the incidents stage's RemediationRejected records:
        # decodable, read and ignored by the core (not DLQ material).
        input_subjects=frozenset({VERDICT_SUBJECT, INCIDENT_SUBJECT, REJECTED_SUBJECT,
                                  IDENTITY_SUBJECT}),
        decide=make_decide(ca, config, topics.credentials, topics.hosts),
        tables={HOSTS_TABLE: HOST_STATE_SUBJECT},
        dlq=topics.dlq,
        changelogs={HOSTS_TABLE: topics.hosts_changelog},
        # Only stage principals write the issuer's inputs, with the default partitioner; a
        # record elsewhere would be judged against another partition's (empty) host state and
        # could bind a fresh EK, so it goes to the DLQ instead (services.runtime.plan).
        misrouted=MISROUTED_DLQ,
    )


__all__ = [
    "IssuerTopics",
    "build_stage",
    "config_from_env",
    "load_ca_from_env",
    "parse_pkcs11_uri",
]
