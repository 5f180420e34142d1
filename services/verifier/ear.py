"""EAR-style appraisal: the AR4SI trustworthiness vector and the EAT Attestation Result claims.

References (IETF RATS, work in progress):

* AR4SI — *Attestation Results for Secure Interactions*, draft-ietf-rats-ar4si, section 2.3:
  eight trustworthiness claims (``instance-identity``, ``configuration``, ``executables``,
  ``file-system``, ``hardware``, ``runtime-opaque``, ``storage-opaque``, ``sourced-data``), each
  a small signed integer whose range is its *tier*: **none** -1..1, **affirming** 2..31,
  **warning** 32..95, **contraindicated** 96..127 (negative values mirror these ranges and are
  reserved for private use). Generic values valid for every claim: 0 no claim, 1 unexpected
  evidence, -1 verifier malfunction, 99 cryptographic validation failed.
* EAR — *EAT Attestation Results*, draft-fv-rats-ear (now draft-ietf-rats-ear): claims
  ``eat_profile`` (``tag:github.com,2023:veraison/ear``), ``iat``, ``ear.verifier-id``
  (``developer``, ``build``) and per attester in ``submods``: ``ear.status`` (the worst tier of
  the vector), ``ear.trustworthiness-vector`` (claim name -> integer) and
  ``ear.appraisal-policy-id``.

The claim values used here (names as in AR4SI / the veraison EAR implementations): instance
2 trustworthy, 96 untrustworthy, 97 unrecognised; configuration 2 approved, 96 unsupportable;
executables 3 approved boot, 33 unrecognised (a boot application the policy does not approve:
``policy.codeintegrity.boot_applications``), 96 contraindicated; file-system 2 approved, 96
contraindicated; hardware 2 genuine.

Never claimed (0, "no claim"): ``runtime-opaque`` and ``sourced-data`` (a boot quote says
nothing of them) and ``storage-opaque``. That the AK is fixedTPM says the *attestation* key
never leaves the TPM (``instance-identity``); it says nothing of how the Attester stores its
secrets, and the one secret hostgate gives it, the issuer's host key, is unsealed by the agent
and written to a file. Value 2 (hw-keys-encrypted-secrets: "all secrets in persistent storage
encrypted with keys never visible outside an HSM or TEE") would be false; 32 or 96 would be a
guess, since no evidence shows how the file is kept.

The claims also carry ``eat_nonce`` (the challenge nonce the evidence answers, base64url
without padding; RFC 9711 section 4.1) and ``exp`` (``iat`` + :data:`EAR_VALIDITY_S`). The
JSON is canonical, so audit replay reproduces it byte for byte; signed, it is the payload of a
compact JWS (ES256) with exactly these bytes (:mod:`services.verifier.ear_token`).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

from services.verifier import reasons

EAT_PROFILE: Final = "tag:github.com,2023:veraison/ear"
VERIFIER_DEVELOPER: Final = "hostgate"
VERIFIER_BUILD: Final = "hostgate-verifier/1"
SUBMOD: Final = "tpm-measured-boot"
"""Name of the one attester (submod) a hostgate EAR describes."""
EAR_VALIDITY_S: Final = 24 * 3600
"""``exp`` - ``iat``: how long a relying party may rely on one appraisal (the issuer's default
credential lifetime, ``HOSTGATE_ISSUER_CERT_VALIDITY_S``)."""

CLAIMS: Final[tuple[str, ...]] = (
    "instance-identity", "configuration", "executables", "file-system", "hardware",
    "runtime-opaque", "storage-opaque", "sourced-data",
)
"""AR4SI claim names, in the draft's order (also the order of ``hostgate.TrustVector``)."""

