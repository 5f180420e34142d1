"""One namespace for a whole deployment (``services.runtime.topics.Topics``), without a broker.

With ``HOSTGATE_TOPIC_NAMESPACE`` set, every name any stage uses carries it: what each
registered stage (built by its own factory) consumes, its global tables, DLQ and changelogs,
every record one planned transaction of it writes, its consumer group and its transactional
ids. The list comes from the stage registry and the stages' own definitions, not from a table
kept here. Without a namespace, the names are today's (``test_deploy_manifests`` holds them
against the committed manifests). The per-stage prefixes of earlier versions are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from services.errors import ConfigError
from services.runtime.codec import Codec
from services.runtime.config import load_config
from services.runtime.partitioner import key_partition
from services.runtime.plan import RawRecord, plan_batch
from services.runtime.stage import OverlayState, Stage
from services.runtime.stages import STAGE_FACTORIES, build_stage
from services.runtime.topics import (
    NAMESPACE_ENV,
    REMOVED_PREFIX_ENV,
    STAGES,
    STATE_TABLES,
    Topics,
)
from tests.unit.collector_support import EkPki, SoftHost
from tests.unit.incidents_support import verdict as failed_verdict
from tests.unit.issuer_stage_support import wire_verdict, write_pem_ca
from tests.unit.issuer_support import software_ek_public
from tests.unit.test_verifier_stage import garbage_collected

NS = "blue.eu-1"
CODEC = Codec.load()
PARTITIONS = 4
HOST = "host-ns-0001"


@dataclass(frozen=True)
class World:
    """What each stage's factory needs besides the namespace, and the collector's EK PKI."""

    env: Mapping[str, Mapping[str, str]]
    pki: EkPki


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    ek_ca = tmp_path_factory.mktemp("ek-ca")
    pki = EkPki()
    (ek_ca / "root.pem").write_bytes(pki.root.public_bytes(Encoding.PEM))
    (ek_ca / "ica.pem").write_bytes(pki.ica.public_bytes(Encoding.PEM))
    issuer_ca = write_pem_ca(tmp_path_factory.mktemp("issuer-ca"))
    return World({"collector": {"HOSTGATE_EK_CA_DIR": str(ek_ca), "HOSTGATE_POLICY_ID": "p"},
                  "verifier": {"HOSTGATE_POLICY_ID": "p"},
                  "issuer": issuer_ca.env,
                  "incidents": {}}, pki)


def _one_input(name: str, world: World) -> tuple[str, str, Mapping[str, Any]]:
    """(topic, subject, record) of one input the stage decides with at least one output: an
    enrolment (an activation challenge), collected garbage (a failed verdict), a passing
    verdict (a credential and a host state), a failed verdict (an incident and findings)."""
    t = Topics(NS)
    if name == "collector":
        return t.requests, "hostgate.EnrollmentRequested", SoftHost(HOST, world.pki).enroll()
    if name == "verifier":
        return t.collected, "hostgate.EvidenceCollected", garbage_collected(host_id=HOST)
    if name == "issuer":
        return t.verdicts, "hostgate.Verdict", {
            **wire_verdict("v-ns-1", ek_public=software_ek_public()), "host_id": HOST}
    return t.verdicts, "hostgate.Verdict", failed_verdict(HOST, 1)


def _built(name: str, world: World, ns: str = NS) -> Stage:
    return build_stage(name, {**world.env[name], NAMESPACE_ENV: ns})


def test_the_registry_holds_the_products_stages_only() -> None:
    assert set(STAGE_FACTORIES) == set(STAGES) == set(STATE_TABLES)


@pytest.mark.parametrize("name", STAGES)
def test_every_name_a_stage_uses_carries_the_namespace(name: str, world: World) -> None:
    stage = _built(name, world)
    t = Topics(NS)
    assert set(stage.tables) == set(STATE_TABLES[name]), "topics ensure must create them all"
    used = {*stage.input_topics, stage.dlq, *stage.changelogs.values(),
            *(g.topic for g in stage.global_tables.values())}

    # One planned transaction: every record it writes (outputs, changelogs) is namespaced.
    topic, subject, record = _one_input(name, world)
    assert topic in stage.input_topics
    part = key_partition(HOST.encode(), PARTITIONS)
    raw = RawRecord(topic, part, 7, 1_780_000_000_000, HOST.encode(),
                    CODEC.encode(subject, record))
    plan = plan_batch(stage, CODEC, [raw], OverlayState({}), group=t.group(name),
                      task_partition=part,
                      partition_counts=dict.fromkeys(stage.input_topics, PARTITIONS))
    assert [o.result for o in plan.outcomes] == ["ok"], plan.outcomes
    written = {r.topic for r in plan.records}
    assert written - {stage.dlq, *stage.changelogs.values()}, f"{name}: no output to check"
    used |= written

    cfg = load_config(name, env={NAMESPACE_ENV: NS})
    ids = {cfg.group_id, cfg.transactional_id(0), cfg.transactional_id(PARTITIONS - 1)}
    assert cfg.group_id == t.group(name)

    prefix = f"{NS}."
    assert all(n.startswith(prefix) for n in used | ids), sorted(
        n for n in used | ids if not n.startswith(prefix))
    declared = {s.name for s in t.all_specs()}
    assert used <= declared, f"used but not created by topics ensure: {sorted(used - declared)}"
    # and the same stage without a namespace uses the same names without it
    plain = _built(name, world, ns="")
    assert [f"{prefix}{n}" for n in plain.input_topics] == list(stage.input_topics)
    assert f"{prefix}{plain.dlq}" == stage.dlq
    assert {k: f"{prefix}{v}" for k, v in plain.changelogs.items()} == dict(stage.changelogs)


def test_every_topic_of_topics_carries_the_namespace() -> None:
    t, plain = Topics(NS), Topics()
    names = [p for p, v in vars(Topics).items() if isinstance(v, property)]
    assert len(names) >= 17
    for prop in names:
        assert getattr(t, prop) == f"{NS}.{getattr(plain, prop)}", prop
    specs = t.all_specs()
    assert [s.name for s in specs] == [f"{NS}.{s.name}" for s in plain.all_specs()]
    assert [(s.compacted, s.retention_ms, s.broker_timestamps) for s in specs] == [
        (s.compacted, s.retention_ms, s.broker_timestamps) for s in plain.all_specs()]
    for stage in STAGES:
        assert t.dlq(stage) == f"{NS}.{stage}.dlq.v1"
        assert t.group(stage) == f"{NS}.hostgate.{stage}"
        for table in STATE_TABLES[stage]:
            assert t.changelog(stage, table) == f"{NS}.hostgate.{stage}.{table}.changelog.v1"


def test_without_a_namespace_the_names_are_todays() -> None:
    t = Topics.from_env({})
    assert (t.requests, t.verdicts, t.identity_events, t.ek_grants, t.findings) == (
        "attest.requests.v1", "attest.verdicts.v1", "attest.identity.events.v1",
        "collector.ek-grants.v1", "soc.findings.ocsf.v1")
    assert t.dlq("issuer") == "issuer.dlq.v1"
    assert t.changelog("collector", "enrollments") == "hostgate.collector.enrollments.changelog.v1"
    cfg = load_config("verifier", env={})
    assert (cfg.group_id, cfg.transactional_id(3)) == ("hostgate.verifier",
                                                       "hostgate.verifier.task-3")


def test_two_namespaces_share_no_name() -> None:
    a, b = Topics("a"), Topics("b")
    names_a = {s.name for s in a.all_specs()} | {a.group(s) for s in STAGES}
    names_b = {s.name for s in b.all_specs()} | {b.group(s) for s in STAGES}
    assert not names_a & names_b
    # nor with the un-namespaced deployment beside them
    plain = {s.name for s in Topics().all_specs()} | {Topics().group(s) for s in STAGES}
    assert not plain & (names_a | names_b)


@pytest.mark.parametrize("variable", REMOVED_PREFIX_ENV)
@pytest.mark.parametrize("name", STAGES)
def test_a_removed_prefix_variable_is_refused_naming_the_namespace(
        name: str, variable: str, world: World) -> None:
    env = {**world.env[name], variable: "t1."}
    with pytest.raises(ConfigError, match=f"{variable} is no longer supported.*{NAMESPACE_ENV}"):
        build_stage(name, env)
    with pytest.raises(ConfigError, match=NAMESPACE_ENV):
        load_config(name, env=env)


@pytest.mark.parametrize("bad", [".x", "x.", "a..b", "a b", "a/b", "x" * 101, "ü"])
def test_a_malformed_namespace_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=NAMESPACE_ENV):
        Topics.from_env({NAMESPACE_ENV: bad})


def test_cli_flag_beats_the_environment() -> None:
    env = {NAMESPACE_ENV: "from-env"}
    assert Topics.from_env(env).namespace == "from-env"
    assert Topics.from_env(env, namespace="flag").namespace == "flag"
    assert Topics.from_env(env, namespace="").namespace == ""
