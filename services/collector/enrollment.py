"""Enrolment: EK certificate chain, AK attributes, MakeCredential challenge, activation proof.

``EnrollmentRequested`` → (checks) → ``ActivationChallenge`` on ``attest.challenges.v1`` and the
host's ``enrollments`` row in state CHALLENGED (or, for an ENROLLED host rotating its AK under
the same EK, a *pending* candidate beside the enrolled AK, which keeps working meanwhile).
``ActivationProof`` with the right secret before the expiry → ENROLLED. Anything else is an
``IntakeRejected`` with a reason; a wrong or late proof also burns the challenge.

The host hears the outcome: an ``EnrollmentResult`` on ``attest.challenges.v1`` (key host_id),
ENROLLED after a correct proof, REFUSED beside every ``IntakeRejected`` that can be attributed
to an enrolment attempt of that host — i.e. every refusal of an ``EnrollmentRequested`` or
``ActivationProof`` whose key, ``host_id`` and ids passed ``check_identity`` (a record
speaking for another host, or with ids we cannot echo, gets the rejection only). Its id is
``output_id(inp, "enrollment-result")``, deterministic like every collector output.

Checks, in order (first failure wins):

1. key = ``host_id`` (``HOST_MISMATCH``), ids bounded (``MALFORMED``), ``ek_public`` present;
2. the AK is a restricted, fixedTPM, fixedParent, TPM-generated signing key (``BAD_AK_ATTRIBUTES``);
3. an ENROLLED host presenting another EK: ``EK_CHANGED`` — fails closed, the enrolled identity
   is untouched and the SOC sees the anomaly (re-imaging a host with a new TPM needs an
   operator to remove the enrolment first);
4. the EK certificate chains to a configured manufacturer CA at the broker's time of the
   request, and its key is the presented EK public (``BAD_EK_CERTIFICATE``);
5. MakeCredential for the AK's Name to the EK (``MALFORMED`` if the EK cannot be used).

The activation secret. It comes from ``CollectorConfig.random_bytes`` (``secrets.token_bytes``)
inside ``decide``, and only its SHA-256 is stored. This does not break exactly-once: the
secret leaves the collector only inside the ActivationChallenge written in the *same*
transaction as the state row holding its hash, so either both commit or neither does; a
re-run of ``decide`` after a crash is a new transaction with a new secret, and the aborted
one's challenge is invisible to ``read_committed`` agents. Deriving the secret with an HMAC
of a collector key over the request coordinates was rejected: MakeCredential's own seed is
random (RSA-OAEP / ephemeral ECDH), so the output bytes could not be replayed byte for byte
anyway, and a leaked HMAC key would reveal every past and future secret.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from services.collector.common import (
    check_identity,
    derived_id,
    epoch_ms,
    output_id,
    reject,
    to_datetime,
)
from services.collector.config import ACTIVATION_SECRET_BYTES, CollectorConfig
from services.runtime.stage import Decision, InputRecord, Output, StateUpdate, StateView
from services.tpm.credential import CredentialError, make_credential
from services.tpm.ekcert import verify_ek_certificate
from services.tpm.errors import (
    CertificateChainError,
    KeyAttributeError,
    MalformedInput,
    Unsupported,
)
from services.tpm.keys import check_ak_attributes, decode_public

SUBJECT_ENROLL: Final = "hostgate.EnrollmentRequested"
SUBJECT_PROOF: Final = "hostgate.ActivationProof"
SUBJECT_ACTIVATION: Final = "hostgate.ActivationChallenge"
SUBJECT_RESULT: Final = "hostgate.EnrollmentResult"
TABLE: Final = "enrollments"
MAX_PUBLIC_BYTES: Final = 1024
MAX_PROOF_BYTES: Final = 64

ENROLLED: Final = "ENROLLED"
CHALLENGED: Final = "CHALLENGED"
FAILED: Final = "FAILED"


def is_enrolled(row: Any) -> bool:
    """Whether an ``enrollments`` row holds an enrolled AK (UNKNOWN reads as not enrolled)."""
    return row is not None and row.get("state") == ENROLLED


def enrollment_result(inp: InputRecord, cfg: CollectorConfig, result: str, *, reason: str = "",
                      detail: str, ak_name: bytes = b"") -> Output:
    """The ``EnrollmentResult`` answering ``inp`` (an EnrollmentRequested or ActivationProof
    that passed ``check_identity``). ``detail`` must hold no secret or key material."""
    rec = inp.record
    result_id = output_id(inp, "enrollment-result")
    challenge_id = rec.get("challenge_id") if inp.subject == SUBJECT_PROOF else None
    return Output(topic=cfg.topics.challenges, key=str(rec["host_id"]), subject=SUBJECT_RESULT,
                  id=result_id,
                  record={"result_id": result_id, "host_id": rec["host_id"],
                          "request_id": rec["request_id"], "challenge_id": challenge_id,
                          "result": result, "reason": reason, "detail": detail[:1000],
                          "ak_name": bytes(ak_name), "decided_at": inp.timestamp_ms})


def refuse(inp: InputRecord, cfg: CollectorConfig, reason: str, detail: str, *,
           ak_name: bytes = b"", extra_log: Mapping[str, str | int | bool] | None = None,
           state_updates: tuple[Any, ...] = ()) -> Decision:
    """``reject`` an enrolment step of an identified host, and tell the host (REFUSED with the
    same reason and detail)."""
    rejected = reject(inp, cfg.topics.rejections, reason, detail, extra_log=extra_log,
                      state_updates=state_updates)
    told = enrollment_result(inp, cfg, "REFUSED", reason=reason, detail=detail,
                             ak_name=ak_name)
    return dataclasses.replace(rejected, outputs=(*rejected.outputs, told))


def attributable(inp: InputRecord, cfg: CollectorConfig) -> bool:
    """Whether ``inp`` is an enrolment step the host can be told about (``on_error``)."""
    ids = {SUBJECT_ENROLL: ("request_id",), SUBJECT_PROOF: ("request_id", "challenge_id")}
    fields = ids.get(inp.subject)
    return fields is not None and check_identity(inp, fields, cfg.limits.max_id_chars) is None


def _ek_identity(cfg: CollectorConfig, ek_public: bytes, ek_cert: bytes | None,
                 now_ms: int) -> dict[str, Any]:
    """The EK identity to store; raises ``CertificateChainError`` if it cannot be trusted."""
    if ek_cert is None:
        if not cfg.allow_ek_without_cert:
            raise CertificateChainError("no EK certificate presented, and enrolment with an EK "
                                        "public only is not enabled")
        return {"ek_public": ek_public, "ek_cert_sha256": None, "manufacturer": None,
                "chain_verified": False}
    verified = verify_ek_certificate(ek_cert, trusted=cfg.trusted_cas,
                                     intermediates=cfg.intermediates, now=to_datetime(now_ms),
                                     ek_public=ek_public)
    if not verified.key_matches_ek:  # verify_ek_certificate raises before; belt and braces
        raise CertificateChainError("EK certificate key is not the presented EK public")
    der = verified.certificate.public_bytes(Encoding.DER)
    manufacturer = verified.device.manufacturer if verified.device is not None else None
    return {"ek_public": ek_public, "ek_cert_sha256": hashlib.sha256(der).digest(),
            "manufacturer": manufacturer, "chain_verified": True}


def decide_enrollment(inp: InputRecord, state: StateView, cfg: CollectorConfig) -> Decision:
    """An ``EnrollmentRequested``: challenge the EK for the AK's name, or reject."""
    topic = cfg.topics.rejections
    bad = check_identity(inp, ("request_id",), cfg.limits.max_id_chars)
    if bad is not None:
        return reject(inp, topic, *bad)
    rec = inp.record
    host: str = rec["host_id"]
    now = inp.timestamp_ms
    ek_public = rec.get("ek_public")
    ek_cert = rec.get("ek_cert")
    ak_public = bytes(rec["ak_public"])
    if ek_public is None:
        return refuse(inp, cfg, "MALFORMED", "field ek_public is required: MakeCredential "
                      "needs the EK's public area, not only its certificate")
    ek_public = bytes(ek_public)
    for name, value in (("ek_public", ek_public), ("ak_public", ak_public)):
        if len(value) > MAX_PUBLIC_BYTES:
            return refuse(inp, cfg, "OVER_LIMITS",
                          f"field {name} is {len(value)} bytes (limit {MAX_PUBLIC_BYTES})")
    try:
        ak = decode_public(ak_public)
        check_ak_attributes(ak)
    except KeyAttributeError as exc:
        return refuse(inp, cfg, "BAD_AK_ATTRIBUTES", f"field ak_public: {exc}")
    except (MalformedInput, Unsupported) as exc:
        return refuse(inp, cfg, "MALFORMED", f"field ak_public: {exc}")

    existing = state.get(TABLE, host)
    rotating = is_enrolled(existing)
    if rotating:
        assert existing is not None
        enrolled_ek = bytes(existing["ek"]["ek_public"])
        if not hmac.compare_digest(enrolled_ek, ek_public):
            return refuse(inp, cfg, "EK_CHANGED",
                          f"host {host!r} is enrolled with another EK (enrolled EK SHA-256 "
                          f"{hashlib.sha256(enrolled_ek).hexdigest()[:16]}…, presented "
                          f"{hashlib.sha256(ek_public).hexdigest()[:16]}…); re-enrolment "
                          "refused", extra_log={"anomaly": True},
                          ak_name=ak.name)
    try:
        identity = _ek_identity(cfg, ek_public, None if ek_cert is None else bytes(ek_cert), now)
    except CertificateChainError as exc:
        return refuse(inp, cfg, "BAD_EK_CERTIFICATE", f"field ek_cert: {exc}", ak_name=ak.name)
    except (MalformedInput, Unsupported, x509.DuplicateExtension, ValueError) as exc:
        return refuse(inp, cfg, "MALFORMED", f"field ek_public/ek_cert: {exc}", ak_name=ak.name)

    secret = cfg.random_bytes(ACTIVATION_SECRET_BYTES)
    try:
        challenge = make_credential(ek_public, ak_public, secret)
    except (KeyAttributeError, CredentialError, MalformedInput, Unsupported) as exc:
        return refuse(inp, cfg, "MALFORMED", f"field ek_public: EK cannot be challenged: {exc}",
                      ak_name=ak.name)
    challenge_id = derived_id(inp, "act")
    expires = now + cfg.activation_ttl_ms
    out = Output(
        topic=cfg.topics.challenges, key=host, subject=SUBJECT_ACTIVATION, id=challenge_id,
        record={"challenge_id": challenge_id, "host_id": host, "request_id": rec["request_id"],
                "credential_blob": challenge.credential_blob,
                "encrypted_secret": challenge.encrypted_secret,
                "issued_at": now, "expires_at": expires},
    )
    pending = {"challenge_id": challenge_id,
               "secret_sha256": hashlib.sha256(secret).digest(),
               "challenge_expires_at": expires, "updated_at": now}
    if rotating:
        assert existing is not None
        row = {**existing, **pending, "pending_ak_public": ak_public,
               "pending_ak_name": ak.name}
    else:
        row = {"host_id": host, "state": CHALLENGED, "request_id": rec["request_id"],
               "ak_public": ak_public, "ak_name": ak.name, "ek": identity,
               "pending_ak_public": None, "pending_ak_name": None, **pending}
    return Decision(outputs=(out,), state_updates=(StateUpdate(TABLE, host, row),),
                    log={"outcome": "challenged", "rotation": rotating,
                         "chain_verified": bool(identity["chain_verified"])})