# generic values (AR4SI 2.3.3)
NO_CLAIM: Final = 0
UNEXPECTED_EVIDENCE: Final = 1
VERIFIER_MALFUNCTION: Final = -1
CRYPTO_VALIDATION_FAILED: Final = 99
# per-claim values
TRUSTWORTHY_INSTANCE: Final = 2
UNTRUSTWORTHY_INSTANCE: Final = 96
UNRECOGNIZED_INSTANCE: Final = 97
APPROVED_CONFIG: Final = 2
UNSUPPORTABLE_CONFIG: Final = 96
APPROVED_BOOT: Final = 3
UNRECOGNIZED_RUNTIME: Final = 33
CONTRAINDICATED_RUNTIME: Final = 96
APPROVED_FILES: Final = 2
CONTRAINDICATED_FILES: Final = 96
GENUINE_HARDWARE: Final = 2


class Tier(StrEnum):
    """AR4SI trustworthiness tier (the symbol names of ``hostgate.TrustTier``, lower-cased)."""

    NONE = "none"
    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"

    @property
    def avro(self) -> str:
        """The ``hostgate.TrustTier`` symbol."""
        return self.name


_RANK: Final = {Tier.NONE: 0, Tier.AFFIRMING: 1, Tier.WARNING: 2, Tier.CONTRAINDICATED: 3}


def tier_of(value: int) -> Tier:
    """The tier of an AR4SI claim value (negative values mirror the positive ranges)."""
    v = abs(value)
    if v <= 1:
        return Tier.NONE
    if v <= 31:
        return Tier.AFFIRMING
    if v <= 95:
        return Tier.WARNING
    return Tier.CONTRAINDICATED


@dataclass(frozen=True)
class TrustVector:
    """One AR4SI value per claim (``CLAIMS`` order)."""

    instance_identity: int = NO_CLAIM
    configuration: int = NO_CLAIM
    executables: int = NO_CLAIM
    file_system: int = NO_CLAIM
    hardware: int = NO_CLAIM
    runtime_opaque: int = NO_CLAIM
    storage_opaque: int = NO_CLAIM
    sourced_data: int = NO_CLAIM

    def values(self) -> dict[str, int]:
        """Claim name (AR4SI spelling) -> value."""
        return dict(self._values)

    @functools.cached_property
    def _values(self) -> dict[str, int]:
        return {name: getattr(self, attr) for name, attr in _CLAIM_ATTRIBUTES}

    @functools.cached_property
    def status(self) -> Tier:
        """``ear.status``: the worst tier in the vector."""
        return max((tier_of(getattr(self, attr)) for _, attr in _CLAIM_ATTRIBUTES),
                   key=_RANK.__getitem__)

    def to_avro(self) -> dict[str, str]:
        """The ``hostgate.TrustVector`` record (tiers only)."""
        return dict(self._avro)

    @functools.cached_property
    def _avro(self) -> dict[str, str]:
        return {attr: tier_of(getattr(self, attr)).avro for _, attr in _CLAIM_ATTRIBUTES}


_CLAIM_ATTRIBUTES: Final = tuple((name, name.replace("-", "_")) for name in CLAIMS)
"""(AR4SI claim name, :class:`TrustVector` attribute), in ``CLAIMS`` order."""


