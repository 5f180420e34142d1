"""OCSF findings validate (and deliberately broken ones do not); CloudEvents binary headers."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from services.errors import ConfigError
from services.incidents import core
from services.incidents.cloudevents import (
    CloudEventError,
    binary_headers,
    read_binary_headers,
    rfc3339_ms,
)
from services.incidents.config import IncidentsConfig
from services.incidents.core import COMMAND, FINDING_SUBJECT, VERDICT, decide
from services.incidents.ocsf import OcsfInvalid, SocFinding, validate
from services.incidents.stage import build_stage
from services.runtime.stages import build_stage as build_registered
from tests.unit.incidents_support import T0, Driver, command, verdict


def _scenario() -> list[SocFinding]:
    d = Driver()
    d.feed(VERDICT, verdict("host-a", 1, at=T0 + 123))
    inc_id = d.incident("host-a")["incident_id"]  # type: ignore[index]
    for n, action in enumerate(("ACKNOWLEDGE", "ROOT_CAUSE", "REMEDIATE", "CLOSE"), start=1):
        d.feed(COMMAND, command("host-a", inc_id, action, n=n, at=T0 + 1000 * n))
    return d.findings


def test_every_finding_of_a_lifecycle_validates_with_the_expected_class_and_activity() -> None:
    findings = _scenario()
    got = [(f.class_uid, f.body["activity_id"], f.body.get("status_id")) for f in findings]
    # ... and closing the incident closes (resolves) its occurrence's Detection Finding too
    assert got == [(2004, 1, 1), (2005, 1, 1), (2005, 2, 2), (2005, 2, 2), (2005, 2, 4),
                   (2005, 3, 5), (2004, 3, 4)]
    for f in findings:
        validate(f.body)
        assert f.body["type_uid"] == f.class_uid * 100 + f.body["activity_id"]
        assert f.body["metadata"]["product"]["name"] == "hostgate"
    det, opened = findings[0], findings[1]
    assert det.body["time"] == T0 + 123
    assert det.body["finding_info"]["uid"] == "det-v-host-a-1"
    assert opened.body["finding_info_list"][0]["uid"] == det.body["finding_info"]["uid"]
    assert findings[-1].uid == det.uid  # the same finding, now resolved
    iocs = det.body["evidences"][0]["data"]
    assert {o["value"] for o in det.body["observables"]} >= {
        "host-a", iocs["evidence_sha256"], iocs["policy_sha256"]}
    assert iocs["evidence"] == "attest.evidence.v1[2]@101"
    assert iocs["evidence_sha256"] == verdict("host-a", 1)["evidence_digest"].hex()
    assert iocs["policy_sha256"] == verdict("host-a", 1)["policy_digest"].hex()
    assert findings[3].body["assignee"] == {"name": "alice@soc", "uid": "alice@soc"}


Breaker = Callable[[dict[str, Any]], None]


def _del(key: str) -> Breaker:
    return lambda b: b.pop(key)


def _set(path: tuple[str, ...], value: object) -> Breaker:
    def apply(b: dict[str, Any]) -> None:
        node = b
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return apply


BROKEN_INCIDENT: list[tuple[str, Breaker, str]] = [
    ("no finding_info_list", _del("finding_info_list"), "finding_info_list"),
    ("no status_id", _del("status_id"), "status_id"),
    ("status_id 6 is not an incident status", _set(("status_id",), 6), r"\$\.status_id"),
    ("type_uid disagrees", _set(("type_uid",), 200401), "type_uid"),
    ("caption disagrees", _set(("status",), "Closed"), r"\$\.status"),
    ("misspelt attribute", _set(("serverity_id",), 4), "serverity_id"),
    ("wrong metadata version", _set(("metadata", "version"), "1.0.0"), "metadata"),
    ("no assignee nor group", _del("assignee_group"), "assignee"),
    ("key material", _set(("unmapped",), {"hostgate": {"ek_public": "00"}}), "ek_public"),
    ("time as text", _set(("time",), "yesterday"), r"\$\.time"),
]


@pytest.mark.parametrize(("name", "breaker", "where"), BROKEN_INCIDENT,
                         ids=[b[0] for b in BROKEN_INCIDENT])
def test_a_broken_incident_finding_fails_validation(name: str, breaker: Breaker,
                                                    where: str) -> None:
    body = copy.deepcopy(dict(_scenario()[1].body))
    validate(body)
    breaker(body)
    with pytest.raises(OcsfInvalid, match=where):
        validate(body)


BROKEN_DETECTION: list[tuple[str, Breaker, str]] = [
    ("no finding_info", _del("finding_info"), "finding_info"),
    ("finding_info without uid", lambda b: b["finding_info"].pop("uid"), "uid"),
    ("class_uid unknown", _set(("class_uid",), 2099), "class_uid"),
    ("severity out of range", _set(("severity_id",), 7), "severity_id"),
    # Passes the pinned JSON schema; py-ocsf-models requires an analytic's name.
    ("analytic without name (py-ocsf-models)",
     lambda b: b["finding_info"]["analytic"].pop("name"), "py-ocsf-models"),
]


@pytest.mark.parametrize(("name", "breaker", "where"), BROKEN_DETECTION,
                         ids=[b[0] for b in BROKEN_DETECTION])
def test_a_broken_detection_finding_fails_validation(name: str, breaker: Breaker,
                                                     where: str) -> None:
    body = copy.deepcopy(dict(_scenario()[0].body))
    validate(body)
    breaker(body)
    with pytest.raises(OcsfInvalid, match=where):
        validate(body)


def test_cloudevents_binary_headers_are_present_and_correct() -> None:
    det = _scenario()[0]
    headers = binary_headers(det.cloudevent("urn:hostgate:incidents"))
    names = [n for n, _ in headers]
    assert len(names) == len(set(names))
    ce = read_binary_headers(headers)
    assert ce["ce_specversion"] == "1.0"
    assert ce["ce_id"] == det.uid == "det-v-host-a-1"
    assert ce["ce_source"] == "urn:hostgate:incidents"
    assert ce["ce_type"] == "io.hostgate.ocsf.detection_finding.create"
    assert ce["ce_time"] == rfc3339_ms(T0 + 123) == "2025-10-09T08:53:20.123Z"
    assert ce["ce_subject"] == "host-a"
    assert ce["content-type"] == "application/json"
    assert "ce_datacontenttype" not in ce  # binary mode maps it to content-type


def test_rfc3339_ms_known_values() -> None:
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1_700_000_000_007) == "2023-11-14T22:13:20.007Z"


@pytest.mark.parametrize(("headers", "where"), [
    ([("ce_id", b"x"), ("ce_source", b"s"), ("ce_type", b"t")], "ce_specversion"),
    ([("ce_specversion", b"0.3"), ("ce_id", b"x"), ("ce_source", b"s"), ("ce_type", b"t")],
     "not 1.0"),
    ([("ce_specversion", b"1.0"), ("ce_id", b"x"), ("ce_id", b"y"), ("ce_source", b"s"),
      ("ce_type", b"t")], "ce_id .* repeats"),
    ([("ce_specversion", b"1.0"), ("ce_id", b"\xff"), ("ce_source", b"s"), ("ce_type", b"t")],
     "not UTF-8 at byte 0"),
    ([("ce_specversion", b"1.0"), ("ce_id", b"x"), ("ce_source", b"s"), ("ce_type", b"t"),
      ("ce_time", b"Tuesday")], "RFC 3339"),
])
def test_broken_cloudevents_headers_are_refused(headers: list[tuple[str, bytes]],
                                                where: str) -> None:
    with pytest.raises(CloudEventError, match=where):
        read_binary_headers(headers)


def test_stage_is_registered_and_emits_findings_as_raw_json_outputs() -> None:
    stage = build_registered("incidents", {"HOSTGATE_TOPIC_NAMESPACE": "t1"})
    assert stage.input_topics == ("t1.attest.verdicts.v1", "t1.attest.rejections.v1",
                                  "t1.attest.remediation.v1")
    assert stage.changelog_of("incidents") == "t1.hostgate.incidents.incidents.changelog.v1"
    assert stage.tables == {"incidents": "hostgate.IncidentState",
                            "hosts": "hostgate.IncidentsRoster"}
    d = Driver()
    from services.runtime.stage import Coordinates, InputRecord
    from tests.unit.incidents_support import roundtrip

    config = IncidentsConfig.from_env({})
    inp = InputRecord("host-a", VERDICT, roundtrip(VERDICT, verdict("host-a", 1)),
                      Coordinates("attest.verdicts.v1", 0, 0), T0)
    decision = decide(inp, d.state, config)
    assert [o.subject for o in decision.outputs] == ["hostgate.IncidentEvent",
                                                     FINDING_SUBJECT, FINDING_SUBJECT]
    raw = [o for o in decision.outputs if o.subject == FINDING_SUBJECT]
    assert decision.log["ocsf_findings"] == 2
    for out in raw:
        assert out.topic == config.topics.findings and out.key == "host-a"
        assert out.raw_value is not None
        body = json.loads(out.raw_value)
        validate(body)
        assert body["class_uid"] in (2004, 2005)
        ce = read_binary_headers(out.headers)
        assert ce["content-type"] == "application/json" and ce["ce_subject"] == "host-a"
    assert build_stage({}).name == "incidents"


def test_decide_is_a_module_function_the_stage_binds_to_its_config() -> None:
    """The stage template: ``core.decide(inp, state, cfg)`` at module level, and the stage's
    ``decide`` that function with the config ``IncidentsConfig.from_env`` built, nothing else."""
    assert inspect.isfunction(core.decide) and core.decide.__module__ == "services.incidents.core"
    assert list(inspect.signature(core.decide).parameters) == ["inp", "state", "cfg"]
    env = {"HOSTGATE_TOPIC_NAMESPACE": "t2", "HOSTGATE_INCIDENTS_STALE_AFTER_S": "60",
           "HOSTGATE_INCIDENTS_ASSIGNEE_GROUP": "blue-team"}
    stage = build_stage(env)
    assert isinstance(stage.decide, partial) and stage.decide.func is core.decide
    assert stage.decide.args == () and list(stage.decide.keywords) == ["cfg"]
    cfg = stage.decide.keywords["cfg"]
    assert isinstance(cfg, IncidentsConfig) and cfg == IncidentsConfig.from_env(env)
    assert (cfg.topics.namespace, cfg.stale_after_ms, cfg.assignee_group) == ("t2", 60_000,
                                                                              "blue-team")
    assert stage.input_subjects == core.INPUT_SUBJECTS and stage.tables == core.TABLES


@pytest.mark.parametrize(("env", "names"), [
    ({"HOSTGATE_INCIDENTS_STALE_AFTER_S": "soon"}, "HOSTGATE_INCIDENTS_STALE_AFTER_S='soon' is "
                                                   "not a number"),
    ({"HOSTGATE_INCIDENTS_STALE_AFTER_S": "-1"}, "HOSTGATE_INCIDENTS_STALE_AFTER_S='-1' is "
                                                 "negative"),
    ({"HOSTGATE_INCIDENTS_TOPIC_PREFIX": "old"}, "HOSTGATE_INCIDENTS_TOPIC_PREFIX"),
])
def test_config_errors_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        IncidentsConfig.from_env(env)


@pytest.mark.parametrize("index", range(7))
def test_the_cloudevents_sdk_reads_every_finding_as_its_event(index: int) -> None:
    """A SOC consumer using the CloudEvents SDK's own Kafka binding (binary mode) gets the
    finding's id, type, source, subject and time, and the OCSF body as its data."""
    from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
    from cloudevents.core.formats.json import JSONFormat

    finding = _scenario()[index]
    out = core.finding_output(finding, IncidentsConfig())
    assert out.raw_value is not None
    message = KafkaMessage(headers=dict(out.headers), key=out.key.encode(), value=out.raw_value)
    event = from_binary(message, JSONFormat())
    attributes = event.get_attributes()
    assert attributes["id"] == finding.uid and attributes["subject"] == finding.host_id
    assert attributes["type"].startswith("io.hostgate.ocsf.")
    assert attributes["source"] == IncidentsConfig().ce_source
    assert int(attributes["time"].timestamp() * 1000) == finding.time_ms
    data = event.get_data()
    body = json.loads(data) if isinstance(data, (bytes, str)) else data
    assert body == json.loads(finding.to_json())
