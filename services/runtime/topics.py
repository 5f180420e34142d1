"""Every Kafka topic hostgate uses, declared once.

Audit topics (evidence, collected, verdicts, incidents, rejections, remediation, policy history)
are kept forever because auditors replay them. State changelogs, ``attest.hosts.v1`` and
``attest.policies.v1`` are compacted: only the newest record per key matters. A policy version
superseded on the compacted topic disappears once its segment is cleaned, yet verdicts name it
for as long as they are kept, so every version also goes to ``attest.policies.history.v1``.

``Topics(namespace)`` is the one place names come from: every stage, the agent, the CLIs, audit
replay, the demo and the deploy generator ask it, so one namespace (``HOSTGATE_TOPIC_NAMESPACE``)
moves a whole deployment, DLQs, changelogs and consumer groups included, and an empty one keeps
the names below. ``Topics.all_specs()`` is what ``hostgate topics ensure`` creates: the product's
topics only (tests create their own stages' topics from ``Topics.stage_specs``).

``ensure_topics`` creates what is missing and reports drift (partition counts, replication
factors or configs that differ from this declaration) without silently rewriting an operator's
cluster; ``fix=True`` applies what Kafka allows (partitions, configs; not the replication factor,
which takes a reassignment). The replication factor is ``HOSTGATE_REPLICATION`` if set, else
detected from the cluster: 3 with min ISR 2 on three or more brokers, 1 and 1 on one (the
brokers counted are the live ones, or the brokers' ``default.replication.factor`` if larger, so
a broker being down does not give new topics fewer replicas).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from services.errors import ConfigError, HostgateError
from services.runtime.connection import client_kwargs
from services.runtime.record_size import TOPIC_MAX_MESSAGE_BYTES

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
    large_records: bool = False
    """Carries the agent's evidence (logs up to the size chain's limit): sets
    ``max.message.bytes`` (``services.runtime.record_size``), whatever the broker's default."""

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
        if self.large_records:
            cfg["max.message.bytes"] = str(TOPIC_MAX_MESSAGE_BYTES)
        return cfg


def min_insync(replication: int) -> int:
    """One less than the replication factor, at least 1: survives one broker loss."""
    return max(1, replication - 1)


# Base names (the names of a deployment without a namespace). Read them through ``Topics``
# only: a name used without its namespace is a namespaced deployment talking to another one.
_REQUESTS = "attest.requests.v1"
_CHALLENGES = "attest.challenges.v1"
_EVIDENCE = "attest.evidence.v1"
_COLLECTED = "attest.collected.v1"
_REJECTIONS = "attest.rejections.v1"
_POLICIES = "attest.policies.v1"
_POLICY_HISTORY = "attest.policies.history.v1"
_VERDICTS = "attest.verdicts.v1"
_CREDENTIALS = "attest.credentials.v1"
_HOSTS = "attest.hosts.v1"
_INCIDENTS = "attest.incidents.v1"
_REMEDIATION = "attest.remediation.v1"
_FINDINGS = "soc.findings.ocsf.v1"
_IDENTITY = "attest.identity.v1"
_IDENTITY_EVENTS = "attest.identity.events.v1"
_EK_BINDINGS = "collector.ek-bindings.v1"
_EK_GRANTS = "collector.ek-grants.v1"

_PIPELINE_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(_REQUESTS, "agents: enrolment, activation proofs, challenge requests",
              retention_ms=str(30 * DAY_MS), broker_timestamps=True),
    TopicSpec(_CHALLENGES, "collector: credential-activation challenges and nonces",
              retention_ms=str(7 * DAY_MS)),
    TopicSpec(_EVIDENCE, "agents: quotes, PCR values, boot and IMA logs (audit)",
              broker_timestamps=True, large_records=True),
    TopicSpec(_COLLECTED, "collector: evidence that passed intake (audit)",
              large_records=True),
    TopicSpec(_REJECTIONS, "collector: requests and evidence refused at intake"),
    TopicSpec(_POLICIES, "operators: attestation policy documents", compacted=True),
    TopicSpec(_POLICY_HISTORY, "operators: every policy version ever published (audit replay)"),
    TopicSpec(_VERDICTS, "verifier: appraisal results (audit)"),
    TopicSpec(_CREDENTIALS, "issuer: TPM-sealed host credentials",
              retention_ms=str(30 * DAY_MS)),
    TopicSpec(_HOSTS, "issuer: current trust state per host", compacted=True),
    TopicSpec(_INCIDENTS, "incidents: incident lifecycle events (audit)"),
    TopicSpec(_REMEDIATION, "SOC: acknowledge, root cause, remediate, close"),
    TopicSpec(_FINDINGS, "incidents: OCSF Detection/Incident Findings for SIEMs"),
    TopicSpec(_IDENTITY, "operators: identity commands (release a host id and its EK)"),
    TopicSpec(_IDENTITY_EVENTS, "collector: identity audit (releases: who, why, what)"),
    TopicSpec(_EK_BINDINGS, "collector (internal): EK binding requests, key = EK digest"),
    TopicSpec(_EK_GRANTS, "collector (internal): EK binding answers, key = host id"),
)