# Which AR4SI claim a failed non-policy reason contradicts, and with which value.
_REASON_CLAIMS: Final[dict[str, tuple[str, int]]] = {
    reasons.QUOTE_BAD_SIGNATURE: ("instance_identity", CRYPTO_VALIDATION_FAILED),
    reasons.QUOTE_NONCE_MISMATCH: ("instance_identity", CRYPTO_VALIDATION_FAILED),
    reasons.QUOTE_PCR_DIGEST_MISMATCH: ("instance_identity", CRYPTO_VALIDATION_FAILED),
    reasons.QUOTE_AK_ATTRIBUTES: ("instance_identity", UNTRUSTWORTHY_INSTANCE),
    reasons.QUOTE_AK_NAME_MISMATCH: ("instance_identity", UNRECOGNIZED_INSTANCE),
    reasons.QUOTE_MALFORMED: ("instance_identity", UNEXPECTED_EVIDENCE),
    reasons.QUOTE_UNSUPPORTED: ("instance_identity", UNEXPECTED_EVIDENCE),
    reasons.EVIDENCE_MALFORMED: ("instance_identity", UNEXPECTED_EVIDENCE),
    reasons.OVER_BUDGET: ("instance_identity", UNEXPECTED_EVIDENCE),
    reasons.COUNTERS_WENT_BACKWARDS: ("instance_identity", UNTRUSTWORTHY_INSTANCE),
    reasons.BANKS_DOWNGRADE: ("configuration", UNSUPPORTABLE_CONFIG),
    reasons.LOG_MALFORMED: ("executables", UNEXPECTED_EVIDENCE),
    reasons.LOG_UNSUPPORTED: ("executables", UNEXPECTED_EVIDENCE),
    reasons.REPLAY_PCR_MISMATCH: ("executables", CONTRAINDICATED_RUNTIME),
    reasons.REPLAY_EXTERNAL_PCR: ("executables", UNEXPECTED_EVIDENCE),
    reasons.IMA_MALFORMED: ("file_system", UNEXPECTED_EVIDENCE),
    reasons.IMA_MISSING: ("file_system", UNEXPECTED_EVIDENCE),
    reasons.IMA_PCR_MISMATCH: ("file_system", CONTRAINDICATED_FILES),
    reasons.IMA_BOOT_AGGREGATE: ("file_system", CONTRAINDICATED_FILES),
    reasons.POLICY_NONE_IN_FORCE: ("configuration", NO_CLAIM),
    reasons.POLICY_UNUSABLE: ("configuration", VERIFIER_MALFUNCTION),
    reasons.INTERNAL_ERROR: ("instance_identity", VERIFIER_MALFUNCTION),
}

# Policy rule-id prefixes -> the AR4SI claim the rule speaks for (longest prefix wins).
_RULE_CLAIMS: Final[tuple[tuple[str, str], ...]] = (
    ("policy.codeintegrity.boot_applications", "executables"),
    ("policy.codeintegrity.drivers", "executables"),
    ("policy.codeintegrity.ima_", "file_system"),
    ("policy.codeintegrity.", "configuration"),
    ("policy.secureboot.", "configuration"),
    ("policy.debug.", "configuration"),
    ("policy.banks.", "configuration"),
    ("policy.bootchain.", "executables"),
    ("policy.reference.", "executables"),
    ("policy.evidence.", "executables"),
    ("policy.tpm.", "configuration"),
    ("policy.custom.", "configuration"),
)
_AFFIRM: Final = {"configuration": APPROVED_CONFIG, "executables": APPROVED_BOOT,
                  "file_system": APPROVED_FILES}
_CONTRA: Final = {"configuration": UNSUPPORTABLE_CONFIG, "executables": CONTRAINDICATED_RUNTIME,
                  "file_system": CONTRAINDICATED_FILES}
_RULE_CONTRA: Final[dict[str, int]] = {
    # The rule fails a boot application that is not approved (digest and signer not allowed)
    # or that is denied; both read "unrecognised" here, since the outcome does not say which.
    "policy.codeintegrity.boot_applications": UNRECOGNIZED_RUNTIME,
}
"""A failed rule whose AR4SI value is not its claim's contraindicated one."""


@functools.lru_cache(maxsize=1024)
def rule_claim(rule_id: str) -> str:
    """The AR4SI claim (attribute spelling) a policy rule id speaks for."""
    for prefix, claim in _RULE_CLAIMS:
        if rule_id.startswith(prefix):
            return claim
    return "configuration"


@dataclass(frozen=True)
class AppraisalFacts:
    """What the core established, as the vector needs it."""

    quote_verified: bool
    ek_chain_verified: bool
    failed_reasons: tuple[str, ...]
    """Non-policy reason ids that failed (``services.verifier.reasons``)."""
    rule_outcomes: tuple[tuple[str, bool], ...] = ()
    """(policy rule id, passed) for every evaluated, applicable policy rule."""


