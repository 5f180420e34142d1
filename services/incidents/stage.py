"""The incidents stage as the runtime runs it (``hostgate run incidents``).

``build_stage(env)`` wires the pure core (``services.incidents.core``) into a runtime ``Stage``:
inputs ``attest.verdicts.v1``, ``attest.rejections.v1``, ``attest.remediation.v1``; tables
``incidents`` (``IncidentState`` per host) and ``hosts`` (``IncidentsRoster`` per partition).

OCSF findings are JSON, not Avro: each finding is validated against the OCSF schema and sent
to ``soc.findings.ocsf.v1`` as a raw output (``Output.raw_value``, produced as-is, in the same
transaction as the incident events and state), with its CloudEvents binary-mode headers
(``ce_*`` and ``content-type: application/json``). A finding that does not validate makes
``decide`` raise, so the input goes to the DLQ rather than an invalid finding reaching a SIEM.

Liveness on idle partitions: the roster check runs on every input of a partition, with "now"
= that input's Kafka timestamp. So that a partition with no traffic at all (a dead pipeline, a
dead fleet) is checked too, ``hostgate incidents tick`` (a small process beside the stage)
produces one ``hostgate.LivenessTick{partition, issued_at, ticker}`` to every partition of
``attest.remediation.v1``, explicitly by partition number, every ``--every`` seconds. The stage
decides a tick like any input, with its ``issued_at`` as "now", so replaying the topics
reproduces every stale finding.

Environment (all optional):

* ``HOSTGATE_INCIDENTS_TOPIC_PREFIX``: prefix of every topic this stage reads and writes
  (tests use it for fresh topics); default none.
* ``HOSTGATE_INCIDENTS_STALE_AFTER_S``: liveness window in seconds, ``0`` = off; default 86400.
* ``HOSTGATE_INCIDENTS_ASSIGNEE_GROUP``: the SOC group named on Incident Findings.
* ``HOSTGATE_INCIDENTS_CE_SOURCE``: the CloudEvents ``source`` of findings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

from services.errors import ConfigError
from services.incidents.cloudevents import binary_headers
from services.incidents.core import (
    COMMAND,
    INCIDENT_STATE,
    INTAKE_REJECTED,
    TABLE_INCIDENTS,
    TICK,
    VERDICT,
    IncidentsConfig,
    decide,
)
from services.incidents.ocsf import SocFinding, validate
from services.incidents.roster import ROSTER_SUBJECT, TABLE_HOSTS
from services.runtime.stage import Decision, InputRecord, Output, Stage, StateView

FINDING_SUBJECT: Final = "application/json"
"""What a raw finding output names as its subject (no Avro subject: it is OCSF JSON)."""


@dataclasses.dataclass(frozen=True)
class IncidentsTopics:
    """The topics one incidents deployment uses (an optional prefix for tests)."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.name(t) for t in ("attest.verdicts.v1", "attest.rejections.v1",
                                            "attest.remediation.v1"))

    @property
    def incidents(self) -> str:
        return self.name("attest.incidents.v1")

    @property
    def remediation(self) -> str:
        return self.name("attest.remediation.v1")

    @property
    def findings(self) -> str:
        return self.name("soc.findings.ocsf.v1")

    @property
    def dlq(self) -> str:
        return self.name("incidents.dlq.v1")

    def changelog(self, table: str) -> str:
        return self.name(f"hostgate.incidents.{table}.changelog.v1")


def finding_output(finding: SocFinding, config: IncidentsConfig) -> Output:
    """A validated finding as a raw-JSON ``Output`` with its CloudEvents headers."""
    validate(finding.body)
    return Output(config.findings_topic, finding.host_id, FINDING_SUBJECT, {}, finding.uid,
                  headers=binary_headers(finding.cloudevent(config.ce_source)),
                  raw_value=finding.to_json())


def decide_for_runtime(inp: InputRecord, state: StateView, config: IncidentsConfig) -> Decision:
    """The core's decision with its findings turned into raw-JSON outputs."""
    result = decide(inp, state, config)
    if not result.findings:
        return result.decision
    d = result.decision
    outs = tuple(finding_output(f, config) for f in result.findings)
    return dataclasses.replace(d, outputs=(*d.outputs, *outs),
                               log={**d.log, "ocsf_findings": len(outs)})


def config_from_env(env: Mapping[str, str]) -> tuple[IncidentsTopics, IncidentsConfig]:
    """Topics and settings from the environment (see the module docstring)."""
    topics = IncidentsTopics(env.get("HOSTGATE_INCIDENTS_TOPIC_PREFIX", ""))
    raw = env.get("HOSTGATE_INCIDENTS_STALE_AFTER_S", "86400")
    try:
        stale_s = float(raw)
    except ValueError:
        raise ConfigError(f"HOSTGATE_INCIDENTS_STALE_AFTER_S={raw!r} is not a number") from None
    if stale_s < 0:
        raise ConfigError(f"HOSTGATE_INCIDENTS_STALE_AFTER_S={raw!r} is negative")
    defaults = IncidentsConfig()
    config = IncidentsConfig(
        incidents_topic=topics.incidents, findings_topic=topics.findings,
        ce_source=env.get("HOSTGATE_INCIDENTS_CE_SOURCE", defaults.ce_source),
        assignee_group=env.get("HOSTGATE_INCIDENTS_ASSIGNEE_GROUP", defaults.assignee_group),
        stale_after_ms=int(stale_s * 1000),
    )
    return topics, config


def build_stage(env: Mapping[str, str]) -> Stage:
    """The incidents stage, configured from ``env``."""
    topics, config = config_from_env(env)

    def core(inp: InputRecord, state: StateView) -> Decision:
        return decide_for_runtime(inp, state, config)

    tables = {TABLE_INCIDENTS: INCIDENT_STATE, TABLE_HOSTS: ROSTER_SUBJECT}
    return Stage(
        name="incidents",
        input_topics=topics.inputs,
        input_subjects=frozenset({VERDICT, INTAKE_REJECTED, COMMAND, TICK}),
        decide=core,
        tables=tables,
        dlq=topics.dlq,
        changelogs={t: topics.changelog(t) for t in tables},
        # liveness ticks are produced to each partition on purpose (``hostgate incidents tick``)
        explicit_partition_subjects=frozenset({TICK}),
    )
