"""Enrolment: EK certificate chain, AK attributes, MakeCredential challenge, activation proof,
and the EK registry's grant.

``EnrollmentRequested`` → (checks) → ``ActivationChallenge`` on ``attest.challenges.v1`` and a
*pending activation* in the host's ``enrollments`` row (``hostgate.EnrollmentState`` v2, field
``pending``). Every pending activation stands on its own, keyed by its challenge id: a new
request never displaces another, and an ENROLLED host's AK keeps working while a rotation is
pending. ``ActivationProof`` with the right secret before the expiry moves that activation to
BINDING and asks the EK registry (``services.collector.ek_registry``) to bind the EK to the
host id; the registry's answer (``EkBindingDecided``) makes the host ENROLLED (granted) or
refuses it with ``EK_IN_USE``. The host hears ENROLLED only after both.

The host hears the outcome: an ``EnrollmentResult`` on ``attest.challenges.v1`` (key host_id),
ENROLLED after a correct proof and the registry's grant, REFUSED beside every
``IntakeRejected`` that can be attributed to an enrolment attempt of that host — i.e. every
refusal of an ``EnrollmentRequested`` or ``ActivationProof`` whose key, ``host_id`` and ids
passed ``check_identity`` (a record speaking for another host, or with ids we cannot echo, gets
the rejection only). Its id is ``output_id(inp, "enrollment-result")``, deterministic like every
collector output.

Checks of a request, in order (first failure wins; a refusal changes no state):

1. key = ``host_id`` (``HOST_MISMATCH``), ids bounded (``MALFORMED``), ``ek_public`` present;
2. the AK is a restricted, fixedTPM, fixedParent, TPM-generated signing key (``BAD_AK_ATTRIBUTES``);
3. an ENROLLED host's request is an AK rotation: it must be signed by the enrolled AK over the
   rotation binding (host id, request id, new AK's name; ``request_auth.rotation_binding``) at a
   TPM clock later than the host's last signed request (``UNAUTHENTICATED`` otherwise: EK
   certificates are public material, so copies alone must not open activations against an
   enrolled host); a signed one presenting another EK: ``EK_CHANGED`` — fails closed, the
   enrolled identity is untouched and the SOC sees the anomaly (re-imaging a host with a new TPM
   needs an operator's ``hostgate identity release`` first);
4. the EK certificate chains to a configured manufacturer CA at the broker's time of the
   request, is not itself a CA, and its key is the presented EK public (``BAD_EK_CERTIFICATE``);
5. the host has fewer than ``max_pending_enrolments`` activations open (``RATE_LIMITED``;
   expired unproved ones are swept first);
6. MakeCredential for the AK's Name to the EK (``MALFORMED`` if the EK cannot be used).

Unauthenticated input burns nothing. Anyone holding the agents' principal reads every
challenge id and may send any proof: a proof naming no open activation, a late one or a wrong
secret is refused and **changes no state** (the secret is 32 random bytes, so a wrong proof is
noise, not a guess to lock out). Only a correct proof, which needs the TPM holding both keys,
changes the host's row.

Residual risk, first enrolment (trust on first use). Before a host id is ENROLLED, anyone with
a valid manufacturer-certified EK may open activations for it: up to
``max_pending_enrolments`` at once per holder of that many certified EKs (filling the slots so
the real host is refused ``RATE_LIMITED`` until they expire), and the first correct proof whose
EK the registry grants wins the id. Once enrolled, the id is bound to its EK (``EK_CHANGED``)
and the EK to the id (``EK_IN_USE``) until an operator releases it, and only the id's enrolled
AK can open a further activation (a rotation). Provisioning that matters
should enrol hosts before they are reachable by others, or pin the expected EK out of band.

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

from services.collector.config import ACTIVATION_SECRET_BYTES, CollectorConfig
from services.collector.host_track import HOSTS, after_request, authenticate
from services.collector.rejections import (
    identified,
    identity_problem,
    output_id,
    reject,
    short_id,
)
from services.collector.request_auth import RequestUnauthenticated, rotation_binding
from services.ekid import ek_key_sha256
from services.errors import HostgateError
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
from services.wire.coords import coordinates_record
from services.wire.subjects import (
    ACTIVATION_CHALLENGE,
    ACTIVATION_PROOF,
    EK_BINDING_REQUESTED,
    ENROLLMENT_REQUESTED,
    ENROLLMENT_RESULT,
)
from services.wire.time import epoch_ms, to_datetime

TABLE: Final = "enrollments"
MAX_PUBLIC_BYTES: Final = 1024
MAX_PROOF_BYTES: Final = 64

ENROLLED: Final = "ENROLLED"
CHALLENGED: Final = "CHALLENGED"
FAILED: Final = "FAILED"
BINDING: Final = "BINDING"
"""A pending activation whose proof was correct, waiting for the EK registry's answer."""