@functools.lru_cache(maxsize=4096)
def trust_vector(facts: AppraisalFacts) -> TrustVector:
    """The AR4SI vector for one appraisal; contradictions win over affirmations.

    Remembered by the facts (a pure function of them, and a fleet's appraisals repeat the same
    few: every passing host of one policy has identical facts); the vector is immutable."""
    v: dict[str, int] = {}
    if facts.quote_verified:
        v["instance_identity"] = TRUSTWORTHY_INSTANCE
        if facts.ek_chain_verified:
            v["hardware"] = GENUINE_HARDWARE
    by_claim: dict[str, list[int]] = {}
    for rule_id, passed in facts.rule_outcomes:
        claim = rule_claim(rule_id)
        by_claim.setdefault(claim, []).append(
            _AFFIRM[claim] if passed else _RULE_CONTRA.get(rule_id, _CONTRA[claim]))
    for claim, values in sorted(by_claim.items()):
        v[claim] = max(values, key=lambda x: (_RANK[tier_of(x)], x))
    for reason in sorted(set(facts.failed_reasons)):
        claim, value = _REASON_CLAIMS.get(reason, ("instance_identity", VERIFIER_MALFUNCTION))
        current = v.get(claim, NO_CLAIM)
        if (_RANK[tier_of(value)] >= _RANK[tier_of(current)]
                or tier_of(current) is Tier.AFFIRMING):
            v[claim] = value
    return TrustVector(**v)


def policy_uri(policy_id: str, version: int, digest_hex: str) -> str:
    """``ear.appraisal-policy-id`` for a hostgate policy version."""
    if not policy_id:
        return "policy://hostgate/none"
    return f"policy://hostgate/{policy_id}/{version}#sha256:{digest_hex}"


def eat_nonce(nonce: bytes) -> str:
    """``eat_nonce`` for a challenge nonce: base64url without padding."""
    return base64.urlsafe_b64encode(nonce).rstrip(b"=").decode("ascii")


def ear_claims(vector: TrustVector, *, iat_seconds: int, policy_id_uri: str,
               nonce: bytes = b"", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The EAR claims-set (unsigned) for one appraisal; ``nonce`` is the challenge nonce the
    evidence answers (``eat_nonce``, omitted when empty)."""
    sub: dict[str, Any] = {
        "ear.status": vector.status.value,
        "ear.trustworthiness-vector": vector.values(),
        "ear.appraisal-policy-id": policy_id_uri,
    }
    if extra:
        sub.update(extra)
    claims: dict[str, Any] = {
        "eat_profile": EAT_PROFILE,
        "iat": iat_seconds,
        "exp": iat_seconds + EAR_VALIDITY_S,
        "ear.verifier-id": {"developer": VERIFIER_DEVELOPER, "build": VERIFIER_BUILD},
        "submods": {SUBMOD: sub},
    }
    if nonce:
        claims["eat_nonce"] = eat_nonce(nonce)
    return claims


def canonical(value: Any) -> str:
    """Canonical JSON text: sorted keys, compact, ASCII only, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


_ORJSON_OPTIONS: Final = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS
                          | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME)


def canonical_float_free(value: Any) -> str:
    """:func:`canonical` for a value that holds no float (claims, EAR claims: by type), in
    about a tenth of the time (see :func:`orjson_canonical`)."""
    fast = orjson_canonical(value)
    return fast if fast is not None else canonical(value)


def orjson_canonical(value: Any) -> str | None:
    """orjson's canonical text of a float-free ``value``, or None where it could differ from
    :func:`canonical`. orjson writes the same text as ``json.dumps`` for JSON without floats
    except where it writes non-ASCII characters and DEL raw and for values it refuses (integers
    beyond 64 bits, subclasses, dataclasses, datetimes): None for those."""
    try:
        fast = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None
    if not fast.isascii() or b"\x7f" in fast:  # JSON strings never hold raw controls
        return None
    return fast.decode("ascii")
