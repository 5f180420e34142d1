"""How the collector refuses a record, and the ids of what it writes. Pure.

Every intake step is :func:`identified`: it sees only a record that passes :func:`check_identity`
(the Kafka key is the host, and the ids of :data:`ID_FIELDS` fit). Steps refuse with
:func:`reject`: an ``IntakeRejected`` on the rejections topic naming the record's
coordinates, subject and digest (:func:`services.wire.ids.record_digest`). The collector's
output ids are :func:`output_id` (readable, per kind of output) and :func:`short_id`
(short: what a host echoes back), both from the input's coordinates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from services.collector.config import CollectorConfig
from services.runtime.stage import Decision, InputRecord, Output, StateView
from services.wire.coords import coordinates_record
from services.wire.ids import coordinate_parts, derived_id, record_digest, record_id
from services.wire.subjects import (
    ACTIVATION_PROOF,
    CHALLENGE_REQUESTED,
    ENROLLMENT_REQUESTED,
    EVIDENCE_SUBMITTED,
    INTAKE_REJECTED,
)

STAGE: Final = "collector"
ID_FIELDS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    ENROLLMENT_REQUESTED: ("request_id",),
    ACTIVATION_PROOF: ("request_id", "challenge_id"),
    CHALLENGE_REQUESTED: ("request_id",),
    EVIDENCE_SUBMITTED: ("evidence_id", "challenge_id"),
})
"""The ids a host's record of each subject carries besides ``host_id`` (each 1..``max_id_chars``
characters): what :func:`identified` checks before a step reads the record."""

HostStep = Callable[[InputRecord, StateView, CollectorConfig], Decision]
"""One intake step: a host's record of one subject, the state, the config -> the decision."""


def output_id(inp: InputRecord, kind: str) -> str:
    """Deterministic id of what ``inp`` produced: ``collector:<kind>:<topic>:<part>:<offset>``."""
    return record_id(STAGE, kind, inp.coordinates)


def short_id(inp: InputRecord, kind: str) -> str:
    """A short deterministic id (challenge ids): ``<kind>-`` + 32 hex of
    SHA-256(kind, coordinates)."""
    return derived_id(kind, kind, *coordinate_parts(inp.coordinates))


def host_key(inp: InputRecord) -> str:
    """The partition's host: the Kafka key, else the host id the record claims."""
    return inp.key if inp.key is not None else str(inp.record.get("host_id", ""))


def reject(inp: InputRecord, topic: str, reason: str, detail: str,
           *, extra_log: Mapping[str, str | int | bool] | None = None,
           state_updates: tuple[Any, ...] = ()) -> Decision:
    """An ``IntakeRejected`` for ``inp`` on ``topic``: reason symbol plus a sentence naming
    the field or limit. Never put secrets or key material in ``detail``."""
    key = host_key(inp)
    rejection_id = output_id(inp, "rejected")
    record = {
        "rejection_id": rejection_id,
        "host_id": key,
        "reason": reason,
        "detail": detail[:1000],
        "source": coordinates_record(inp.coordinates),
        "record_subject": inp.subject,
        "record_digest": record_digest(inp.subject, inp.record),
        "rejected_at": inp.timestamp_ms,
    }
    out = Output(topic=topic, key=key, subject=INTAKE_REJECTED, record=record,
                 id=rejection_id)
    log: dict[str, str | int | bool] = {"outcome": "rejected", "reason": reason,
                                        "subject": inp.subject}
    log.update(extra_log or {})
    return Decision(outputs=(out,), state_updates=state_updates, log=log)


def check_identity(inp: InputRecord, id_fields: tuple[str, ...],
                   max_chars: int) -> tuple[str, str] | None:
    """(reason, detail) if the key and ``host_id`` disagree (``HOST_MISMATCH``) or an id is
    empty or too long (``MALFORMED``); None if the record may be looked at further."""
    claimed = str(inp.record.get("host_id", ""))
    if inp.key is None or inp.key != claimed:
        return ("HOST_MISMATCH", f"record host_id {claimed[:64]!r} differs from its Kafka key "
                f"{(inp.key or '')[:64]!r}: a host may only speak for itself")
    for name in ("host_id", *id_fields):
        value = str(inp.record.get(name, ""))
        if not value or len(value) > max_chars:
            return ("MALFORMED",
                    f"field {name} must be 1..{max_chars} characters, got {len(value)}")
    return None


def identity_problem(inp: InputRecord, cfg: CollectorConfig) -> tuple[str, str] | None:
    """:func:`check_identity` of a host's record with the ids :data:`ID_FIELDS` names for its
    subject."""
    return check_identity(inp, ID_FIELDS[inp.subject], cfg.limits.max_id_chars)


def identified(step: HostStep) -> HostStep:
    """``step`` for records that pass :func:`identity_problem` only: any other record gets an
    ``IntakeRejected`` (``HOST_MISMATCH`` or ``MALFORMED``) before ``step`` looks at it."""

    @functools.wraps(step)
    def checked(inp: InputRecord, state: StateView, cfg: CollectorConfig) -> Decision:
        bad = identity_problem(inp, cfg)
        if bad is not None:
            return reject(inp, cfg.topics.rejections, *bad)
        return step(inp, state, cfg)

    return checked
