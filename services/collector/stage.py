"""``hostgate run collector``: the collector as the runtime runs it (the thin shell).

Reads its configuration from the environment once (``services.collector.config``) and binds
it into the pure core. Inputs: ``attest.requests.v1`` and ``attest.evidence.v1`` (both with
``LogAppendTime``: the broker's stamp is the collector's only clock), the operators'
``attest.identity.v1``, and its own EK registry topics ``collector.ek-bindings.v1`` and
``collector.ek-grants.v1`` (``services.collector.ek_registry``), all co-partitioned.
Like the verifier it holds the whole compacted ``attest.policies.v1`` as the global table
``policies`` (``HOSTGATE_POLICY_ID`` names the policy in force, highest version wins): every
challenge asks for that policy's coverage.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from services.collector.config import CollectorConfig
from services.collector.core import INPUT_SUBJECTS, TABLES, decide, on_host_fault
from services.runtime.stage import MISROUTED_DECIDE, GlobalTableSpec, Stage
from services.verifier.policy_in_force import POLICY_TABLE, newer
from services.wire.subjects import POLICY_PUBLISHED


def stage_from_config(cfg: CollectorConfig) -> Stage:
    """The collector stage for an explicit config (tests, benchmarks)."""
    topics = cfg.topics
    return Stage(
        name="collector",
        input_topics=(topics.requests, topics.evidence, topics.identity, topics.ek_bindings,
                      topics.ek_grants),
        input_subjects=INPUT_SUBJECTS,
        decide=partial(decide, cfg=cfg),
        tables=TABLES,
        on_host_fault=partial(on_host_fault, cfg=cfg),
        dlq=topics.dlq("collector"),
        changelogs={t: topics.changelog("collector", t) for t in TABLES},
        global_tables={POLICY_TABLE: GlobalTableSpec(topics.policies, POLICY_PUBLISHED, newer)},
        # The collector refuses a mis-partitioned record itself (WRONG_PARTITION), so the host
        # and the SOC see why; see services.collector.core.
        misrouted=MISROUTED_DECIDE,
        # Evidence with an IMA list up to intake's limit is forwarded whole.
        large_record_topics=frozenset({topics.collected}),
    )


def build_stage(env: Mapping[str, str]) -> Stage:
    """The collector stage configured from ``env``."""
    return stage_from_config(CollectorConfig.from_env(env))
