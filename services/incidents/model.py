"""Typed values of the incidents stage, converted to and from their Avro records at the edge.

Inputs arrive as decoded Avro mappings (schema-checked, nothing more): ``from_avro`` functions
clip every string and list to the bounds below, so one hostile or buggy upstream record cannot
grow an incident without limit. Timestamps are Unix milliseconds; the codec hands
``timestamp-millis`` fields over as ``datetime`` and accepts ``int`` back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from services.runtime.stage import Coordinates
from services.wire.coords import coordinates_record
from services.wire.time import epoch_ms

MAX_RULES_PER_OCCURRENCE: Final = 32
"""Failed rules kept per occurrence (a verdict failing more keeps the first 32)."""
MAX_INDICATORS: Final = 16
"""Occurrences whose indicators an incident keeps: the first, then the 15 most recent."""
MAX_APPLIED_COMMANDS: Final = 64
"""Applied command ids kept for de-duplication (the lifecycle needs at most four)."""
MAX_CLOSED_INCIDENTS: Final = 16
"""Earlier closed incident ids kept per host (to refuse commands on them by name)."""
MAX_TEXT: Final = 1024
"""Characters kept of a free-text field (reason, root cause, rule sentence)."""
MAX_ID: Final = 256
"""Characters kept of an identifier (host, actor, command, rule, policy ids)."""


def clip(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` as a string of at most ``limit`` characters (an ellipsis marks a cut)."""
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def coords_from_avro(rec: Mapping[str, Any]) -> Coordinates:
    """A ``hostgate.Coordinates`` record as ``Coordinates``."""
    return Coordinates(clip(rec["topic"], MAX_ID), int(rec["partition"]), int(rec["offset"]))


class IndicatorSource(Enum):
    """Which kind of record an occurrence came from (Avro ``hostgate.IndicatorSource``)."""

    VERDICT = "VERDICT"
    INTAKE_REJECTION = "INTAKE_REJECTION"


@dataclass(frozen=True)
class OffendingEvent:
    """The event-log event that broke a rule, as the verifier reported it. Its type field is
    ``untrusted_event_type``: it is not covered by the event digest."""

    pcr: int
    seq: int
    untrusted_event_type: int
    event_type_name: str
    bank: str
    digest: bytes
    data_summary: str

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> OffendingEvent:
        return cls(int(rec["pcr"]), int(rec["seq"]), int(rec["untrusted_event_type"]),
                   clip(rec["event_type_name"], MAX_ID), str(rec["bank"]),
                   bytes(rec["digest"])[:64], clip(rec["data_summary"], 256))

    def to_avro(self) -> dict[str, Any]:
        return {"pcr": self.pcr, "seq": self.seq,
                "untrusted_event_type": self.untrusted_event_type,
                "event_type_name": self.event_type_name, "bank": self.bank,
                "digest": self.digest, "data_summary": self.data_summary}


@dataclass(frozen=True)
class FailedRule:
    """One rule a host broke, with the event that broke it (None when no single event did)."""

    rule_id: str
    sentence: str
    event: OffendingEvent | None = None

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> FailedRule:
        ev = rec.get("event")
        return cls(clip(rec["rule_id"], MAX_ID), clip(rec["sentence"]),
                   None if ev is None else OffendingEvent.from_avro(ev))

    def to_avro(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "sentence": self.sentence,
                "event": None if self.event is None else self.event.to_avro()}


@dataclass(frozen=True)
class Indicators:
    """Indicators of compromise of one failing occurrence: enough to fetch the exact evidence
    (its coordinates and digest) and the exact policy (its digest) again."""

    source: IndicatorSource
    record_id: str
    record: Coordinates
    failed_rules: tuple[FailedRule, ...]
    evidence: Coordinates
    evidence_digest: bytes
    observed_at_ms: int
    policy_id: str | None = None
    policy_version: int | None = None
    policy_digest: bytes | None = None

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> Indicators:
        return cls(
            source=IndicatorSource(rec["source"]),
            record_id=clip(rec["record_id"], MAX_ID),
            record=coords_from_avro(rec["record"]),
            failed_rules=tuple(FailedRule.from_avro(r)
                               for r in rec["failed_rules"][:MAX_RULES_PER_OCCURRENCE]),
            evidence=coords_from_avro(rec["evidence"]),
            evidence_digest=bytes(rec["evidence_digest"])[:64],
            observed_at_ms=epoch_ms(rec["observed_at"]),
            policy_id=rec.get("policy_id"),
            policy_version=rec.get("policy_version"),
            policy_digest=None if rec.get("policy_digest") is None else bytes(rec["policy_digest"]),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "source": self.source.value, "record_id": self.record_id,
            "record": coordinates_record(self.record),
            "failed_rules": [r.to_avro() for r in self.failed_rules],
            "evidence": coordinates_record(self.evidence), "evidence_digest": self.evidence_digest,
            "policy_id": self.policy_id, "policy_version": self.policy_version,
            "policy_digest": self.policy_digest, "observed_at": self.observed_at_ms,
        }

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.rule_id for r in self.failed_rules)


def keep_indicators(kept: Sequence[Indicators], new: Indicators) -> tuple[Indicators, ...]:
    """Append ``new`` keeping at most ``MAX_INDICATORS``: the first occurrence (how it began)
    and the most recent ones (how it goes)."""
    items = (*kept, new)
    if len(items) <= MAX_INDICATORS:
        return items
    return (items[0], *items[len(items) - (MAX_INDICATORS - 1):])


def keep_last(items: Sequence[str], new: str, limit: int) -> tuple[str, ...]:
    """Append ``new`` and keep the newest ``limit`` entries."""
    return (*items, new)[-limit:]