class InternalRecordError(HostgateError):
    """A collector-internal record (EK registry traffic) that is not what the collector writes:
    a bug or a foreign writer. It goes to the DLQ, never becomes a host's rejection."""


def is_enrolled(row: Any) -> bool:
    """Whether an ``enrollments`` row holds an enrolled AK (UNKNOWN reads as not enrolled)."""
    return row is not None and row.get("state") == ENROLLED


def enrollment_result(inp: InputRecord, cfg: CollectorConfig, result: str, *, reason: str = "",
                      detail: str, ak_name: bytes = b"") -> Output:
    """The ``EnrollmentResult`` answering ``inp`` (an EnrollmentRequested or ActivationProof
    that passed ``check_identity``). ``detail`` must hold no secret or key material."""
    rec = inp.record
    result_id = output_id(inp, "enrollment-result")
    challenge_id = rec.get("challenge_id") if inp.subject == ACTIVATION_PROOF else None
    return Output(topic=cfg.topics.challenges, key=str(rec["host_id"]), subject=ENROLLMENT_RESULT,
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
    return (inp.subject in (ENROLLMENT_REQUESTED, ACTIVATION_PROOF)
            and identity_problem(inp, cfg) is None)


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


def ek_digest_of(identity: Mapping[str, Any]) -> bytes:
    """The EK registry key (SHA-256 of the SubjectPublicKeyInfo) of a stored ``EkIdentity``."""
    return ek_key_sha256(bytes(identity["ek_public"]))


def enrolled_ek_digest(row: Mapping[str, Any]) -> bytes:
    """The registry key of an ENROLLED row's EK (rows written before v2 carry none: derived)."""
    stored = row.get("ek_key_sha256")
    return bytes(stored) if stored is not None else ek_digest_of(row["ek"])


def open_pending(row: Mapping[str, Any] | None, now: int) -> list[dict[str, Any]]:
    """The row's pending activations without unproved ones that expired before ``now``.
    BINDING ones are kept whatever their age: they wait for the registry, not for the host."""
    if row is None:
        return []
    return [dict(p) for p in row.get("pending") or []
            if p.get("stage") == BINDING or epoch_ms(p["expires_at"]) >= now]


def holds_ek(row: Mapping[str, Any] | None, digest: bytes) -> bool:
    """Whether the host's row uses or waits for the EK ``digest`` (enrolled or pending)."""
    if row is None:
        return False
    if is_enrolled(row) and hmac.compare_digest(enrolled_ek_digest(row), digest):
        return True
    return any(hmac.compare_digest(bytes(p["ek_key_sha256"]), digest)
               for p in row.get("pending") or [])


@identified
def decide_enrollment(inp: InputRecord, state: StateView, cfg: CollectorConfig) -> Decision:
    """An ``EnrollmentRequested``: challenge the EK for the AK's name, or reject."""
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
    track_update: tuple[StateUpdate, ...] = ()
    if rotating:
        assert existing is not None
        # An enrolled host's own AK must vouch for a rotation: EK certificates and publics are
        # public material, and an unsigned request would spend the host's activation slots.
        track = state.get(HOSTS, host)
        try:
            signed = authenticate(rec, bytes(existing["ak_public"]), track, cfg.limits,
                                  binding=rotation_binding(host, str(rec["request_id"]), ak.name),
                                  memo=cfg.memo)
        except RequestUnauthenticated as exc:
            # The requester hears why (REFUSED, by its request id); no state changes.
            return refuse(inp, cfg, "UNAUTHENTICATED", f"an AK rotation of enrolled host "
                          f"{host!r} must be signed by its enrolled AK: {exc}; nothing was "
                          "changed", extra_log={"anomaly": True}, ak_name=ak.name)
        track_update = (StateUpdate(HOSTS, host, after_request(track, host, now, signed)),)
        enrolled_ek = bytes(existing["ek"]["ek_public"])
        if not hmac.compare_digest(enrolled_ek, ek_public):
            return refuse(inp, cfg, "EK_CHANGED",
                          f"host {host!r} is enrolled with another EK (enrolled EK SHA-256 "
                          f"{hashlib.sha256(enrolled_ek).hexdigest()[:16]}…, presented "
                          f"{hashlib.sha256(ek_public).hexdigest()[:16]}…); re-enrolment "
                          "refused (an operator must release the host first)",
                          extra_log={"anomaly": True}, ak_name=ak.name)
    try:
        identity = _ek_identity(cfg, ek_public, None if ek_cert is None else bytes(ek_cert), now)
        digest = ek_key_sha256(ek_public)
    except CertificateChainError as exc:
        return refuse(inp, cfg, "BAD_EK_CERTIFICATE", f"field ek_cert: {exc}", ak_name=ak.name)
    except (MalformedInput, Unsupported, x509.DuplicateExtension, ValueError) as exc:
        return refuse(inp, cfg, "MALFORMED", f"field ek_public/ek_cert: {exc}", ak_name=ak.name)
    pending = open_pending(existing, now)
    if len(pending) >= cfg.max_pending_enrolments:
        return refuse(inp, cfg, "RATE_LIMITED",
                      f"host {host!r} has {len(pending)} activation challenges open (limit "
                      f"{cfg.max_pending_enrolments}); answer one or wait for them to expire",
                      ak_name=ak.name)

    secret = cfg.random_bytes(ACTIVATION_SECRET_BYTES)
    try:
        challenge = make_credential(ek_public, ak_public, secret)
    except (KeyAttributeError, CredentialError, MalformedInput, Unsupported) as exc:
        return refuse(inp, cfg, "MALFORMED", f"field ek_public: EK cannot be challenged: {exc}",
                      ak_name=ak.name)
    challenge_id = short_id(inp, "act")
    expires = now + cfg.activation_ttl_ms
    out = Output(
        topic=cfg.topics.challenges, key=host, subject=ACTIVATION_CHALLENGE, id=challenge_id,
        record={"challenge_id": challenge_id, "host_id": host, "request_id": rec["request_id"],
                "credential_blob": challenge.credential_blob,
                "encrypted_secret": challenge.encrypted_secret,
                "issued_at": now, "expires_at": expires},
    )
    pending.append({"challenge_id": challenge_id, "request_id": rec["request_id"],
                    "stage": CHALLENGED, "secret_sha256": hashlib.sha256(secret).digest(),
                    "expires_at": expires, "ak_public": ak_public, "ak_name": ak.name,
                    "ek": identity, "ek_key_sha256": digest, "proof_request_id": None,
                    "created_at": now})
    if rotating:
        assert existing is not None
        row = {**existing, "pending": pending, "updated_at": now}
    else:
        # Not enrolled: the top level shows the newest candidate (informational only).
        row = {"host_id": host, "state": CHALLENGED, "request_id": rec["request_id"],
               "ak_public": ak_public, "ak_name": ak.name, "ek": identity,
               "ek_key_sha256": None, "pending": pending, "updated_at": now}
    return Decision(outputs=(out,), state_updates=(StateUpdate(TABLE, host, row),
                                                   *track_update),
                    log={"outcome": "challenged", "rotation": rotating,
                         "chain_verified": bool(identity["chain_verified"]),
                         "open_activations": len(pending)})


@identified
def decide_proof(inp: InputRecord, state: StateView, cfg: CollectorConfig) -> Decision:
    """An ``ActivationProof``: if it carries the secret of one of the host's open activations
    in time, ask the EK registry to bind that activation's EK to the host. A refusal changes no
    state (anyone may send a proof)."""
    rec = inp.record
    host: str = rec["host_id"]
    now = inp.timestamp_ms
    existing = state.get(TABLE, host)
    wanted: str = rec["challenge_id"]
    pending = [dict(p) for p in (existing or {}).get("pending") or []]
    entry = next((p for p in pending if p["challenge_id"] == wanted), None)
    if existing is None or entry is None:
        return refuse(inp, cfg, "FAILED_ACTIVATION",
                      f"field challenge_id {wanted[:80]!r} is not an activation challenge open "
                      f"for host {host!r}")
    candidate = bytes(entry["ak_name"])
    if entry.get("stage") != CHALLENGED:
        return refuse(inp, cfg, "FAILED_ACTIVATION",
                      f"activation challenge {wanted[:80]!r} was already answered",
                      ak_name=candidate)
    expires = epoch_ms(entry["expires_at"])
    if now > expires:
        return refuse(inp, cfg, "FAILED_ACTIVATION",
                      f"activation challenge expired {now - expires} ms before the proof "
                      "arrived", ak_name=candidate)
    proof = bytes(rec["secret_proof"])
    expected = bytes(entry.get("secret_sha256") or b"")
    if not expected or len(proof) > MAX_PROOF_BYTES or not hmac.compare_digest(
            hashlib.sha256(proof).digest(), expected):
        return refuse(inp, cfg, "FAILED_ACTIVATION",
                      "field secret_proof is not the activation secret: the AK and EK are not "
                      "in one TPM (or the challenge was not activated)",
                      extra_log={"anomaly": True}, ak_name=candidate)
    digest = bytes(entry["ek_key_sha256"])
    rest = [p for p in pending if p["challenge_id"] != wanted]
    if is_enrolled(existing) and not hmac.compare_digest(enrolled_ek_digest(existing), digest):
        # Proved possession of another TPM: the holder of that activation learns it lost the
        # id; the enrolled identity is untouched.
        row = {**existing, "pending": rest, "updated_at": now}
        return refuse(inp, cfg, "EK_CHANGED",
                      f"host {host!r} was enrolled with another EK after this challenge was "
                      "issued; re-enrolment refused", ak_name=candidate,
                      extra_log={"anomaly": True},
                      state_updates=(StateUpdate(TABLE, host, row),))
    entry.update(stage=BINDING, secret_sha256=None, proof_request_id=rec["request_id"])
    row = {**existing, "pending": [*rest, entry], "updated_at": now}
    ask = binding_request(inp, cfg, action="BIND", host=host, digest=digest,
                          challenge_id=wanted)
    return Decision(outputs=(ask,), state_updates=(StateUpdate(TABLE, host, row),),
                    log={"outcome": "binding-requested"})


def binding_request(inp: InputRecord, cfg: CollectorConfig, *, action: str, host: str,
                    digest: bytes, challenge_id: str | None = None,
                    command_id: str | None = None, n: int = 0) -> Output:
    """An ``EkBindingRequested`` to the task owning the EK's partition (key: the digest in hex;
    ``n`` tells apart several requests caused by one input)."""
    request_id = output_id(inp, f"ek-{action.lower()}-{n}")
    return Output(topic=cfg.topics.ek_bindings, key=digest.hex(),
                  subject=EK_BINDING_REQUESTED, id=request_id,
                  record={"request_id": request_id, "action": action, "ek_key_sha256": digest,
                          "host_id": host, "challenge_id": challenge_id,
                          "command_id": command_id, "requested_at": inp.timestamp_ms,
                          "cause": coordinates_record(inp.coordinates)})


def decide_binding_answer(inp: InputRecord, state: StateView, cfg: CollectorConfig
                          ) -> Decision:
    """The EK registry's ``EkBindingDecided`` for one of the host's BINDING activations:
    ENROLLED if granted, ``EK_IN_USE`` if refused. A grant nobody waits for any more (the host
    was released, or enrolled another EK meanwhile) is handed back with a RELEASE, so the
    registry never keeps a binding its host does not hold."""
    rec = inp.record
    host: str = rec["host_id"]
    if inp.key != host:
        raise InternalRecordError(f"EkBindingDecided at {inp.coordinates}: key {inp.key!r} is "
                                  f"not its host_id {host!r}")
    digest = bytes(rec["ek_key_sha256"])
    at = epoch_ms(rec["decided_at"])
    granted = rec["outcome"] == "GRANTED"
    existing = state.get(TABLE, host)
    pending = [dict(p) for p in (existing or {}).get("pending") or []]
    entry = next((p for p in pending if p["challenge_id"] == rec.get("challenge_id")
                  and p.get("stage") == BINDING
                  and hmac.compare_digest(bytes(p["ek_key_sha256"]), digest)), None)
    if entry is None:
        if granted and not holds_ek(existing, digest):
            back = binding_request(inp, cfg, action="RELEASE", host=host, digest=digest,
                                   challenge_id=rec.get("challenge_id"))
            return Decision(outputs=(back,), log={"outcome": "grant-returned"})
        return Decision(log={"outcome": "answer-ignored"})
    assert existing is not None
    rest = [p for p in pending if p is not entry]
    proof_id = str(entry.get("proof_request_id") or entry["request_id"])
    challenge_id = str(entry["challenge_id"])
    if granted and is_enrolled(existing) and not hmac.compare_digest(
            enrolled_ek_digest(existing), digest):
        row = {**existing, "pending": rest, "updated_at": at}
        outputs: list[Output] = []
        if not holds_ek(row, digest):
            outputs.append(binding_request(inp, cfg, action="RELEASE", host=host,
                                           digest=digest, challenge_id=challenge_id))
        refused = _refuse_answer(inp, cfg, host, proof_id, challenge_id, entry, "EK_CHANGED",
                                 f"host {host!r} was enrolled with another EK meanwhile; "
                                 "re-enrolment refused", at=at)
        return dataclasses.replace(refused, outputs=(*refused.outputs, *outputs),
                                   state_updates=(StateUpdate(TABLE, host, row),))
    if not granted:
        row = {**existing, "pending": rest, "updated_at": at}
        if not rest and not is_enrolled(existing):
            row["state"] = FAILED
        holder = str(rec.get("holder_host_id") or "another host")
        return _refuse_answer(
            inp, cfg, host, proof_id, challenge_id, entry, "EK_IN_USE",
            "the EK is already bound to another host id (one EK, one host id); an operator "
            "must release it first",
            soc_detail=f"EK SHA-256 {digest.hex()[:16]}… of host {host!r} is bound to host "
                       f"{holder[:128]!r}; enrolment refused",
            at=at, state_updates=(StateUpdate(TABLE, host, row),))
    rotated = is_enrolled(existing)
    row = {**existing, "state": ENROLLED, "request_id": entry["request_id"],
           "ak_public": entry["ak_public"], "ak_name": entry["ak_name"], "ek": entry["ek"],
           "ek_key_sha256": digest, "pending": rest, "updated_at": at}
    told = result_output(inp, cfg, host=host, request_id=proof_id, challenge_id=challenge_id,
                         result=ENROLLED, ak_name=bytes(entry["ak_name"]), at=at,
                         detail=f"AK enrolled for host {host!r}"
                                + (" (rotated under the same EK)" if rotated else ""))
    return Decision(outputs=(told,), state_updates=(StateUpdate(TABLE, host, row),),
                    log={"outcome": "enrolled", "rotation": rotated})


def result_output(inp: InputRecord, cfg: CollectorConfig, *, host: str, request_id: str,
                  challenge_id: str | None, result: str, at: int, detail: str,
                  reason: str = "", ak_name: bytes = b"") -> Output:
    """An ``EnrollmentResult`` built from explicit fields (answers that follow an internal
    record, not the host's own)."""
    result_id = output_id(inp, "enrollment-result")
    return Output(topic=cfg.topics.challenges, key=host, subject=ENROLLMENT_RESULT, id=result_id,
                  record={"result_id": result_id, "host_id": host, "request_id": request_id,
                          "challenge_id": challenge_id, "result": result, "reason": reason,
                          "detail": detail[:1000], "ak_name": bytes(ak_name),
                          "decided_at": at})


def _refuse_answer(inp: InputRecord, cfg: CollectorConfig, host: str, proof_id: str,
                   challenge_id: str, entry: Mapping[str, Any], reason: str, detail: str, *,
                   at: int, soc_detail: str | None = None,
                   state_updates: tuple[Any, ...] = ()) -> Decision:
    """Refuse a proved activation after the registry answered: the SOC's rejection (which may
    name the EK's holder) and the host's REFUSED result (which does not)."""
    rejected = reject(inp, cfg.topics.rejections, reason,
                      f"activation challenge {challenge_id[:80]!r}: {soc_detail or detail}",
                      extra_log={"anomaly": True}, state_updates=state_updates)
    told = result_output(inp, cfg, host=host, request_id=proof_id, challenge_id=challenge_id,
                         result="REFUSED", reason=reason, detail=detail, at=at,
                         ak_name=bytes(entry["ak_name"]))
    return dataclasses.replace(rejected, outputs=(*rejected.outputs, told))
