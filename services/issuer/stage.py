"""``hostgate run issuer``: the issuer as the runtime runs it (the thin shell).

Reads its configuration from the environment once (``services.issuer.config``: the issuing CA
is loaded there, so a bad key fails fast) and binds it into the pure core. Inputs:
``attest.verdicts.v1``, ``attest.incidents.v1`` and ``attest.identity.events.v1`` (all keyed by
host id, so one host's verdicts, incident events and identity releases meet on one task). A
decision the core refuses (an ``IssuerError``: a passing verdict without the attested PCRs the
seal needs, an EK public area that does not parse, corrupt state) has no ``on_error`` policy on
purpose: the record goes to ``issuer.dlq.v1`` with the reason, and the host gets no credential
(fail closed, never silently dropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from services.issuer.config import IssuerConfig
from services.issuer.core import INPUT_SUBJECTS, TABLES, decide
from services.runtime.stage import MISROUTED_DLQ, Stage


def stage_from_config(cfg: IssuerConfig) -> Stage:
    """The issuer stage for an explicit config (tests, benchmarks)."""
    topics = cfg.topics
    return Stage(
        name="issuer",
        input_topics=(topics.verdicts, topics.incidents, topics.identity_events),
        input_subjects=INPUT_SUBJECTS,
        decide=partial(decide, cfg=cfg),
        tables=TABLES,
        dlq=topics.dlq("issuer"),
        changelogs={t: topics.changelog("issuer", t) for t in TABLES},
        # Only stage principals write the issuer's inputs, with the default partitioner; a
        # record elsewhere would be judged against another partition's (empty) host state and
        # could bind a fresh EK, so it goes to the DLQ instead (services.runtime.plan).
        misrouted=MISROUTED_DLQ,
    )


def build_stage(env: Mapping[str, str]) -> Stage:
    """The issuer stage configured from ``env``."""
    return stage_from_config(IssuerConfig.from_env(env))