STAGES: tuple[str, ...] = ("collector", "verifier", "issuer", "incidents")
"""The product's stages (``services.runtime.stages`` registers exactly these)."""

# State tables per stage; each is a compacted changelog written in the stage's transactions.
STATE_TABLES: Mapping[str, tuple[str, ...]] = {
    "collector": ("enrollments", "challenges", "nonces", "hosts", "ek_bindings"),
    "verifier": (),
    "issuer": ("hosts",),
    "incidents": ("incidents", "hosts"),
}

NAMESPACE_ENV: Final = "HOSTGATE_TOPIC_NAMESPACE"
REMOVED_PREFIX_ENV: Final = ("HOSTGATE_ISSUER_TOPIC_PREFIX", "HOSTGATE_INCIDENTS_TOPIC_PREFIX")
"""Per-stage prefixes of earlier versions: they namespaced half the pipeline, so setting one
is refused rather than ignored."""
MAX_NAMESPACE = 100
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True)
class Topics:
    """Every Kafka name one hostgate deployment uses, from its one namespace.

    Empty namespace: the names above, unchanged (existing deployments and their audit topics
    keep their names). Namespace ``ns``: ``ns.<name>`` for every name, pipeline, identity,
    collector-internal, DLQ and changelog topics and the stages' consumer groups (and so the
    transactional ids, ``<group>.task-<p>``) alike, so two deployments on one broker never read
    each other's records, share a group or fence each other's producers.
    """

    namespace: str = ""

    def __post_init__(self) -> None:
        ns = self.namespace
        if ns and (len(ns) > MAX_NAMESPACE or not _NAMESPACE_RE.fullmatch(ns)):
            raise ConfigError(
                f"{NAMESPACE_ENV}={ns[:40]!r}: a namespace is 1..{MAX_NAMESPACE} characters of "
                "letters, digits, '-', '_', in dot-separated parts (e.g. 'staging' or 'eu.1')")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 namespace: str | None = None) -> Topics:
        """The deployment's topics: ``namespace`` if given (a command-line flag), else
        ``HOSTGATE_TOPIC_NAMESPACE``. ``ConfigError`` if a removed prefix variable is set."""
        env = os.environ if env is None else env
        for name in REMOVED_PREFIX_ENV:
            if name in env:
                raise ConfigError(
                    f"{name} is no longer supported: unset it and set {NAMESPACE_ENV} instead "
                    "(one namespace for every stage; names become <namespace>.<name>, DLQs, "
                    "changelogs and consumer groups included)")
        raw = env.get(NAMESPACE_ENV, "") if namespace is None else namespace
        return cls(raw.strip())

    def name(self, base: str) -> str:
        """``base`` inside this namespace."""
        return f"{self.namespace}.{base}" if self.namespace else base

    # -- pipeline ------------------------------------------------------------------------
    @property
    def requests(self) -> str:
        """Agents: enrolment, activation proofs, challenge requests."""
        return self.name(_REQUESTS)

    @property
    def challenges(self) -> str:
        """Collector: credential-activation challenges and nonces."""
        return self.name(_CHALLENGES)

    @property
    def evidence(self) -> str:
        """Agents: quotes, PCR values, boot and IMA logs."""
        return self.name(_EVIDENCE)

    @property
    def collected(self) -> str:
        """Collector: evidence that passed intake (the verifier's input)."""
        return self.name(_COLLECTED)

    @property
    def rejections(self) -> str:
        """Collector: requests and evidence refused at intake."""
        return self.name(_REJECTIONS)

    @property
    def policies(self) -> str:
        """The compacted policy topic (read whole, as a global table)."""
        return self.name(_POLICIES)

    @property
    def policy_history(self) -> str:
        """Every policy version published, never compacted: what audit replay reads."""
        return self.name(_POLICY_HISTORY)

    @property
    def verdicts(self) -> str:
        """Verifier: appraisal results."""
        return self.name(_VERDICTS)

    @property
    def credentials(self) -> str:
        """Issuer: TPM-sealed host credentials."""
        return self.name(_CREDENTIALS)

    @property
    def hosts(self) -> str:
        """Issuer: current trust state per host (compacted)."""
        return self.name(_HOSTS)

    @property
    def incidents(self) -> str:
        """Incidents: incident lifecycle events (and refused remediation commands)."""
        return self.name(_INCIDENTS)

    @property
    def remediation(self) -> str:
        """SOC: remediation commands, and the liveness ticks."""
        return self.name(_REMEDIATION)

    @property
    def findings(self) -> str:
        """Incidents: OCSF findings (JSON) for SIEMs."""
        return self.name(_FINDINGS)

    # -- identity ------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        """Operator identity commands (``hostgate identity release``); only operators write."""
        return self.name(_IDENTITY)

    @property
    def identity_events(self) -> str:
        """The collector's audit of identity commands (who released what, why); the issuer
        reads it."""
        return self.name(_IDENTITY_EVENTS)

    # -- collector-internal --------------------------------------------------------------
    @property
    def ek_bindings(self) -> str:
        """Collector-internal: binding requests keyed by EK digest, so the one task owning the
        EK's partition decides EK -> host id (a repartition topic, as in a foreign-key join)."""
        return self.name(_EK_BINDINGS)

    @property
    def ek_grants(self) -> str:
        """Collector-internal: the EK task's answers, keyed by host id."""
        return self.name(_EK_GRANTS)

    # -- per stage -----------------------------------------------------------------------
    def dlq(self, stage: str) -> str:
        """The stage's dead-letter topic: records it could not even read, untouched."""
        return self.name(f"{stage}.dlq.v1")

    def changelog(self, stage: str, table: str) -> str:
        """The compacted changelog that holds one state table of a stage."""
        return self.name(f"hostgate.{stage}.{table}.changelog.v1")

    def group(self, stage: str) -> str:
        """The stage's default consumer group; its transactional ids are
        ``<group>.task-<partition>`` (``services.runtime.config``)."""
        return self.name(f"hostgate.{stage}")

    # -- declarations --------------------------------------------------------------------
    def pipeline_specs(self) -> tuple[TopicSpec, ...]:
        """Pipeline, identity and collector-internal topics."""
        return tuple(replace(s, name=self.name(s.name)) for s in _PIPELINE_SPECS)

    def stage_specs(self, stage: str, tables: Iterable[str] = ()) -> tuple[TopicSpec, ...]:
        """A stage's DLQ and one compacted changelog per state table (any stage, tests' own
        included: they create their topics from these)."""
        return (TopicSpec(self.dlq(stage), f"{stage}: undecodable records with reasons"),
                *(TopicSpec(self.changelog(stage, t), f"{stage}: state table {t}",
                            compacted=True) for t in tables))

    def all_specs(self) -> tuple[TopicSpec, ...]:
        """Every topic the product needs (what ``hostgate topics ensure`` creates)."""
        out = list(self.pipeline_specs())
        for stage in STAGES:
            out += self.stage_specs(stage, STATE_TABLES[stage])
        return tuple(out)


