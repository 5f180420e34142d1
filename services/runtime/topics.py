"""Every Kafka topic hostgate uses, declared once.

Audit topics (evidence, collected, verdicts, incidents, rejections, remediation, policy history)
are kept forever because auditors replay them. State changelogs, ``attest.hosts.v1`` and
``attest.policies.v1`` are compacted: only the newest record per key matters. A policy version
superseded on the compacted topic disappears once its segment is cleaned, yet verdicts name it
for as long as they are kept, so every version also goes to ``attest.policies.history.v1``.

``ensure_topics`` creates what is missing and reports drift (partition counts or configs that
differ from this declaration) without silently rewriting an operator's cluster; ``fix=True``
applies what Kafka allows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.errors import ConfigError, HostgateError
from services.runtime.connection import client_kwargs

FOREVER = "-1"
TOPIC_ALREADY_EXISTS = 36
"""Kafka protocol error code of a CreateTopics request naming an existing topic."""
DAY_MS = 24 * 3600 * 1000


class TopicError(HostgateError):
    """The broker refused to create a topic."""

    retriable = True


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, why it exists, and the configs hostgate relies on."""

    name: str
    purpose: str
    compacted: bool = False
    retention_ms: str = FOREVER
    partitions: int | None = None  # None: the deployment's default partition count
    broker_timestamps: bool = False
    """``message.timestamp.type=LogAppendTime``: the broker, not the host, stamps each record.
    The collector takes "now" from these stamps, so its decisions replay deterministically and
    a host cannot lie about when it sent something."""

    def configs(self, replication: int) -> dict[str, str]:
        """The topic-level configs hostgate checks for drift."""
        cfg = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "min.insync.replicas": str(min_insync(replication)),
        }
        if not self.compacted:
            cfg["retention.ms"] = self.retention_ms
        if self.broker_timestamps:
            cfg["message.timestamp.type"] = "LogAppendTime"
        return cfg


def min_insync(replication: int) -> int:
    """One less than the replication factor, at least 1: survives one broker loss."""
    return max(1, replication - 1)


IDENTITY_TOPIC = "attest.identity.v1"
"""Operator identity commands (``hostgate identity release``); only the operator writes it."""
IDENTITY_EVENTS_TOPIC = "attest.identity.events.v1"
"""The collector's audit of identity commands (who released what, why); the issuer reads it."""
EK_BINDINGS_TOPIC = "collector.ek-bindings.v1"
"""Collector-internal: binding requests keyed by EK digest, so the one task owning the EK's
partition decides EK -> host id (a repartition topic, as in a foreign-key join)."""
EK_GRANTS_TOPIC = "collector.ek-grants.v1"
"""Collector-internal: the EK task's answers, keyed by host id (back to the host's task)."""

PIPELINE_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("attest.requests.v1", "agents: enrolment, activation proofs, challenge requests",
              retention_ms=str(30 * DAY_MS), broker_timestamps=True),
    TopicSpec("attest.challenges.v1", "collector: credential-activation challenges and nonces",
              retention_ms=str(7 * DAY_MS)),
    TopicSpec("attest.evidence.v1", "agents: quotes, PCR values, boot and IMA logs (audit)",
              broker_timestamps=True),
    TopicSpec("attest.collected.v1", "collector: evidence that passed intake (audit)"),
    TopicSpec("attest.rejections.v1", "collector: requests and evidence refused at intake"),
    TopicSpec("attest.policies.v1", "operators: attestation policy documents", compacted=True),
    TopicSpec("attest.policies.history.v1",
              "operators: every policy version ever published (audit replay)"),
    TopicSpec("attest.verdicts.v1", "verifier: appraisal results (audit)"),
    TopicSpec("attest.credentials.v1", "issuer: TPM-sealed host credentials",
              retention_ms=str(30 * DAY_MS)),
    TopicSpec("attest.hosts.v1", "issuer: current trust state per host", compacted=True),
    TopicSpec("attest.incidents.v1", "incidents: incident lifecycle events (audit)"),
    TopicSpec("attest.remediation.v1", "SOC: acknowledge, root cause, remediate, close"),
    TopicSpec("soc.findings.ocsf.v1", "incidents: OCSF Detection/Incident Findings for SIEMs"),
    TopicSpec(IDENTITY_TOPIC, "operators: identity commands (release a host id and its EK)"),
    TopicSpec(IDENTITY_EVENTS_TOPIC, "collector: identity audit (releases: who, why, what)"),
    TopicSpec(EK_BINDINGS_TOPIC, "collector (internal): EK binding requests, key = EK digest"),
    TopicSpec(EK_GRANTS_TOPIC, "collector (internal): EK binding answers, key = host id"),
)

STAGES: tuple[str, ...] = ("collector", "verifier", "issuer", "incidents")

