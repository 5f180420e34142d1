"""The collector's pure core: one ``decide`` for every record on its two input topics.

``attest.requests.v1`` carries ``EnrollmentRequested``, ``ActivationProof`` and
``ChallengeRequested``; ``attest.evidence.v1`` carries ``EvidenceSubmitted``. Each subject has
its own module (``enrollment``, ``challenges``, ``intake``); this one dispatches and holds the
error policy. Every decodable input ends in exactly one place: an output on
``attest.challenges.v1`` / ``attest.collected.v1``, a state change with an ENROLLED
``EnrollmentResult`` (a correct activation proof), or an ``IntakeRejected`` on
``attest.rejections.v1`` (plus a REFUSED ``EnrollmentResult`` when it refuses an identified
host's enrolment step) — never nowhere, and an unknown host is a rejection, not a DLQ record.

State tables (all keyed within the task's partition, see ``services.runtime.worker``):
``enrollments`` (host_id → EnrollmentState), ``challenges`` (challenge id → PendingChallenge),
``nonces`` (hex nonce → UsedNonce), ``hosts`` (host_id → HostTrackState).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from services.collector.challenges import (
    CHALLENGES,
    HOSTS,
    NONCES,
    SUBJECT_REQUEST,
    decide_challenge_request,
)
from services.collector.common import reject
from services.collector.config import CollectorConfig
from services.collector.enrollment import (
    SUBJECT_ENROLL,
    SUBJECT_PROOF,
    attributable,
    decide_enrollment,
    decide_proof,
    refuse,
)
from services.collector.enrollment import TABLE as ENROLLMENTS
from services.collector.intake import SUBJECT_EVIDENCE, decide_evidence
from services.errors import HostgateError
from services.runtime.stage import Decision, InputRecord, StateView

INPUT_SUBJECTS: Final = frozenset({SUBJECT_ENROLL, SUBJECT_PROOF, SUBJECT_REQUEST,
                                   SUBJECT_EVIDENCE})
TABLES: Final[Mapping[str, str]] = {
    ENROLLMENTS: "hostgate.EnrollmentState",
    CHALLENGES: "hostgate.PendingChallenge",
    NONCES: "hostgate.UsedNonce",
    HOSTS: "hostgate.HostTrackState",
}

_HANDLERS: Final[Mapping[str, Callable[[InputRecord, StateView, CollectorConfig], Decision]]] = {
    SUBJECT_ENROLL: decide_enrollment,
    SUBJECT_PROOF: decide_proof,
    SUBJECT_REQUEST: decide_challenge_request,
    SUBJECT_EVIDENCE: decide_evidence,
}


class UnexpectedSubject(HostgateError):
    """A record type the collector does not handle reached ``decide`` (a wiring bug)."""


def decide(inp: InputRecord, state: StateView, cfg: CollectorConfig) -> Decision:
    """Route one decoded input to its subject's decision."""
    handler = _HANDLERS.get(inp.subject)
    if handler is None:
        raise UnexpectedSubject(f"collector got {inp.subject} at {inp.coordinates}")
    return handler(inp, state, cfg)


def on_error(inp: InputRecord, exc: Exception, cfg: CollectorConfig) -> Decision:
    """A decodable record whose decision raised: refuse it as ``MALFORMED`` with the error
    class and message (our errors name field and offset; nothing secret is in them)."""
    if isinstance(exc, UnexpectedSubject):
        raise exc  # to the DLQ: not a host's fault
    detail = f"{type(exc).__name__}: {exc}"
    if attributable(inp, cfg):  # an enrolment step: the host hears REFUSED too
        return refuse(inp, cfg, "MALFORMED", f"record could not be judged: {detail}",
                      extra_log={"error": type(exc).__name__})
    return reject(inp, cfg.topics.rejections, "MALFORMED", f"record could not be judged: "
                  f"{detail}", extra_log={"error": type(exc).__name__})
