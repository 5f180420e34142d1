"""The verifier stage: ``attest.collected.v1`` in, one ``hostgate.Verdict`` per record out.

The shell around :func:`services.verifier.core.appraise`. The policy in force comes from the
global table ``policies`` over the compacted ``attest.policies.v1`` (every worker holds all of
it, see ``services.runtime.globaltable``): of the records keyed ``HOSTGATE_POLICY_ID`` the
highest version wins. Exactly once comes from the runtime (read_committed input, one
transaction per batch); the verdict id (hash of evidence digest and policy digest) lets any
consumer de-duplicate as well.

Its settings (``HOSTGATE_POLICY_ID``, ``HOSTGATE_TOPIC_NAMESPACE``) are read by
:class:`services.verifier.config.VerifierConfig`.

Faults are mapped as in every stage (``services.runtime.faults``): a host's fault that escapes
appraisal is a failed verdict naming it (``verifier.evidence.malformed``); a bug is a failed
verdict too, ``verifier.internal_error``, which names the verifier as the one at fault, and is
counted in ``hostgate_internal_errors``. It must not be a dead letter: evidence that crashes the
verifier would then leave its host TRUSTED on its last credential. Only undecodable bytes go to
``verifier.dlq.v1``.

:func:`build_stage` makes the worker's one :class:`~services.verifier.memo.VerifierMemo` and
hands it to every appraisal (why that never changes a verdict: :mod:`services.verifier.memo`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from services.errors import HostgateError
from services.runtime.stage import (
    Decision,
    GlobalTableSpec,
    InputRecord,
    Output,
    Stage,
    StateView,
)
from services.verifier import core, reasons
from services.verifier.config import VerifierConfig
from services.verifier.policy_in_force import (
    POLICY_TABLE,
    newer,
    policy_of,
)
from services.wire.subjects import POLICY_PUBLISHED as POLICY_SUBJECT

INPUT_SUBJECT = "hostgate.EvidenceCollected"


def _coordinates(inp: InputRecord) -> dict[str, Any]:
    c = inp.coordinates
    return {"topic": c.topic, "partition": c.partition, "offset": c.offset}


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


def decide(inp: InputRecord, state: StateView, cfg: VerifierConfig) -> Decision:
    """Appraise one collected record under the policy in force; one verdict out."""
    policy = policy_of(state, cfg.policy_id, cfg.policies)
    verdict = core.appraise(inp.record, policy, collected_at=_coordinates(inp), memo=cfg.memo)
    return _decision(inp, verdict, cfg.topics.verdicts)


def on_host_fault(inp: InputRecord, exc: HostgateError, cfg: VerifierConfig) -> Decision:
    """A host's fault that escaped appraisal (``services.runtime.faults``): a failed verdict
    naming it (its message names the field and offset). A bug is never blamed on the host:
    the runtime dead-letters it and counts it in ``hostgate_internal_errors``."""
    verdict = core.error_verdict(
        inp.record, reasons.EVIDENCE_MALFORMED,
        f"The evidence could not be appraised: {type(exc).__name__}: {exc}",
        collected_at=_coordinates(inp))
    return _decision(inp, verdict, cfg.topics.verdicts)


def on_bug(inp: InputRecord, exc: Exception, cfg: VerifierConfig) -> Decision:
    """A bug in appraisal: a failed verdict that says so (fail closed; see the module
    docstring). Audit replay does the same (``services.verifier.audit_replay.reappraise``)."""
    verdict = core.error_verdict(
        inp.record, reasons.INTERNAL_ERROR,
        f"The verifier could not appraise this evidence ({type(exc).__name__}); it fails "
        "closed.", collected_at=_coordinates(inp))
    return _decision(inp, verdict, cfg.topics.verdicts)


def build_stage(env: Mapping[str, str]) -> Stage:
    """The verifier stage, configured from ``env`` (see ``services.verifier.config``)."""
    cfg = VerifierConfig.from_env(env)
    return Stage(
        name="verifier",
        input_topics=(cfg.topics.collected,),
        input_subjects=frozenset({INPUT_SUBJECT}),
        decide=partial(decide, cfg=cfg),
        on_host_fault=partial(on_host_fault, cfg=cfg),
        on_bug=partial(on_bug, cfg=cfg),
        dlq=cfg.topics.dlq("verifier"),
        global_tables={POLICY_TABLE: GlobalTableSpec(cfg.topics.policies, POLICY_SUBJECT,
                                                     newer)},
    )