# State tables per stage; each is a compacted changelog written in the stage's transactions.
STATE_TABLES: Mapping[str, tuple[str, ...]] = {
    "collector": ("enrollments", "challenges", "nonces", "hosts", "ek_bindings"),
    "verifier": (),
    "issuer": ("hosts",),
    "incidents": ("incidents", "hosts"),
    # The runtime's own exactly-once test stage (tests/ and bench/ only).
    "eostest": ("counters",),
}


def dlq_topic(stage: str) -> str:
    """The stage's dead-letter topic: records it could not even read, untouched."""
    return f"{stage}.dlq.v1"


def changelog_topic(stage: str, table: str) -> str:
    """The compacted changelog that holds one state table of a stage."""
    return f"hostgate.{stage}.{table}.changelog.v1"


def all_topics(extra_stages: Iterable[str] = ("eostest",)) -> tuple[TopicSpec, ...]:
    """Every topic hostgate needs: pipeline, DLQs and state changelogs."""
    specs = list(PIPELINE_TOPICS)
    for stage in (*STAGES, *extra_stages):
        specs.append(TopicSpec(dlq_topic(stage), f"{stage}: undecodable records with reasons"))
        for table in STATE_TABLES.get(stage, ()):
            specs.append(TopicSpec(changelog_topic(stage, table),
                                   f"{stage}: state table {table}", compacted=True))
    if "eostest" in extra_stages:
        specs.append(TopicSpec("eostest.input.v1", "runtime tests: input records"))
        specs.append(TopicSpec("eostest.output.v1", "runtime tests: output records"))
    return tuple(specs)


@dataclass(frozen=True)
class TopicLayout:
    """Deployment-wide topic settings (``HOSTGATE_PARTITIONS``, ``HOSTGATE_REPLICATION``)."""

    partitions: int = 6
    replication: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TopicLayout:
        env = os.environ if env is None else env
        try:
            partitions = int(env.get("HOSTGATE_PARTITIONS", "6"))
            replication = int(env.get("HOSTGATE_REPLICATION", "1"))
        except ValueError as exc:
            raise ConfigError(f"HOSTGATE_PARTITIONS/HOSTGATE_REPLICATION: {exc}") from None
        if partitions < 1 or replication < 1:
            raise ConfigError("HOSTGATE_PARTITIONS and HOSTGATE_REPLICATION must be ≥ 1")
        return cls(partitions, replication)


@dataclass
class EnsureReport:
    """What ``ensure_topics`` did and found."""

    created: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {"created": self.created, "ok": self.ok, "drift": self.drift, "fixed": self.fixed}


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec] | None = None,
    layout: TopicLayout | None = None,
    *,
    fix: bool = False,
) -> EnsureReport:
    """Create missing topics and report drift from the declaration (idempotent)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    specs = tuple(all_topics() if specs is None else specs)
    layout = layout or TopicLayout.from_env()
    report = EnsureReport()
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics([
                NewTopic(s.name, s.partitions or layout.partitions, layout.replication,
                         topic_configs=s.configs(layout.replication))
                for s in missing
            ])
            for name, code, message in response.topic_errors:
                if code == 0:
                    report.created.append(name)
                elif code == TOPIC_ALREADY_EXISTS:
                    # Metadata had not caught up with a recent creation: check it like the rest.
                    existing.add(name)
                else:
                    raise TopicError(f"creating topic {name} failed: error {code} ({message})")
        present = [s for s in specs if s.name in existing]
        if not present:
            return report
        described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in present])}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in present]
        )
        actual_cfg: dict[str, dict[str, str]] = {}
        for resp in responses:
            for res in resp.resources:
                # (error_code, error_message, resource_type, resource_name, config_entries)
                name = res[3]
                actual_cfg[name] = {entry[0]: entry[1] for entry in res[4]}
        for spec in present:
            problems: list[str] = []
            want_parts = spec.partitions or layout.partitions
            have_parts = len(described.get(spec.name, {}).get("partitions", []))
            if have_parts < want_parts:
                problems.append(f"partitions {have_parts} < {want_parts}")
            for key, want in spec.configs(layout.replication).items():
                have = actual_cfg.get(spec.name, {}).get(key)
                if have != want:
                    problems.append(f"{key}={have} (want {want})")
            if not problems:
                report.ok.append(spec.name)
                continue
            report.drift.append(f"{spec.name}: " + ", ".join(problems))
            if fix:
                if have_parts < want_parts:
                    await admin.create_partitions({spec.name: NewPartitions(want_parts)})
                await admin.alter_configs([
                    ConfigResource(ConfigResourceType.TOPIC, spec.name,
                                   configs=spec.configs(layout.replication))
                ])
                report.fixed.append(spec.name)
    finally:
        await admin.close()
    return report