def add_namespace_argument(parser: argparse.ArgumentParser) -> None:
    """``--topic-namespace`` (default ``HOSTGATE_TOPIC_NAMESPACE``), for ``Topics.from_env``'s
    ``namespace`` keyword."""
    parser.add_argument("--topic-namespace", dest="topic_namespace", default=None, metavar="NS",
                        help=f"the deployment's namespace: names become NS.<name> "
                             f"[{NAMESPACE_ENV}, default none]")


def topics_from_args(args: argparse.Namespace) -> Topics:
    """The deployment's topics for a command with :func:`add_namespace_argument`'s flag: its
    namespace if given, else ``HOSTGATE_TOPIC_NAMESPACE``."""
    return Topics.from_env(namespace=args.topic_namespace)


MAX_REPLICATION: Final = 3
"""The replication factor hostgate asks for when it detects it: 3 (min ISR 2), or every broker
of a smaller cluster."""


def replication_for(brokers: int) -> int:
    """The replication factor for a cluster of ``brokers`` live brokers: ``min(3, brokers)``."""
    return max(1, min(MAX_REPLICATION, brokers))


@dataclass(frozen=True)
class TopicLayout:
    """Deployment-wide topic settings (``HOSTGATE_PARTITIONS``, ``HOSTGATE_REPLICATION``).

    ``replication=None`` (``HOSTGATE_REPLICATION`` unset): ``ensure_topics`` takes it from the
    cluster's metadata, :func:`replication_for` its broker count (3 on three brokers, 1 on
    one), and min ISR follows (:func:`min_insync`)."""

    partitions: int = 6
    replication: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TopicLayout:
        env = os.environ if env is None else env
        try:
            partitions = int(env.get("HOSTGATE_PARTITIONS", "6"))
            raw = env.get("HOSTGATE_REPLICATION", "").strip()
            replication = int(raw) if raw else None
        except ValueError as exc:
            raise ConfigError(f"HOSTGATE_PARTITIONS/HOSTGATE_REPLICATION: {exc}") from None
        if partitions < 1 or (replication is not None and replication < 1):
            raise ConfigError("HOSTGATE_PARTITIONS and HOSTGATE_REPLICATION must be ≥ 1")
        return cls(partitions, replication)

    def for_brokers(self, brokers: int) -> TopicLayout:
        """This layout with the replication factor fixed: the configured one, else the one
        ``brokers`` live brokers call for."""
        if self.replication is not None:
            return self
        return replace(self, replication=replication_for(brokers))

    @property
    def rf(self) -> int:
        """The replication factor (1 while it is still to be detected)."""
        return self.replication or 1


