"""The collector's pure core: one ``decide`` for every record on its input topics.

``attest.requests.v1`` carries ``EnrollmentRequested``, ``ActivationProof`` and
``ChallengeRequested``; ``attest.evidence.v1`` carries ``EvidenceSubmitted``;
``attest.identity.v1`` the operators' ``IdentityCommand``; the collector-internal
``collector.ek-bindings.v1`` / ``collector.ek-grants.v1`` the EK registry's
``EkBindingRequested`` / ``EkBindingDecided``. Each subject has its own module
(``enrollment``, ``challenges``, ``intake``, ``identity``, ``ek_registry``); this one
dispatches and holds the error policy. Every decodable input from outside ends in exactly one
place: an output on ``attest.challenges.v1`` / ``attest.collected.v1`` /
``attest.identity.events.v1`` / an internal topic, a state change, or an ``IntakeRejected`` on
``attest.rejections.v1`` (plus a REFUSED ``EnrollmentResult`` when it refuses an identified
host's enrolment step) — never nowhere, and an unknown host is a rejection, not a DLQ record.

First check, for every record: it must sit on the partition Kafka's default partitioner maps
its key to (``InputRecord.key_partition``, computed by the runtime). State is partitioned by
key: a record keyed ``web-042`` on another partition would be judged by a task whose tables
know nothing of the real ``web-042``. Such a record is refused ``WRONG_PARTITION`` with no
state change (an internal record on a wrong partition goes to the DLQ: only the collector
writes those topics, so it is a bug, not a host's doing).

State tables (all keyed within the task's partition, see ``services.runtime.worker``):
``enrollments`` (host_id → EnrollmentState), ``challenges`` (challenge id → PendingChallenge),
``nonces`` (hex nonce → UsedNonce), ``hosts`` (host_id → HostTrackState), ``ek_bindings``
(EK digest → EkBinding, on the EK digest's partition).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from services.collector.challenges import (
    CHALLENGES,
    NONCES,
    decide_challenge_request,
)
from services.collector.config import CollectorConfig
from services.collector.ek_registry import TABLE as EK_BINDINGS
from services.collector.ek_registry import decide_binding_request
from services.collector.enrollment import TABLE as ENROLLMENTS
from services.collector.enrollment import (
    InternalRecordError,
    attributable,
    decide_binding_answer,
    decide_enrollment,
    decide_proof,
    refuse,
)
from services.collector.host_track import HOSTS
from services.collector.identity import decide_identity_command
from services.collector.intake import decide_evidence
from services.collector.rejections import reject
from services.errors import HostgateError
from services.runtime.stage import Decision, InputRecord, StateView
from services.wire import subjects
from services.wire.subjects import ACTIVATION_PROOF as SUBJECT_PROOF
from services.wire.subjects import CHALLENGE_REQUESTED as SUBJECT_REQUEST
from services.wire.subjects import EK_BINDING_DECIDED as SUBJECT_BINDING_DECIDED
from services.wire.subjects import EK_BINDING_REQUESTED as SUBJECT_BINDING_REQUEST
from services.wire.subjects import ENROLLMENT_REQUESTED as SUBJECT_ENROLL
from services.wire.subjects import EVIDENCE_SUBMITTED as SUBJECT_EVIDENCE
from services.wire.subjects import IDENTITY_COMMAND as SUBJECT_COMMAND

INTERNAL_SUBJECTS: Final = frozenset({SUBJECT_BINDING_REQUEST, SUBJECT_BINDING_DECIDED})
"""Records only the collector writes (its EK registry traffic)."""
INPUT_SUBJECTS: Final = frozenset({SUBJECT_ENROLL, SUBJECT_PROOF, SUBJECT_REQUEST,
                                   SUBJECT_EVIDENCE, SUBJECT_COMMAND, *INTERNAL_SUBJECTS})
TABLES: Final[Mapping[str, str]] = {
    ENROLLMENTS: subjects.ENROLLMENT_STATE,
    CHALLENGES: subjects.PENDING_CHALLENGE,
    NONCES: subjects.USED_NONCE,
    HOSTS: subjects.HOST_TRACK_STATE,
    EK_BINDINGS: subjects.EK_BINDING,
}

_HANDLERS: Final[Mapping[str, Callable[[InputRecord, StateView, CollectorConfig], Decision]]] = {
    SUBJECT_ENROLL: decide_enrollment,
    SUBJECT_PROOF: decide_proof,
    SUBJECT_REQUEST: decide_challenge_request,
    SUBJECT_EVIDENCE: decide_evidence,
    SUBJECT_COMMAND: decide_identity_command,
    SUBJECT_BINDING_REQUEST: decide_binding_request,
    SUBJECT_BINDING_DECIDED: decide_binding_answer,
}


class UnexpectedSubject(HostgateError):
    """A record type the collector does not handle reached ``decide`` (a wiring bug)."""


def decide(inp: InputRecord, state: StateView, cfg: CollectorConfig) -> Decision:
    """Route one decoded input to its subject's decision."""
    handler = _HANDLERS.get(inp.subject)
    if handler is None:
        raise UnexpectedSubject(f"collector got {inp.subject} at {inp.coordinates}")
    if inp.misrouted:
        return _wrong_partition(inp, cfg)
    return handler(inp, state, cfg)


def _wrong_partition(inp: InputRecord, cfg: CollectorConfig) -> Decision:
    """Refuse a record that is not on its key's partition, before looking at anything else."""
    c = inp.coordinates
    key = (inp.key or "")[:64]
    if inp.subject in INTERNAL_SUBJECTS:
        raise InternalRecordError(f"{inp.subject} keyed {key!r} is on partition "
                                  f"{c.partition} of {c.topic}, not its key's "
                                  f"({inp.key_partition})")
    if inp.key is None:
        where = "has no key, so it belongs to no partition"
    elif inp.key_partition is None:
        where = f"could not be placed: the partition count of {c.topic} is unknown"
    else:
        where = f"belongs to partition {inp.key_partition} of {c.topic}"
    return reject(inp, cfg.topics.rejections, "WRONG_PARTITION",
                  f"record keyed {key!r} {where}, but was written to partition {c.partition}: "
                  "a host's state lives only on its key's partition, so the record was not "
                  "looked at", extra_log={"anomaly": True})


def on_host_fault(inp: InputRecord, exc: HostgateError, cfg: CollectorConfig) -> Decision:
    """A host record whose decision raised a host's fault (``services.runtime.faults``): refuse
    it as ``MALFORMED`` with the error class and message (the TPM library's errors name the
    field and byte offset; nothing secret is in them). A bug never gets here: the runtime
    dead-letters it, and so the collector's own records (the EK registry's) whatever failed."""
    if inp.subject in INTERNAL_SUBJECTS:
        raise exc  # to the DLQ: only the collector writes these, no host is at fault
    detail = f"{type(exc).__name__}: {exc}"
    if attributable(inp, cfg):  # an enrolment step: the host hears REFUSED too
        return refuse(inp, cfg, "MALFORMED", f"record could not be judged: {detail}",
                      extra_log={"error": type(exc).__name__})
    return reject(inp, cfg.topics.rejections, "MALFORMED", f"record could not be judged: "
                  f"{detail}", extra_log={"error": type(exc).__name__})