def _burn(existing: Any, now: int) -> dict[str, Any]:
    """The row after a failed or late proof: no challenge left to answer."""
    row = {**existing, "challenge_id": None, "secret_sha256": None,
           "challenge_expires_at": None, "pending_ak_public": None, "pending_ak_name": None,
           "updated_at": now}
    if not is_enrolled(existing):
        row["state"] = FAILED
    return row


def decide_proof(inp: InputRecord, state: StateView, cfg: CollectorConfig) -> Decision:
    """An ``ActivationProof``: enrol the AK if it carries the challenge's secret in time."""
    topic = cfg.topics.rejections
    bad = check_identity(inp, ("request_id", "challenge_id"), cfg.limits.max_id_chars)
    if bad is not None:
        return reject(inp, topic, *bad)
    rec = inp.record
    host: str = rec["host_id"]
    now = inp.timestamp_ms
    existing = state.get(TABLE, host)
    if existing is None or existing.get("challenge_id") is None:
        return refuse(inp, cfg, "FAILED_ACTIVATION",
                      f"no activation challenge is pending for host {host!r}")
    if existing["challenge_id"] != rec["challenge_id"]:
        return refuse(inp, cfg, "FAILED_ACTIVATION",
                      f"field challenge_id {rec['challenge_id'][:80]!r} is not the pending "
                      "activation challenge")
    burn = (StateUpdate(TABLE, host, _burn(existing, now)),)
    candidate = bytes(existing.get("pending_ak_name") or existing.get("ak_name") or b"")
    expires = epoch_ms(existing["challenge_expires_at"])
    if now > expires:
        return refuse(inp, cfg, "FAILED_ACTIVATION",
                      f"activation challenge expired {now - expires} ms before the proof "
                      "arrived", state_updates=burn, ak_name=candidate)
    proof = bytes(rec["secret_proof"])
    expected = bytes(existing["secret_sha256"] or b"")
    if len(proof) > MAX_PROOF_BYTES or not hmac.compare_digest(
            hashlib.sha256(proof).digest(), expected):
        return refuse(inp, cfg, "FAILED_ACTIVATION",
                      "field secret_proof is not the activation secret: the AK and EK are not "
                      "in one TPM (or the challenge was not activated)",
                      state_updates=burn, extra_log={"anomaly": True},
                      ak_name=candidate)
    row = {**existing, "state": ENROLLED, "challenge_id": None, "secret_sha256": None,
           "challenge_expires_at": None, "updated_at": now}
    rotated = existing.get("pending_ak_public") is not None and is_enrolled(existing)
    if rotated:
        row["ak_public"] = existing["pending_ak_public"]
        row["ak_name"] = existing["pending_ak_name"]
    row["pending_ak_public"] = None
    row["pending_ak_name"] = None
    told = enrollment_result(inp, cfg, "ENROLLED", ak_name=bytes(row["ak_name"]),
                             detail=f"AK enrolled for host {host!r}"
                                    + (" (rotated under the same EK)" if rotated else ""))
    return Decision(outputs=(told,), state_updates=(StateUpdate(TABLE, host, row),),
                    log={"outcome": "enrolled", "rotation": rotated})
