"""What evaluating a policy yields: one result per rule, and the verdict that names the policy.

Everything here is deterministic: results are sorted by rule id, JSON is canonical, and nothing
reads a clock, so the same claims and policy always give byte-identical verdict bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.verifier.policy.model import canonical_json


class Outcome(StrEnum):
    """A rule's result. ``not_applicable`` is neither pass nor fail (its claims are absent)."""

    PASS = "pass"
    FAIL = "fail"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class EventRef:
    """The event that decided a rule: where it is and what it said (decoded, shortened)."""

    pcr: int
    seq: int
    type: str
    digest: str
    """``alg:hex`` in the strongest bank the event carries (empty if it carries none)."""
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {"pcr": self.pcr, "seq": self.seq, "type": self.type, "digest": self.digest,
                "summary": self.summary}


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome with one plain sentence and, when one exists, the offending event."""

    rule_id: str
    outcome: Outcome
    message: str
    event: EventRef | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule_id, "outcome": self.outcome.value, "message": self.message,
                "event": self.event.to_json() if self.event is not None else None}


@dataclass(frozen=True)
class Verdict:
    """The policy's judgement of one piece of evidence. ``passed`` iff no rule failed."""

    policy_id: str
    policy_version: str
    policy_digest: str
    results: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.outcome is not Outcome.FAIL for r in self.results)

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        """The failed rules, in rule-id order."""
        return tuple(r for r in self.results if r.outcome is Outcome.FAIL)

    def result(self, rule_id: str) -> RuleResult | None:
        """The result of ``rule_id``, if that rule was evaluated."""
        for r in self.results:
            if r.rule_id == rule_id:
                return r
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": {"id": self.policy_id, "version": self.policy_version,
                       "digest": self.policy_digest},
            "passed": self.passed,
            "results": [r.to_json() for r in self.results],
        }

    def canonical_json(self) -> bytes:
        """Canonical JSON bytes of :meth:`to_json` (sorted keys, compact, UTF-8)."""
        return canonical_json(self.to_json())
