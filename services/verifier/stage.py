"""``hostgate run verifier``: the verifier as the runtime runs it (the thin shell).

Reads its configuration from the environment once (``services.verifier.config``: it also makes
the worker's one :class:`~services.verifier.memo.VerifierMemo`) and binds it into the pure core.
Input: ``attest.collected.v1``; output: one ``hostgate.Verdict`` per record on
``attest.verdicts.v1``. Like the collector it holds the whole compacted ``attest.policies.v1``
as the global table ``policies`` (``HOSTGATE_POLICY_ID`` names the policy in force, highest
version wins). A host's fault and a bug both become failed verdicts
(``services.verifier.core.on_host_fault``, ``on_bug``): silence here would leave a host TRUSTED
on its last credential. Only undecodable bytes go to ``verifier.dlq.v1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from services.runtime.stage import GlobalTableSpec, Stage
from services.verifier.config import VerifierConfig
from services.verifier.core import INPUT_SUBJECTS, decide, on_bug, on_host_fault
from services.verifier.policy_in_force import POLICY_TABLE, newer
from services.wire.subjects import POLICY_PUBLISHED


def stage_from_config(cfg: VerifierConfig) -> Stage:
    """The verifier stage for an explicit config (tests, benchmarks)."""
    topics = cfg.topics
    return Stage(
        name="verifier",
        input_topics=(topics.collected,),
        input_subjects=INPUT_SUBJECTS,
        decide=partial(decide, cfg=cfg),
        on_host_fault=partial(on_host_fault, cfg=cfg),
        on_bug=partial(on_bug, cfg=cfg),
        dlq=topics.dlq("verifier"),
        global_tables={POLICY_TABLE: GlobalTableSpec(topics.policies, POLICY_PUBLISHED, newer)},
    )


def build_stage(env: Mapping[str, str]) -> Stage:
    """The verifier stage configured from ``env``."""
    return stage_from_config(VerifierConfig.from_env(env))
