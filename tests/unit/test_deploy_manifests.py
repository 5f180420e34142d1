"""Offline validation of everything under ``deploy/`` (no cluster, no Docker engine here).

* Built-in Kubernetes kinds: ``kubernetes-validate`` with its strict schemas (unknown fields fail).
* Strimzi custom resources: the CRDs' ``openAPIV3Schema`` from ``$HOSTGATE_SHARED/recipes/k8s-crds``
  with ``jsonschema`` Draft 7, every object schema that lists its properties made closed
  (``additionalProperties: false``) so a misspelt field fails, as ``kubeconform -strict`` would.
* KEDA objects: no CRD is available offline, so a small schema of our own (below) checks their
  structure and the kafka trigger's metadata keys.
* Prometheus Operator objects (``PodMonitor``, ``PrometheusRule``): no CRD offline either, so a
  closed schema of our own for the fields hostgate uses (the rules' PromQL and the metrics it
  names are checked in ``tests/unit/test_deploy_monitoring.py``).
* Cross-references: secrets, groups, topics and users named by one manifest exist in another.
* The compose file parses, references existing build files, and uses only documented env names.
* The generated topic/user/stage YAML equals what ``deploy/k8s/generate.py`` renders now.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
README = DEPLOY / "README.md"
K8S_VERSION = "1.33.0"  # bundled by kubernetes-validate 1.37.0 (it carries 1.x schemas up to 1.37)

Doc = dict[str, Any]


def shared_dir() -> Path:
    raw = os.environ.get("HOSTGATE_SHARED", "../shared")
    path = Path(raw)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def crd_dir() -> Path:
    return shared_dir() / "recipes" / "k8s-crds"


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.cache
def all_docs() -> list[tuple[Path, Doc]]:
    """Parsed once per session; callers must not mutate (``_first`` copies)."""
    return [(p, d) for p in manifest_files() for d in load_docs(p)]


def docs_of(kind: str) -> list[Doc]:
    return [d for _, d in all_docs() if d["kind"] == kind]


# --- Strimzi: CRD schemas, closed ------------------------------------------------------------


def close_objects(schema: Any) -> Any:
    """Return a copy in which every ``type: object`` schema that lists ``properties`` and does
    not already allow extra keys (``additionalProperties``, ``x-kubernetes-preserve-unknown-
    fields``) rejects unknown keys."""
    if isinstance(schema, list):
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: close_objects(v) for k, v in schema.items()}
    if "properties" in schema and isinstance(schema["properties"], dict):
        out["properties"] = {k: close_objects(v) for k, v in schema["properties"].items()}
    if (schema.get("type") == "object" and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _load_crd_schemas() -> dict[tuple[str, str], Doc]:
    directory = crd_dir()
    schemas: dict[tuple[str, str], Doc] = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in load_docs(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = close_objects(version["schema"]["openAPIV3Schema"])
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str], Doc]:
    directory = crd_dir()
    if not directory.is_dir():
        pytest.fail(f"Strimzi CRDs not found at {directory} (set HOSTGATE_SHARED)")
    schemas = _load_crd_schemas()
    for kind in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"):
        assert ("kafka.strimzi.io/v1", kind) in schemas, f"no v1 CRD for {kind} in {directory}"
    return schemas


def crd_errors(schemas: dict[tuple[str, str], Doc], doc: Doc) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key not in schemas:
        return [f"no CRD schema for {key}"]
    validator = jsonschema.Draft7Validator(schemas[key])
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)]


# --- KEDA: our own structural schema (no CRD offline) ----------------------------------------

KAFKA_TRIGGER_KEYS = [  # from the KEDA 2.17 apache-kafka scaler documentation
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
    "excludePersistentLag", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
    "version", "partitionLimitation", "sasl", "saslTokenProvider", "tls", "unsafeSsl",
    "awsRegion",
]
_NAMED: Doc = {"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {"name": {"type": "string", "minLength": 1}}}
_META: Doc = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
    "namespace": {"type": "string"}, "labels": {"type": "object"},
    "annotations": {"type": "object"}}, "additionalProperties": False}
_DIGITS = {"type": "string", "pattern": r"^[0-9]+$"}
SCALED_OBJECT_SCHEMA: Doc = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": _META,
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers", "maxReplicaCount"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"],
                                   "additionalProperties": False,
                                   "properties": {"name": {"type": "string"},
                                                  "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"},
                                                  "envSourceContainerName": {"type": "string"}}},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": {"type": "string"},
                                           "behavior": {"type": "object",
                                                        "additionalProperties": False,
                                                        "properties": {
                                                            "scaleUp": {"type": "object"},
                                                            "scaleDown": {"type": "object"}}}}},
                    }},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": {"const": "kafka"},
                        "name": {"type": "string"},
                        "useCachedMetrics": {"type": "boolean"},
                        "authenticationRef": _NAMED,
                        "metadata": {
                            "type": "object", "additionalProperties": False,
                            # replicas <= partitions, and a protocol version Kafka 4 accepts
                            "required": ["bootstrapServers", "consumerGroup", "topic",
                                         "allowIdleConsumers", "version"],
                            "properties": {
                                **{k: {"type": "string"} for k in KAFKA_TRIGGER_KEYS},
                                "allowIdleConsumers": {"const": "false"},
                                "version": {"type": "string",
                                            "pattern": r"^(2\.[1-9]|[3-9]\.[0-9]+)\.[0-9]+$"},
                                "lagThreshold": _DIGITS, "activationLagThreshold": _DIGITS,
                                "offsetResetPolicy": {"enum": ["earliest", "latest"]},
                                "tls": {"enum": ["enable", "disable"]},
                            }},
                    }}},
            }},
    },
}
TRIGGER_AUTH_SCHEMA: Doc = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"},
        "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False,
                 "required": ["secretTargetRef"],
                 "properties": {"secretTargetRef": {"type": "array", "minItems": 1, "items": {
                     "type": "object", "additionalProperties": False,
                     "required": ["parameter", "name", "key"],
                     "properties": {
                         "parameter": {"enum": ["sasl", "username", "password", "tls", "ca",
                                                "cert", "key", "keyPassword"]},
                         "name": {"type": "string"}, "key": {"type": "string"}}}}}},
    },
}
KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT_SCHEMA,
                "TriggerAuthentication": TRIGGER_AUTH_SCHEMA}

# --- Prometheus Operator: our own structural schema (no CRD offline) --------------------------
# Field names from the monitoring.coreos.com/v1 CRDs of prometheus-operator (a subset: the fields
# a hostgate manifest may use; anything else fails, as a misspelt field would).

_LABEL_SELECTOR: Doc = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["key", "operator"],
        "properties": {"key": {"type": "string"},
                       "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                                          r"(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STR_MAP: Doc = {"type": "object", "additionalProperties": {"type": "string"}}
POD_MONITOR_SCHEMA: Doc = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": _META,
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array"}}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": _DURATION, "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                        "params": {"type": "object"}}}},
            }},
    },
}
PROMETHEUS_RULE_SCHEMA: Doc = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"],
                 "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                     "type": "object", "additionalProperties": False,
                     "required": ["name", "rules"],
                     "properties": {
                         "name": {"type": "string", "minLength": 1},
                         "interval": _DURATION, "limit": {"type": "integer"},
                         "labels": _STR_MAP,
                         "rules": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "additionalProperties": False,
                             "required": ["expr"],
                             "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                             "properties": {
                                 "alert": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                                 "record": {"type": "string"},
                                 "expr": {"type": "string", "minLength": 1},
                                 "for": _DURATION, "keep_firing_for": _DURATION,
                                 "labels": _STR_MAP, "annotations": _STR_MAP}}}}}}}},
    },
}
MONITORING_SCHEMAS = {"PodMonitor": POD_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}


def keda_errors(doc: Doc, schemas: dict[str, Doc] = KEDA_SCHEMAS,
                family: str = "KEDA") -> list[str]:
    schema = schemas.get(doc["kind"])
    if schema is None:
        return [f"no schema for {family} kind {doc['kind']}"]
    jsonschema.Draft7Validator.check_schema(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


def builtin_errors(doc: Doc) -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:  # fail closed: unknown kind
        return [exc.message]
    return []


def validation_errors(doc: Doc, crds: dict[tuple[str, str], Doc]) -> list[str]:
    api = doc.get("apiVersion", "")
    if api.startswith("kafka.strimzi.io/"):
        return crd_errors(crds, doc)
    if api.startswith("keda.sh/"):
        return keda_errors(doc)
    if api.startswith("monitoring.coreos.com/"):
        return keda_errors(doc, MONITORING_SCHEMAS, "Prometheus Operator")
    return builtin_errors(doc)


# --- every committed manifest ----------------------------------------------------------------


def test_manifests_exist() -> None:
    kinds = {d["kind"] for _, d in all_docs()}
    for kind in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "Deployment",
                 "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication", "Namespace",
                 "PodMonitor", "PrometheusRule", "ConfigMap"):
        assert kind in kinds, f"no {kind} under deploy/k8s"


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates(path: Path, crd_schemas: dict[tuple[str, str], Doc]) -> None:
    failures = []
    for index, doc in enumerate(load_docs(path)):
        for err in validation_errors(doc, crd_schemas):
            failures.append(f"{path.name} doc {index} {doc['kind']}/"
                            f"{doc['metadata']['name']}: {err}")
    assert not failures, "\n".join(failures)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {(K8S / r).resolve() for r in kust["resources"]}
    assert listed == {p.resolve() for p in manifest_files()}


# --- misspelt fields must fail: one case per kind family --------------------------------------


def _first(kind: str) -> Doc:
    docs = docs_of(kind)
    assert docs, f"no {kind}"
    return copy.deepcopy(docs[0])


def _rename(mapping: Doc, old: str, new: str) -> None:
    assert old in mapping, f"{old} not present"
    mapping[new] = mapping.pop(old)


def _typo_kafka(d: Doc) -> None:
    _rename(d["spec"]["kafka"], "metadataVersion", "metdataVersion")


def _typo_nodepool(d: Doc) -> None:
    _rename(d["spec"], "replicas", "replcas")


def _typo_topic(d: Doc) -> None:
    _rename(d["spec"], "partitions", "partitons")


def _typo_user(d: Doc) -> None:
    _rename(d["spec"]["authorization"]["acls"][0], "operations", "operation")


def _typo_user_nested(d: Doc) -> None:
    _rename(d["spec"]["authorization"]["acls"][0]["resource"], "patternType", "patterType")


def _typo_deployment(d: Doc) -> None:
    d["spec"]["replcas"] = 2


def _typo_container(d: Doc) -> None:
    _rename(d["spec"]["template"]["spec"]["containers"][0], "readinessProbe", "readynessProbe")


def _typo_pdb(d: Doc) -> None:
    _rename(d["spec"], "maxUnavailable", "maxUnavailabel")


def _typo_scaled_object(d: Doc) -> None:
    _rename(d["spec"], "maxReplicaCount", "maxReplicaCont")


def _typo_trigger_key(d: Doc) -> None:
    _rename(d["spec"]["triggers"][0]["metadata"], "consumerGroup", "consumerGrop")


def _idle_consumers(d: Doc) -> None:
    d["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] = "true"


def _typo_trigger_auth(d: Doc) -> None:
    _rename(d["spec"], "secretTargetRef", "secretTargetRefs")


def _typo_pod_monitor(d: Doc) -> None:
    _rename(d["spec"]["podMetricsEndpoints"][0], "path", "pth")


def _typo_rule(d: Doc) -> None:
    _rename(d["spec"]["groups"][0]["rules"][0], "for", "fro")


def _wrong_type_topic(d: Doc) -> None:
    d["spec"]["replicas"] = "three"


BROKEN = [  # (kind, how to break it, what the error must mention)
    ("Kafka", _typo_kafka, "metdataVersion"),
    ("KafkaNodePool", _typo_nodepool, "replcas"),
    ("KafkaTopic", _typo_topic, "partitons"),
    ("KafkaTopic", _wrong_type_topic, "'three' is not of type 'integer'"),
    ("KafkaUser", _typo_user, "'operation' was unexpected"),
    ("KafkaUser", _typo_user_nested, "patterType"),
    ("Deployment", _typo_deployment, "replcas"),
    ("Deployment", _typo_container, "readynessProbe"),
    ("PodDisruptionBudget", _typo_pdb, "maxUnavailabel"),
    ("ScaledObject", _typo_scaled_object, "maxReplicaCont"),
    ("ScaledObject", _typo_trigger_key, "consumerGrop"),
    ("ScaledObject", _idle_consumers, "allowIdleConsumers"),
    ("TriggerAuthentication", _typo_trigger_auth, "secretTargetRefs"),
    ("PodMonitor", _typo_pod_monitor, "pth"),
    ("PrometheusRule", _typo_rule, "fro"),
]


@pytest.mark.parametrize(("kind", "breaker", "expected"), BROKEN,
                         ids=[b.__name__ for _, b, _ in BROKEN])
def test_misspelt_field_fails(kind: str, breaker: Any, expected: str,
                              crd_schemas: dict[tuple[str, str], Doc]) -> None:
    doc = _first(kind)
    assert validation_errors(doc, crd_schemas) == [], "the unbroken copy must pass"
    breaker(doc)
    errors = validation_errors(doc, crd_schemas)
    assert any(expected in e for e in errors), f"{breaker.__name__} not caught: {errors}"


def test_closing_keeps_free_maps_free(crd_schemas: dict[tuple[str, str], Doc]) -> None:
    """``config`` maps are free-form in the CRDs: closing objects must not forbid topic
    configs, only unknown schema fields."""
    doc = _first("KafkaTopic")
    doc["spec"]["config"]["segment.bytes"] = 1073741824
    assert crd_errors(crd_schemas, doc) == []


# --- cross-references between manifests -------------------------------------------------------


def _env(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _acls(user: Doc) -> list[Doc]:
    return list(user["spec"]["authorization"]["acls"])


def _ops(user: Doc, rtype: str, name: str, pattern: str = "literal") -> set[str]:
    return {op for a in _acls(user) if a["resource"]["type"] == rtype
            and a["resource"].get("name") == name
            and a["resource"].get("patternType", "literal") == pattern
            for op in a["operations"]}


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hostgate_deploy_generate",
                                                  K8S / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_topics_cover_topics_py(gen: ModuleType) -> None:
    from services.runtime.topics import Topics, min_insync

    topics = {d["spec"]["topicName"]: d["spec"] for d in docs_of("KafkaTopic")}
    declared = {s.name: s for s in Topics().all_specs()}
    assert set(topics) == set(declared)
    for name, spec in declared.items():
        got = topics[name]
        assert got["config"] == spec.configs(3), name
        assert got["replicas"] == 3, name
        assert got["config"]["min.insync.replicas"] == str(min_insync(3)) == "2", name
        assert got["config"]["cleanup.policy"] == ("compact" if spec.compacted else "delete")
        if not spec.compacted:
            assert got["config"]["retention.ms"] == spec.retention_ms, name


def test_stage_users_are_least_privilege(gen: ModuleType) -> None:
    from services.runtime.topics import STAGES, STATE_TABLES, Topics

    dlq_topic, changelog_topic = Topics().dlq, Topics().changelog
    users = {d["metadata"]["name"]: d for d in docs_of("KafkaUser")}
    for stage in STAGES:
        user = users[f"hostgate-{stage}"]
        assert user["spec"]["authentication"]["type"] == "tls"
        io = gen.STAGE_IO[stage]
        # A stage's internal topics (the collector's EK registry) are both read and written.
        internal = set(io.inputs) & set(io.outputs)
        for topic in internal:
            assert _ops(user, "topic", topic) == {"Read", "Write", "Describe"}, (stage, topic)
        for topic in set(io.inputs) - internal:
            assert _ops(user, "topic", topic) == {"Read", "Describe"}, (stage, topic)
        for topic in {*io.outputs, dlq_topic(stage)} - internal:
            assert _ops(user, "topic", topic) == {"Write", "Describe"}, (stage, topic)
        for table in STATE_TABLES[stage]:
            assert _ops(user, "topic", changelog_topic(stage, table)) == {
                "Read", "Write", "Describe"}
        assert _ops(user, "group", f"hostgate.{stage}") == {"Read"}
        assert _ops(user, "transactionalId", f"hostgate.{stage}.", "prefix") == {
            "Write", "Describe"}
        # nothing cluster-wide, no wildcards, no prefix on topics or groups
        for acl in _acls(user):
            res = acl["resource"]
            assert res["type"] != "cluster" and "All" not in acl["operations"], (stage, acl)
            assert res["name"] != "*", (stage, acl)
            if res["type"] in ("topic", "group"):
                assert res.get("patternType", "literal") == "literal", (stage, acl)


def test_each_topic_has_exactly_one_writer() -> None:
    writers: dict[str, set[str]] = {}
    for user in docs_of("KafkaUser"):
        for acl in _acls(user):
            if acl["resource"]["type"] == "topic" and "Write" in acl["operations"]:
                writers.setdefault(acl["resource"]["name"], set()).add(user["metadata"]["name"])
    topics = {d["spec"]["topicName"] for d in docs_of("KafkaTopic")}
    assert set(writers) == topics, f"topics nobody may write: {topics - set(writers)}"
    shared = {t: w for t, w in writers.items() if len(w) != 1}
    assert not shared, f"topics with several writers: {shared}"


def test_agents_soc_keda_users() -> None:
    users = {d["metadata"]["name"]: d for d in docs_of("KafkaUser")}
    agents = users["hostgate-agents"]
    for t in ("attest.requests.v1", "attest.evidence.v1"):
        assert _ops(agents, "topic", t) == {"Write", "Describe"}
    for t in ("attest.challenges.v1", "attest.credentials.v1"):
        assert _ops(agents, "topic", t) == {"Read", "Describe"}
    soc = users["hostgate-soc"]
    for t in ("attest.incidents.v1", "soc.findings.ocsf.v1", "attest.hosts.v1"):
        assert _ops(soc, "topic", t) == {"Read", "Describe"}
    assert _ops(soc, "topic", "attest.remediation.v1") == {"Write", "Describe"}
    keda = users["hostgate-keda"]
    assert {op for a in _acls(keda) for op in a["operations"]} == {"Describe"}


def test_deployments_match_users_groups_and_secrets(gen: ModuleType) -> None:
    from services.runtime.topics import STAGES

    users = {d["metadata"]["name"] for d in docs_of("KafkaUser")}
    deployments = {d["metadata"]["name"]: d for d in docs_of("Deployment")}
    pdbs = {d["metadata"]["name"]: d for d in docs_of("PodDisruptionBudget")}
    for stage in STAGES:
        dep = deployments[f"hostgate-{stage}"]
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = _env(container)
        assert env["HOSTGATE_GROUP"] == f"hostgate.{stage}"
        assert env["HOSTGATE_KAFKA_SECURITY_PROTOCOL"] == "SSL"
        assert container["args"] == ["run", stage]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets["kafka-user"] in users, "the mounted TLS identity must be a KafkaUser"
        assert secrets["kafka-user"] == f"hostgate-{stage}"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for var in ("HOSTGATE_KAFKA_SSL_CAFILE", "HOSTGATE_KAFKA_SSL_CERTFILE",
                    "HOSTGATE_KAFKA_SSL_KEYFILE"):
            assert str(Path(env[var]).parent) in mounts, var
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["allowPrivilegeEscalation"]
        assert all(m.get("readOnly") for p, m in mounts.items() if p != "/tmp")
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert pod["terminationGracePeriodSeconds"] >= 30
        assert "replicas" not in dep["spec"], "KEDA owns replicas"
        assert pdbs[f"hostgate-{stage}"]["spec"]["selector"] == dep["spec"]["selector"]


def test_scaled_objects_follow_groups_and_partitions(gen: ModuleType) -> None:
    partitions = {d["spec"]["topicName"]: d["spec"]["partitions"] for d in docs_of("KafkaTopic")}
    # Stage workers scale on lag; the liveness ticker and the CRL servers are fixed replicas.
    deployments = {d["metadata"]["name"]: d for d in docs_of("Deployment")
                   if d["metadata"]["name"] not in FIXED_REPLICAS}
    auths = {d["metadata"]["name"] for d in docs_of("TriggerAuthentication")}
    users = {d["metadata"]["name"] for d in docs_of("KafkaUser")}
    scaled = docs_of("ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == set(deployments)
    for so in scaled:
        dep = deployments[so["spec"]["scaleTargetRef"]["name"]]
        group = _env(dep["spec"]["template"]["spec"]["containers"][0])["HOSTGATE_GROUP"]
        stage = group.removeprefix("hostgate.")
        topics = [t["metadata"]["topic"] for t in so["spec"]["triggers"]]
        assert sorted(topics) == sorted(gen.STAGE_IO[stage].inputs)
        for trig in so["spec"]["triggers"]:
            assert trig["metadata"]["consumerGroup"] == group
            assert trig["authenticationRef"]["name"] in auths
            assert so["spec"]["maxReplicaCount"] <= partitions[trig["metadata"]["topic"]]
        assert so["spec"]["minReplicaCount"] >= 1
    for auth in docs_of("TriggerAuthentication"):
        cert_secrets = {r["name"] for r in auth["spec"]["secretTargetRef"]
                        if r["parameter"] in ("cert", "key")}
        assert cert_secrets == {"hostgate-keda"} and cert_secrets <= users


def test_kafka_cluster_settings() -> None:
    (kafka,) = docs_of("Kafka")
    (pool,) = docs_of("KafkaNodePool")
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    spec = kafka["spec"]["kafka"]
    assert spec["authorization"]["type"] == "simple"
    (listener,) = spec["listeners"]
    assert (listener["port"], listener["tls"], listener["authentication"]["type"]) == (
        9093, True, "tls")
    cfg = spec["config"]
    assert cfg["default.replication.factor"] == 3 and cfg["min.insync.replicas"] == 2
    assert cfg["transaction.state.log.replication.factor"] == 3
    assert cfg["transaction.state.log.min.isr"] == 2
    assert cfg["auto.create.topics.enable"] is False
    for doc in docs_of("KafkaTopic") + docs_of("KafkaUser"):
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]


# --- generated files are current ---------------------------------------------------------------


def test_generated_yaml_is_up_to_date(gen: ModuleType) -> None:
    rendered = gen.render()
    for name, text in rendered.items():
        path = K8S / "generated" / name
        assert path.is_file(), f"missing {path.relative_to(REPO_ROOT)}"
        assert path.read_text() == text, (
            f"{path.relative_to(REPO_ROOT)} is stale: run python deploy/k8s/generate.py")


def test_generate_refuses_undeclared_topic(gen: ModuleType,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real = gen.stage_io

    def broken(t: Any) -> dict[str, Any]:
        io = dict(real(t))
        io["verifier"] = gen.StageIO(inputs=("attest.colected.v1",),
                                     outputs=("attest.verdicts.v1",))
        return io

    monkeypatch.setattr(gen, "stage_io", broken)
    with pytest.raises(gen.GenerateError, match=re.escape("attest.colected.v1")):
        gen.render()


def test_a_namespaced_render_names_everything_inside_the_namespace(gen: ModuleType) -> None:
    """``--namespace``: every topic, ACL resource (topics, groups, group and transactional-id
    prefixes), consumer group KEDA watches and Kafka principal carries the namespace, and every
    workload gets ``HOSTGATE_TOPIC_NAMESPACE``; nothing of the un-namespaced names is left."""
    from services.runtime.topics import STAGES, Topics

    ns = "blue"
    files = {name: list(yaml.safe_load_all(text))
             for name, text in gen.render(namespace=ns).items()}
    plain = {d["spec"]["topicName"] for d in docs_of("KafkaTopic")}
    topics = {d["spec"]["topicName"] for d in files["topics.yaml"]}
    assert topics == {s.name for s in Topics(ns).all_specs()} == {f"{ns}.{n}" for n in plain}
    for user in files["users.yaml"]:
        assert user["metadata"]["name"].startswith(f"{ns}-hostgate-")
        for acl in user["spec"]["authorization"]["acls"]:
            assert acl["resource"]["name"].startswith(f"{ns}."), acl
    by_name = {u["metadata"]["name"]: u for u in files["users.yaml"]}
    for stage in STAGES:
        user = by_name[f"{ns}-hostgate-{stage}"]
        assert _ops(user, "group", Topics(ns).group(stage)) == {"Read"}
        assert _ops(user, "transactionalId", f"{ns}.hostgate.{stage}.", "prefix") == {
            "Write", "Describe"}
    workloads = [d for d in files["stages.yaml"] if d["kind"] == "Deployment"]
    assert len(workloads) == len(STAGES) + len(FIXED_REPLICAS)
    for dep in workloads:
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert _env(container)["HOSTGATE_TOPIC_NAMESPACE"] == ns
        assert dep["metadata"]["name"].startswith(f"{ns}-")
    for so in (d for d in files["stages.yaml"] if d["kind"] == "ScaledObject"):
        for trig in so["spec"]["triggers"]:
            assert trig["metadata"]["consumerGroup"].startswith(f"{ns}.hostgate.")
            assert trig["metadata"]["topic"].startswith(f"{ns}.")


# --- compose and Dockerfile -------------------------------------------------------------------


FIXED_REPLICAS = ("hostgate-liveness-ticker", "hostgate-crl")
"""Deployments that do not scale on lag (no ScaledObject)."""


def test_the_crl_is_served_in_the_cluster_and_certificates_name_it(gen: ModuleType) -> None:
    """Relying parties can check revocation: a Service in front of ``issuer serve-crl``,
    listening where its probes and the Service point, and the issuer names that URL."""
    (crl,) = [d for d in docs_of("Deployment") if d["metadata"]["name"] == "hostgate-crl"]
    (service,) = [d for d in docs_of("Service") if d["metadata"]["name"] == "hostgate-crl"]
    (container,) = crl["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["issuer", "serve-crl"]
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--listen-address") + 1] == "0.0.0.0"
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert service["spec"]["selector"] == crl["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    (issuer,) = [d for d in docs_of("Deployment") if d["metadata"]["name"] == "hostgate-issuer"]
    url = _env(issuer["spec"]["template"]["spec"]["containers"][0])["HOSTGATE_ISSUER_CRL_URL"]
    assert url == f"http://hostgate-crl.{gen.NAMESPACE}.svc/crl"


def documented_env() -> set[str]:
    """HOSTGATE_* names in the README's "Environment contract" section."""
    text = README.read_text()
    match = re.search(r"^## Environment contract\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "deploy/README.md has no '## Environment contract' section"
    names = set(re.findall(r"`(HOSTGATE_[A-Z0-9_]+)`", match.group(1)))
    assert len(names) >= 10
    return names


@pytest.fixture(scope="module")
def compose() -> Doc:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def _compose_env(service: Doc) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_builds_from_existing_files(compose: Doc) -> None:
    base = COMPOSE.parent
    built = {n: s for n, s in compose["services"].items() if "build" in s}
    assert {"topics-init", "collector", "verifier", "issuer", "incidents"} <= set(built)
    for name, svc in built.items():
        context = (base / svc["build"]["context"]).resolve()
        assert context.is_dir(), (name, context)
        dockerfile = context / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), (name, dockerfile)
        assert (dockerfile.parent / (dockerfile.name + ".dockerignore")).is_file()
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            assert not src.startswith("/"), f"{name}: absolute host path {src}"
            if src.startswith("."):
                assert (base / src).resolve().is_relative_to(base), (name, src)
    for name, secret in compose.get("secrets", {}).items():
        path = (base / secret["file"]).resolve()
        assert path.is_relative_to(base / "secrets"), name
    ignore = (base / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore, "compose secrets must be git-ignored"


def test_compose_env_is_the_documented_contract(compose: Doc) -> None:
    contract = documented_env()
    for name, svc in compose["services"].items():
        if name.startswith("kafka-"):
            continue
        env = _compose_env(svc)
        assert env, name
        unknown = set(env) - contract
        assert not unknown, f"{name}: env not in deploy/README.md contract: {sorted(unknown)}"
    for stage in ("collector", "verifier", "issuer", "incidents"):
        svc = compose["services"][stage]
        env = _compose_env(svc)
        assert env["HOSTGATE_GROUP"] == f"hostgate.{stage}"
        assert svc["command"] == ["run", stage]
        assert "test" in svc["healthcheck"]
        assert svc["depends_on"]["topics-init"]["condition"] == "service_completed_successfully"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]


