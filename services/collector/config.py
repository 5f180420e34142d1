"""The collector's settings: one frozen value, read from the environment once by the shell.

==================================  ==============================================  ==========
environment                         meaning                                         default
==================================  ==============================================  ==========
``HOSTGATE_EK_CA_DIR``              directory of PEM files: the TPM-manufacturer    (required)
                                    CAs. Self-signed certificates are trust
                                    anchors, the others intermediates that must
                                    chain to an anchor.
``HOSTGATE_ALLOW_EK_WITHOUT_CERT``  ``1``: enrol TPMs without an EK certificate     ``0``
                                    (EK public only; ``chain_verified`` false)
``HOSTGATE_NONCE_TTL_S``            lifetime of an attestation nonce                ``120``
``HOSTGATE_ACTIVATION_TTL_S``       lifetime of a credential-activation challenge   ``300``
``HOSTGATE_CHALLENGE_RATE``         per-host challenge requests per window,         ``10/60``
                                    ``COUNT/SECONDS`` (fixed window)
``HOSTGATE_MAX_OPEN_CHALLENGES``    issued-but-unused nonces a host may hold        ``4``
``HOSTGATE_MAX_PENDING_ENROLMENTS`` activation challenges one host id may have     ``4``
                                    open at once (1..16)
``HOSTGATE_POLICY_ID``              id of the policy in force (as the verifier's):  (required)
                                    challenges ask for its coverage
``HOSTGATE_REQUIRED_PCRS``          PCRs every quote must cover, e.g. ``0-7``,      ``0-7``
                                    in every bank of the policy's coverage
``HOSTGATE_MAX_BOOT_LOG_BYTES``     TCG boot log size                               ``1048576``
``HOSTGATE_MAX_LOG_EVENTS``         events in the boot log                          ``20000``
``HOSTGATE_MAX_IMA_BYTES``          IMA measurement list size                       ``8388608``
``HOSTGATE_MAX_IMA_ENTRIES``        entries in the IMA list                         ``100000``
``HOSTGATE_TOPIC_NAMESPACE``        the deployment's namespace: every topic is      empty
                                    ``<ns>.<name>`` (``runtime.topics.Topics``)
==================================  ==============================================  ==========

A challenge asks for ``coverage(policy).selection()`` of the policy in force (read, like the
verifier reads it, from ``attest.policies.v1``: every bank the policy requires, each with every PCR
its rules read) plus ``HOSTGATE_REQUIRED_PCRS`` in every bank; with no usable policy, SHA-256 with
PCRs 0-7 plus ``HOSTGATE_REQUIRED_PCRS`` (the verifier fails such evidence anyway). What the host
offers never changes it.

All limits are also bounded by the broker's ``message.max.bytes``; the collector checks them so a
record that got through is still refused with a reason instead of reaching the verifier.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from services.errors import ConfigError
from services.runtime.topics import Topics
from services.tpm.memo import Memo

if TYPE_CHECKING:
    from services.verifier.policy_in_force import PolicyCache

DEFAULT_REQUIRED_PCRS: tuple[int, ...] = tuple(range(8))
NONCE_BYTES = 32
ACTIVATION_SECRET_BYTES = 32


@dataclass(frozen=True)
class IntakeLimits:
    """Size and count bounds on one evidence record (all from a hostile host)."""

    max_boot_log_bytes: int = 1024 * 1024
    max_log_events: int = 20_000
    max_ima_bytes: int = 8 * 1024 * 1024
    max_ima_entries: int = 100_000
    max_quote_bytes: int = 2048
    """TPMS_ATTEST of a quote: a few hundred bytes in practice."""
    max_signature_bytes: int = 1024
    """TPMT_SIGNATURE: RSA-4096 is 520 bytes."""
    max_pcr_values: int = 5 * 24
    """One value per (bank, PCR): five banks of 24."""
    max_id_chars: int = 128
    """host_id, request ids, challenge ids."""


def _policy_cache() -> PolicyCache:
    from services.verifier.policy_in_force import PolicyCache  # the policy engine, on first use

    return PolicyCache()


@dataclass(frozen=True)
class CollectorConfig:
    """Everything ``decide`` needs besides the input and the state.

    ``random_bytes`` is the one source of unpredictability (nonces, activation secrets); the
    shell passes ``secrets.token_bytes``, tests a seeded generator. See ``services.collector``
    for why randomness inside ``decide`` is compatible with exactly-once.
    """

    trusted_cas: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    allow_ek_without_cert: bool = False
    nonce_ttl_ms: int = 120_000
    activation_ttl_ms: int = 300_000
    challenge_rate_count: int = 10
    challenge_rate_window_ms: int = 60_000
    max_open_challenges: int = 4
    max_pending_enrolments: int = 4
    """Activation challenges one host id may have open at once (each answered or expired on
    its own: a new request never displaces another)."""
    required_pcrs: tuple[int, ...] = DEFAULT_REQUIRED_PCRS
    policy_id: str = ""
    """The policy in force (``HOSTGATE_POLICY_ID``); empty: none, challenges fall back."""
    policy_cache: PolicyCache = field(default_factory=_policy_cache, repr=False, compare=False)
    """Memo of loaded policy versions (changes nothing about a decision, only its cost)."""
    limits: IntakeLimits = field(default_factory=IntakeLimits)
    topics: Topics = field(default_factory=Topics)
    random_bytes: Callable[[int], bytes] = field(default=secrets.token_bytes, repr=False,
                                                 compare=False)
    memo: Memo | None = field(default=None, repr=False, compare=False)
    """The worker's memo of enrolled AK public areas (decoded again at every signed request
    and every evidence); None computes. Why it never changes a decision is argued in
    ``services.verifier.memo`` (the same tables, keyed by the exact bytes)."""

    def __post_init__(self) -> None:
        checks = [
            (self.nonce_ttl_ms >= 1000, "nonce TTL must be at least 1 s"),
            (self.activation_ttl_ms >= 1000, "activation TTL must be at least 1 s"),
            (self.challenge_rate_count >= 1, "challenge rate count must be ≥ 1"),
            (self.challenge_rate_window_ms >= 1000, "challenge rate window must be ≥ 1 s"),
            (1 <= self.max_open_challenges <= 64, "max open challenges must be 1..64"),
            (1 <= self.max_pending_enrolments <= 16, "max pending enrolments must be 1..16"),
            (all(0 <= p <= 23 for p in self.required_pcrs), "required PCRs must be 0..23"),
            (len(self.policy_id) <= 128, "policy id must be at most 128 characters"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"collector config: {message}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CollectorConfig:
        """Build the config from ``env`` (see the module docstring); reads the CA directory, so
        a missing or unusable one fails fast."""
        return dataclasses.replace(_from_env(env), memo=Memo())


def _policy_id(env: Mapping[str, str]) -> str:
    policy_id = env.get("HOSTGATE_POLICY_ID", "").strip()
    if not policy_id or len(policy_id) > 128:
        raise ConfigError("HOSTGATE_POLICY_ID must name the policy in force (1..128 "
                          "characters): the collector challenges for its coverage")
    return policy_id


def _int(env: Mapping[str, str], name: str, default: int, low: int = 0) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < low:
        raise ConfigError(f"{name}={value} must be ≥ {low}")
    return value


def _seconds_ms(env: Mapping[str, str], name: str, default_s: float) -> int:
    raw = env.get(name, "")
    if raw == "":
        return int(default_s * 1000)
    try:
        return int(float(raw) * 1000)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None


def parse_pcr_list(text: str) -> tuple[int, ...]:
    """``"0-7,11"`` -> ``(0, 1, ..., 7, 11)``; ``ConfigError`` on anything else."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(lo), int(lo))
        except ValueError:
            raise ConfigError(f"PCR list {text!r}: {part!r} is not N or N-M") from None
        if not 0 <= a <= b <= 23:
            raise ConfigError(f"PCR list {text!r}: {part!r} is outside 0..23")
        out.update(range(a, b + 1))
    if not out:
        raise ConfigError(f"PCR list {text!r} is empty")
    return tuple(sorted(out))


