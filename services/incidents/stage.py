"""``hostgate run incidents``: the incidents stage as the runtime runs it (the thin shell).

Reads its configuration from the environment once (``services.incidents.config``) and binds it
into the pure core. Inputs: ``attest.verdicts.v1``, ``attest.rejections.v1`` and
``attest.remediation.v1`` (the operators' commands and the liveness ticks), all keyed by host
id; state tables ``incidents`` (``IncidentState`` per host) and ``hosts`` (``IncidentsRoster``
per partition). Outputs go to ``attest.incidents.v1`` and, as raw OCSF JSON with CloudEvents
headers, to ``soc.findings.ocsf.v1`` (``services.incidents.core``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from services.incidents.config import IncidentsConfig
from services.incidents.core import INPUT_SUBJECTS, TABLES, TICK, decide
from services.runtime.stage import Stage


def stage_from_config(cfg: IncidentsConfig) -> Stage:
    """The incidents stage for an explicit config (tests, benchmarks)."""
    topics = cfg.topics
    return Stage(
        name="incidents",
        input_topics=(topics.verdicts, topics.rejections, topics.remediation),
        input_subjects=INPUT_SUBJECTS,
        decide=partial(decide, cfg=cfg),
        tables=TABLES,
        dlq=topics.dlq("incidents"),
        changelogs={t: topics.changelog("incidents", t) for t in TABLES},
        # Liveness ticks are produced to each partition on purpose (``hostgate incidents tick``).
        explicit_partition_subjects=frozenset({TICK}),
    )


def build_stage(env: Mapping[str, str]) -> Stage:
    """The incidents stage configured from ``env``."""
    return stage_from_config(IncidentsConfig.from_env(env))