def test_k8s_env_is_the_documented_contract() -> None:
    contract = documented_env()
    for dep in docs_of("Deployment"):
        for container in dep["spec"]["template"]["spec"]["containers"]:
            unknown = set(_env(container)) - contract
            assert not unknown, f"{dep['metadata']['name']}: {sorted(unknown)}"


def test_compose_cluster_replication(compose: Doc) -> None:
    brokers = {n: _compose_env(s) for n, s in compose["services"].items()
               if n.startswith("kafka-")}
    assert len(brokers) == 3
    assert len({e["KAFKA_NODE_ID"] for e in brokers.values()}) == 3
    for name, env in brokers.items():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3, name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", name
        assert compose["services"][name]["healthcheck"]["test"], name
    init = compose["services"]["topics-init"]
    assert init["command"][:2] == ["topics", "ensure"]
    assert _compose_env(init)["HOSTGATE_REPLICATION"] == "3"
    assert all(c["condition"] == "service_healthy" for c in init["depends_on"].values())


def _dockerfile_stages(text: str) -> Iterator[tuple[str, str]]:
    """(FROM line, body) per build stage, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    parts = re.split(r"^(FROM .*)$", joined, flags=re.M)
    for i in range(1, len(parts), 2):
        yield parts[i], parts[i + 1]


def test_dockerfile_is_multistage_nonroot_without_secrets() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    stages = list(_dockerfile_stages(text))
    assert len(stages) == 2, [s[0] for s in stages]
    (_, build), (_, runtime) = stages
    assert "libtss2-dev" in build and "pip wheel" in build
    assert "libtss2-dev" not in runtime and "gcc" not in runtime
    assert "libtss2-esys" in runtime
    user = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user and not user[-1].startswith(("0", "root")), user
    assert re.search(r"^ENTRYPOINT \[\"hostgate\"\]", runtime, re.M)
    for line in text.splitlines():
        if line.startswith(("ENV", "ARG")):
            assert not re.search(r"PASS|SECRET|TOKEN|PRIVATE|_KEY\b", line, re.I), line
    copied = re.findall(r"^COPY (?!--from)(.*)$", text, re.M)
    assert all("secrets" not in c and "compose" not in c for c in copied), copied


def test_every_stage_gets_the_settings_it_cannot_start_without(compose: Doc) -> None:
    """A stage refuses to start without these (its build_stage raises ConfigError)."""
    required = {
        "collector": {"HOSTGATE_EK_CA_DIR", "HOSTGATE_POLICY_ID"},
        "verifier": {"HOSTGATE_POLICY_ID"},
        "issuer": {"HOSTGATE_ISSUER_CA_CERT", "HOSTGATE_ISSUER_CA_KEY",
                   "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE"},
    }
    services = compose["services"]
    k8s = {doc["metadata"]["name"]: doc for doc in load_docs(K8S / "generated" / "stages.yaml")
           if doc and doc.get("kind") == "Deployment"}
    for stage, names in required.items():
        compose_env = set(services[stage].get("environment") or {})
        assert names <= compose_env, f"compose {stage}: missing {sorted(names - compose_env)}"
        container = k8s[f"hostgate-{stage}"]["spec"]["template"]["spec"]["containers"][0]
        k8s_env = {e["name"] for e in container["env"]}
        assert names <= k8s_env, f"k8s {stage}: missing {sorted(names - k8s_env)}"
    ticker = k8s["hostgate-liveness-ticker"]["spec"]["template"]["spec"]["containers"][0]
    assert ticker["args"][:2] == ["incidents", "tick"]