def split_ca_certificates(
    certs: tuple[x509.Certificate, ...],
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """(anchors, intermediates): self-issued certificates are anchors, the rest intermediates."""
    anchors = tuple(c for c in certs if c.issuer == c.subject)
    others = tuple(c for c in certs if c.issuer != c.subject)
    return anchors, others


def _from_env(env: Mapping[str, str]) -> CollectorConfig:
    """:meth:`CollectorConfig.from_env`."""
    from services.tpm.ekcert import load_ca_directory
    from services.tpm.errors import CertificateChainError

    ca_dir = env.get("HOSTGATE_EK_CA_DIR", "")
    if not ca_dir:
        raise ConfigError("HOSTGATE_EK_CA_DIR is not set: the collector needs the TPM-"
                          "manufacturer CA certificates (a directory of PEM files)")
    path = Path(ca_dir)
    if not path.is_dir():
        raise ConfigError(f"HOSTGATE_EK_CA_DIR: {path.name!r} is not a directory")
    try:
        anchors, intermediates = split_ca_certificates(load_ca_directory(path))
    except CertificateChainError as exc:
        raise ConfigError(f"HOSTGATE_EK_CA_DIR: {exc}") from exc
    if not anchors:
        raise ConfigError("HOSTGATE_EK_CA_DIR holds no self-signed root certificate")
    rate = env.get("HOSTGATE_CHALLENGE_RATE", "10/60")
    count_s, sep, window_s = rate.partition("/")
    try:
        count, window_ms = int(count_s), int(float(window_s) * 1000)
    except ValueError:
        raise ConfigError(f"HOSTGATE_CHALLENGE_RATE={rate!r} is not COUNT/SECONDS") from None
    if not sep:
        raise ConfigError(f"HOSTGATE_CHALLENGE_RATE={rate!r} is not COUNT/SECONDS")
    allow = env.get("HOSTGATE_ALLOW_EK_WITHOUT_CERT", "0").strip().lower()
    limits = IntakeLimits(
        max_boot_log_bytes=_int(env, "HOSTGATE_MAX_BOOT_LOG_BYTES", 1024 * 1024, 1),
        max_log_events=_int(env, "HOSTGATE_MAX_LOG_EVENTS", 20_000, 1),
        max_ima_bytes=_int(env, "HOSTGATE_MAX_IMA_BYTES", 8 * 1024 * 1024, 1),
        max_ima_entries=_int(env, "HOSTGATE_MAX_IMA_ENTRIES", 100_000, 1),
    )
    return CollectorConfig(
        trusted_cas=anchors,
        intermediates=intermediates,
        allow_ek_without_cert=allow in ("1", "true", "yes", "on"),
        nonce_ttl_ms=_seconds_ms(env, "HOSTGATE_NONCE_TTL_S", 120),
        activation_ttl_ms=_seconds_ms(env, "HOSTGATE_ACTIVATION_TTL_S", 300),
        challenge_rate_count=count,
        challenge_rate_window_ms=window_ms,
        max_open_challenges=_int(env, "HOSTGATE_MAX_OPEN_CHALLENGES", 4, 1),
        max_pending_enrolments=_int(env, "HOSTGATE_MAX_PENDING_ENROLMENTS", 4, 1),
        required_pcrs=parse_pcr_list(env.get("HOSTGATE_REQUIRED_PCRS", "0-7")),
        policy_id=_policy_id(env),
        limits=limits,
        topics=Topics.from_env(env),
    )