@dataclass
class EnsureReport:
    """What ``ensure_topics`` did and found."""

    created: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    replication: int = 0
    """The replication factor checked against (configured or detected)."""

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "ok": self.ok, "drift": self.drift, "fixed": self.fixed,
                "replication": self.replication, "min_insync": min_insync(self.replication)}


METADATA_SETTLE_S: Final = 10.0
"""How long ``ensure_topics`` waits for a topic it (or a racing peer) just created to show
its partitions in metadata before it judges the topic."""


async def _described(admin: Any, names: list[str]) -> dict[str, Any]:
    """``describe_topics`` of ``names``, asked again (with backoff, up to
    :data:`METADATA_SETTLE_S`) while any of them shows no partitions yet: a topic created a
    moment ago, here or by a racing ``ensure``, is in the controller before every broker's
    metadata, and judging it then would report drift that is not there."""
    import asyncio
    import time

    deadline, pause = time.monotonic() + METADATA_SETTLE_S, 0.1
    while True:
        described = {t["topic"]: t for t in await admin.describe_topics(names)}
        unsettled = [n for n in names if not described.get(n, {}).get("partitions")]
        if not unsettled or time.monotonic() + pause > deadline:
            return described
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


async def _cluster_size(admin: Any) -> int:
    """The brokers the cluster is meant to have: the live ones in its metadata, or the brokers'
    own ``default.replication.factor`` if that is larger. So a cluster with a broker down does
    not get topics with too few replicas (KRaft places a replica on the fenced broker, which
    catches up when it returns; a cluster that cannot place them refuses the creation)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    brokers = (await admin.describe_cluster())["brokers"]
    configured = 1
    if brokers:
        node = str(brokers[0]["node_id"])
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, node)])
        for resp in responses:
            for res in resp.resources:
                for entry in res[4]:
                    if entry[0] == "default.replication.factor" and str(entry[1]).isdigit():
                        configured = int(entry[1])
    return max(len(brokers), configured)


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec] | None = None,
    layout: TopicLayout | None = None,
    *,
    fix: bool = False,
) -> EnsureReport:
    """Create missing topics and report drift from the declaration (idempotent). ``specs``
    defaults to ``Topics.from_env().all_specs()``."""
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    specs = tuple(Topics.from_env().all_specs() if specs is None else specs)
    layout = layout or TopicLayout.from_env()
    report = EnsureReport()
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap))
    await admin.start()
    try:
        if layout.replication is None:
            layout = layout.for_brokers(await _cluster_size(admin))
        report.replication = layout.rf
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics([
                NewTopic(s.name, s.partitions or layout.partitions, layout.rf,
                         topic_configs=s.configs(layout.rf))
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
        described = await _described(admin, [s.name for s in present])
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
            partitions = described.get(spec.name, {}).get("partitions", [])
            have_parts = len(partitions)
            if have_parts < want_parts:
                problems.append(f"partitions {have_parts} < {want_parts}")
            factors = sorted({len(p["replicas"]) for p in partitions})
            if factors and factors != [layout.rf]:
                # Not fixable here: changing it is a partition reassignment.
                problems.append(f"replication factor {'/'.join(map(str, factors))} "
                                f"(want {layout.rf})")
            for key, want in spec.configs(layout.rf).items():
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
                                   configs=spec.configs(layout.rf))
                ])
                report.fixed.append(spec.name)
    finally:
        await admin.close()
    return report
