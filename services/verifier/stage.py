"""The verifier stage: ``attest.collected.v1`` in, one ``hostgate.Verdict`` per record out.

The shell around :func:`services.verifier.core.appraise`. The policy in force comes from the
global table ``policies`` over the compacted ``attest.policies.v1`` (every worker holds all of
it, see ``services.runtime.globaltable``): of the records keyed ``HOSTGATE_POLICY_ID`` the
highest version wins. Exactly once comes from the runtime (read_committed input, one
transaction per batch); the verdict id (hash of evidence digest and policy digest) lets any
consumer de-duplicate as well.

=============================  ====================================================  ========
environment                    meaning                                               default
=============================  ====================================================  ========
``HOSTGATE_POLICY_ID``         id of the policy in force (required)                  —
``HOSTGATE_TOPIC_NAMESPACE``   prefix ``<ns>.`` for every topic (isolated tests)     empty
=============================  ====================================================  ========

A record that decodes but cannot be appraised (a bug) still gets a failed verdict, naming
``verifier.internal_error``; only undecodable bytes go to ``verifier.dlq.v1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.errors import ConfigError
from services.runtime.stage import (
    Decision,
    GlobalTableSpec,
    InputRecord,
    Output,
    Stage,
    StateView,
)
from services.verifier import core, reasons
from services.verifier.policy_in_force import (
    POLICY_SUBJECT,
    POLICY_TABLE,
    PolicyCache,
    PolicyInForce,
    PolicyUnusable,
    newer,
)

INPUT_SUBJECT = "hostgate.EvidenceCollected"
MAX_POLICY_ID = 128


@dataclass(frozen=True)
class VerifierTopics:
    """The topics one verifier deployment uses (prefixed by a namespace in isolated tests)."""

    namespace: str = ""

    def _t(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def collected(self) -> str:
        return self._t("attest.collected.v1")

    @property
    def verdicts(self) -> str:
        return self._t("attest.verdicts.v1")

    @property
    def policies(self) -> str:
        return self._t("attest.policies.v1")

    @property
    def policy_history(self) -> str:
        """Every version published, never compacted: what audit replay reads policies from."""
        return self._t("attest.policies.history.v1")

    @property
    def dlq(self) -> str:
        return self._t("verifier.dlq.v1")


def _coordinates(inp: InputRecord) -> dict[str, Any]:
    c = inp.coordinates
    return {"topic": c.topic, "partition": c.partition, "offset": c.offset}


def policy_of(state: StateView, policy_id: str, cache: PolicyCache
              ) -> PolicyInForce | PolicyUnusable | None:
    """The policy in force as the state shows it (None: no record; PolicyUnusable: broken)."""
    record = state.get(POLICY_TABLE, policy_id)
    if record is None:
        return None
    try:
        return cache.get(record)
    except PolicyUnusable as exc:
        return exc


def _decision(inp: InputRecord, verdict: core.VerdictRecord, topic: str) -> Decision:
    rec = verdict.record
    out = Output(topic=topic, key=str(rec["host_id"]), subject=core.VERDICT_SUBJECT,
                 record=rec, id=verdict.verdict_id)
    facts: Mapping[str, str | int | bool] = {
        "verdict": str(rec["result"]), "verdict_id": verdict.verdict_id,
        "reasons": ",".join(verdict.reason_ids)[:300], "policy_version": int(
            rec["policy_version"]),
    }
    return Decision(outputs=(out,), log=facts)


def decide(inp: InputRecord, state: StateView, *, policy_id: str, topics: VerifierTopics,
           cache: PolicyCache) -> Decision:
    """Appraise one collected record under the policy in force; one verdict out."""
    policy = policy_of(state, policy_id, cache)
    verdict = core.appraise(inp.record, policy, collected_at=_coordinates(inp))
    return _decision(inp, verdict, topics.verdicts)


def on_error(inp: InputRecord, exc: Exception, *, topics: VerifierTopics) -> Decision:
    """A decodable record whose appraisal raised: a failed verdict, never the DLQ."""
    verdict = core.error_verdict(
        inp.record, reasons.INTERNAL_ERROR,
        f"The verifier could not appraise this evidence ({type(exc).__name__}); it fails "
        "closed.", collected_at=_coordinates(inp))
    return _decision(inp, verdict, topics.verdicts)


def build_stage(env: Mapping[str, str]) -> Stage:
    """The verifier stage, configured from ``env`` (see the module docstring)."""
    policy_id = env.get("HOSTGATE_POLICY_ID", "").strip()
    if not policy_id or len(policy_id) > MAX_POLICY_ID:
        raise ConfigError("HOSTGATE_POLICY_ID must name the policy in force (1..128 characters)")
    topics = VerifierTopics(env.get("HOSTGATE_TOPIC_NAMESPACE", "").strip())
    cache = PolicyCache()

    def stage_decide(inp: InputRecord, state: StateView) -> Decision:
        return decide(inp, state, policy_id=policy_id, topics=topics, cache=cache)

    def stage_on_error(inp: InputRecord, exc: Exception) -> Decision:
        return on_error(inp, exc, topics=topics)

    return Stage(
        name="verifier",
        input_topics=(topics.collected,),
        input_subjects=frozenset({INPUT_SUBJECT}),
        decide=stage_decide,
        on_error=stage_on_error,
        dlq=topics.dlq,
        global_tables={POLICY_TABLE: GlobalTableSpec(topics.policies, POLICY_SUBJECT, newer)},
    )
