#!/usr/bin/env python3
"""Generate hostgate's Strimzi topics and users and its per-stage workloads.

Everything topic-shaped is read from ``services/runtime/topics.py`` (the one declaration the
runtime's ``hostgate topics ensure`` also uses), so the Kubernetes manifests cannot drift from
it: ``tests/unit/test_deploy_manifests.py`` renders them again and compares them with the
committed files byte for byte.

Writes four files under ``deploy/k8s/generated/``:

``topics.yaml``
    one ``KafkaTopic`` per topic of ``Topics.all_specs()`` (the product's topics), with
    partitions, replicas and the topic configs hostgate checks for drift (``cleanup.policy``,
    ``retention.ms``, ``min.insync.replicas``).
``users.yaml``
    one ``KafkaUser`` (mutual-TLS authentication, ``simple`` authorization) per stage with
    least-privilege ACLs derived from ``stage_io`` below, plus the agents', the SOC's, the
    operators' and KEDA's users.
``stages.yaml``
    per stage: a ``Deployment``, a ``PodDisruptionBudget`` and a KEDA ``ScaledObject`` on
    consumer lag; one ``TriggerAuthentication`` for KEDA's own TLS principal.
``monitoring.yaml``
    a Prometheus Operator ``PodMonitor`` for the stage pods, a ``PrometheusRule`` with the
    alerts, and ``deploy/grafana/hostgate.json`` as a Grafana-sidecar ``ConfigMap``
    (``deploy/k8s/monitoring.py``).

Usage::

    python deploy/k8s/generate.py            # rewrite the files
    python deploy/k8s/generate.py --check    # exit 1 and name the stale files if they differ
    python deploy/k8s/generate.py --namespace blue --out DIR   # a namespaced deployment

Every name comes from one ``Topics(namespace)``: with ``--namespace NS`` each topic, DLQ,
changelog, ACL, consumer group, group prefix and transactional-id prefix is ``NS.<name>``, the
workloads get ``HOSTGATE_TOPIC_NAMESPACE=NS``, and Kubernetes object names ``NS-<name>`` (with an
``app.kubernetes.io/instance`` label), so a second deployment can share the Kafka cluster.

Pure apart from ``main``: ``render()`` returns the file texts and touches nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from deploy.k8s import monitoring  # noqa: E402  (needs the path above)
from services.errors import ConfigError  # noqa: E402
from services.runtime.topics import (  # noqa: E402
    NAMESPACE_ENV,
    STAGES,
    STATE_TABLES,
    Topics,
    TopicSpec,
)

OUT_DIR: Final = Path(__file__).resolve().parent / "generated"

# --- deployment-wide settings (the README's sizing note explains the numbers) ------------------

NAMESPACE: Final = "hostgate"
CLUSTER: Final = "hostgate-kafka"
"""Name of the Strimzi ``Kafka`` resource in ``deploy/k8s/kafka.yaml``."""
BOOTSTRAP: Final = f"{CLUSTER}-kafka-bootstrap.{NAMESPACE}.svc:9093"
"""Strimzi's bootstrap Service for the internal TLS listener named ``tls`` on port 9093."""
CLUSTER_CA_SECRET: Final = f"{CLUSTER}-cluster-ca-cert"
"""Secret the Cluster Operator keeps the brokers' CA certificate in (key ``ca.crt``)."""
DEFAULT_PARTITIONS: Final = 48
"""Every host-keyed topic and every changelog shares one partition count: a stage's task *p*
owns partition *p* of each of its inputs and changelogs (co-partitioning)."""
REPLICAS: Final = 3
IMAGE: Final = "hostgate:0.1.0"
"""Placeholder image reference; override it with kustomize ``images:``."""
POLICY_ID: Final = "fleet-default"
"""The policy id in force (``HOSTGATE_POLICY_ID``) of the verifier, which appraises under it, and
of the collector, whose challenges ask for its coverage; operators publish its versions."""
HTTP_PORT: Final = 9400
HTTP_HOST: Final = "0.0.0.0"
"""Every pod address: the health and metrics server is reached at the pod IP."""
KEDA_KAFKA_VERSION: Final = "4.0.0"
"""sarama protocol version KEDA speaks; its 1.0.0 default predates Kafka 4's 2.1 baseline."""
TERMINATION_GRACE_S: Final = 60
"""SIGTERM drains the current batch and commits its transaction; a batch is bounded well below
this, and the broker aborts a transaction of a killed worker after its timeout anyway."""
UID: Final = 10001
"""The non-root user baked into ``deploy/Dockerfile``."""
DEFAULT_TOPICS: Final = Topics()
"""The committed manifests' topics: no namespace (``--namespace`` renders another)."""


@dataclass(frozen=True)
class StageIO:
    """Which topics a stage reads and writes besides its own DLQ and changelogs.

    ``inputs`` are consumed in the stage's consumer group (co-partitioned with its changelogs,
    and what KEDA watches for lag); ``tables`` are read whole, outside the group (e.g. the
    verifier's policy table); ``outputs`` are produced in the stage's transactions.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tables: tuple[str, ...] = ()


def stage_io(t: Topics) -> dict[str, StageIO]:
    """Per stage, the topics it reads and writes (from DESIGN.md's pipeline table), named by
    ``t``. Every name is checked against ``t.all_specs()`` in ``check_io``."""
    return {
        "collector": StageIO(
            # The EK registry topics are the collector's own (a repartition step): it writes
            # and reads them, nobody else does. attest.identity.v1 is the operators' only.
            inputs=(t.requests, t.evidence, t.identity, t.ek_bindings, t.ek_grants),
            outputs=(t.challenges, t.collected, t.rejections, t.identity_events,
                     t.ek_bindings, t.ek_grants),
            # The policy in force decides what a challenge asks the host to quote.
            tables=(t.policies,),
        ),
        "verifier": StageIO(inputs=(t.collected,), outputs=(t.verdicts,), tables=(t.policies,)),
        "issuer": StageIO(inputs=(t.verdicts, t.incidents, t.identity_events),
                          outputs=(t.credentials, t.hosts)),
        "incidents": StageIO(inputs=(t.verdicts, t.rejections, t.remediation),
                             outputs=(t.incidents, t.findings)),
    }


STAGE_IO: Final[Mapping[str, StageIO]] = stage_io(Topics())
"""``stage_io`` of a deployment without a namespace (the committed manifests)."""

ClientIO = tuple[tuple[str, ...], tuple[str, ...], str]
"""A principal that is not a stage: (read topics, write topics, consumer-group prefix)."""


def agents_io(t: Topics) -> ClientIO:
    return ((t.challenges, t.credentials), (t.requests, t.evidence), t.name("hostgate.agent."))


def soc_io(t: Topics) -> ClientIO:
    return ((t.incidents, t.findings, t.hosts, t.rejections, t.identity_events),
            (t.remediation,), t.name("hostgate.soc."))


def operator_io(t: Topics) -> ClientIO:
    # identity show reads the collector's enrolment and EK-binding changelogs too.
    return ((t.policies, t.policy_history, *(t.dlq(s) for s in STAGES), t.identity_events,
             t.changelog("collector", "enrollments"), t.changelog("collector", "ek_bindings")),
            (t.policies, t.policy_history, t.identity), t.name("hostgate.operator."))


class GenerateError(Exception):
    """stage_io names a topic or stage that ``services/runtime/topics.py`` does not declare."""


def group_id(stage: str, t: Topics = DEFAULT_TOPICS) -> str:
    """The stage's consumer group (``HOSTGATE_GROUP`` inside the namespace)."""
    return t.group(stage)


def transactional_prefix(stage: str, t: Topics = DEFAULT_TOPICS) -> str:
    """Prefix of the stage's per-partition transactional ids ``<group>.task-<partition>``."""
    return f"{group_id(stage, t)}."


def object_name(name: str, t: Topics = DEFAULT_TOPICS) -> str:
    """A Kubernetes object name of the deployment: ``name``, behind ``<namespace>-`` in a
    namespaced one (KafkaUsers are principals of the one shared cluster; workloads may share a
    Kubernetes namespace too)."""
    return f"{resource_name(t.namespace)}-{name}" if t.namespace else name


def resource_name(topic: str) -> str:
    """A Kubernetes object name for a topic (DNS-1123 subdomain: lowercase, digits, ``-.``)."""
    name = topic.lower().replace("_", "-")
    if not name or len(name) > 253 or not all(c.isalnum() or c in "-." for c in name):
        raise GenerateError(f"topic {topic!r} has no valid Kubernetes resource name")
    return name


def production_topics(t: Topics = DEFAULT_TOPICS) -> tuple[TopicSpec, ...]:
    """Every topic a deployment needs (the product's: ``Topics.all_specs``)."""
    return t.all_specs()


def check_io(specs: Iterable[TopicSpec], t: Topics = DEFAULT_TOPICS) -> None:
    """Fail if stage_io and topics.py disagree (a renamed topic must break generation)."""
    declared = {s.name for s in specs}
    io_of = stage_io(t)
    if set(io_of) != set(STAGES):
        raise GenerateError(
            f"stage_io stages {sorted(io_of)} != topics.STAGES {sorted(STAGES)}")
    named: list[tuple[str, str]] = []
    for stage, io in io_of.items():
        named += [(f"stage_io[{stage!r}]", n) for n in (*io.inputs, *io.outputs, *io.tables)]
    for label, (read, write, _) in (("agents_io", agents_io(t)), ("soc_io", soc_io(t)),
                                    ("operator_io", operator_io(t))):
        named += [(label, n) for n in (*read, *write)]
    missing = sorted({f"{where}: {topic}" for where, topic in named if topic not in declared})
    if missing:
        raise GenerateError("topics not declared in services/runtime/topics.py: "
                            + "; ".join(missing))


# --- KafkaTopic ------------------------------------------------------------------------------


def kafka_topic(spec: TopicSpec, partitions: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {
            "name": resource_name(spec.name),
            "labels": {"strimzi.io/cluster": CLUSTER, "app.kubernetes.io/part-of": "hostgate"},
        },
        "spec": {
            "topicName": spec.name,
            "partitions": spec.partitions or partitions,
            "replicas": replicas,
            "config": spec.configs(replicas),
        },
    }


# --- KafkaUser -------------------------------------------------------------------------------


def _acl(rtype: str, name: str, ops: Sequence[str], pattern: str = "literal") -> dict[str, Any]:
    return {
        "type": "allow",
        "resource": {"type": rtype, "name": name, "patternType": pattern},
        "operations": list(ops),
    }


def _merge_topic_acls(wanted: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """One ACL entry per topic with its operations in a fixed order (stable output)."""
    order = ("Read", "Write", "Describe")
    ops: dict[str, set[str]] = {}
    for topic, op in wanted:
        ops.setdefault(topic, set()).update((op, "Describe"))
    return [_acl("topic", t, [o for o in order if o in ops[t]]) for t in sorted(ops)]


def stage_acls(stage: str, t: Topics = DEFAULT_TOPICS) -> list[dict[str, Any]]:
    """Least privilege for one stage's principal.

    Read (+Describe) on its inputs and tables; Write (+Describe) on its outputs and DLQ; Read and
    Write on its changelogs (written in its transactions, read back to rebuild state); Read on
    its own group (offset commits inside transactions need it); Write+Describe on its
    transactional-id prefix. No cluster IdempotentWrite: since Kafka 3.0 (KIP-679) Write on a
    topic suffices for idempotence, and a transactional producer is authorised by its
    transactional id.
    """
    io = stage_io(t)[stage]
    changelogs = [t.changelog(stage, table) for table in STATE_TABLES.get(stage, ())]
    wanted = [(n, "Read") for n in (*io.inputs, *io.tables, *changelogs)]
    wanted += [(n, "Write") for n in (*io.outputs, t.dlq(stage), *changelogs)]
    return [
        *_merge_topic_acls(wanted),
        _acl("group", group_id(stage, t), ["Read"]),
        _acl("transactionalId", transactional_prefix(stage, t), ["Write", "Describe"],
             "prefix"),
    ]


def client_acls(read: Iterable[str], write: Iterable[str], group_prefix: str
                ) -> list[dict[str, Any]]:
    """A plain (non-transactional, idempotent) client: topics plus its own group prefix."""
    wanted = [(t, "Read") for t in read] + [(t, "Write") for t in write]
    return [*_merge_topic_acls(wanted), _acl("group", group_prefix, ["Read"], "prefix")]


def keda_acls(t: Topics = DEFAULT_TOPICS) -> list[dict[str, Any]]:
    """KEDA only computes lag: Describe on the stages' input topics and groups."""
    inputs = sorted({n for io in stage_io(t).values() for n in io.inputs})
    return [
        *[_acl("topic", n, ["Describe"]) for n in inputs],
        *[_acl("group", group_id(s, t), ["Describe"]) for s in STAGES],
    ]


def kafka_user(name: str, component: str, acls: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaUser",
        "metadata": {
            "name": name,
            "labels": {
                "strimzi.io/cluster": CLUSTER,
                "app.kubernetes.io/part-of": "hostgate",
                "app.kubernetes.io/component": component,
            },
        },
        "spec": {
            "authentication": {"type": "tls"},
            "authorization": {"type": "simple", "acls": acls},
        },
    }


def users(t: Topics = DEFAULT_TOPICS) -> list[dict[str, Any]]:
    def user(name: str, component: str, acls: list[dict[str, Any]]) -> dict[str, Any]:
        return kafka_user(object_name(name, t), component, acls)

    out = [user(f"hostgate-{s}", s, stage_acls(s, t)) for s in STAGES]
    out.append(user("hostgate-agents", "agent", client_acls(*agents_io(t))))
    out.append(user("hostgate-soc", "soc", client_acls(*soc_io(t))))
    out.append(user("hostgate-operator", "operator", client_acls(*operator_io(t))))
    out.append(user("hostgate-keda", "autoscaler", keda_acls(t)))
    return out


# --- Deployment, PodDisruptionBudget, ScaledObject ---------------------------------------------

# (cpu request, cpu limit, memory request, memory limit). The verifier is CPU-bound (signature
# checks, log replay): it gets a whole core. Memory: a batch of ≤ 100 KiB records plus the
# state tables of the pod's partitions; one collector pod holding all partitions of a
# 1,000,000-host fleet keeps ~1.5 GiB of enrolments (deploy/README.md, sizing).
RESOURCES: Final[Mapping[str, tuple[str, str, str, str]]] = {
    "collector": ("500m", "2", "1Gi", "3Gi"),
    "verifier": ("1", "1", "384Mi", "768Mi"),
    "issuer": ("250m", "1", "512Mi", "1Gi"),
    "incidents": ("250m", "1", "256Mi", "512Mi"),
}


def _labels(stage: str, t: Topics = DEFAULT_TOPICS) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "hostgate", "app.kubernetes.io/component": stage}
    if t.namespace:  # two namespaced deployments in one Kubernetes namespace select apart
        labels["app.kubernetes.io/instance"] = resource_name(t.namespace)
    return labels


def _secret_volume(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret, "defaultMode": 0o440}}


def _stage_mounts(stage: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                       list[dict[str, Any]]]:
    """(env, volumes, volumeMounts) that only one stage has."""
    if stage == "collector":
        return (
            [{"name": "HOSTGATE_EK_CA_DIR", "value": "/etc/hostgate/ek-ca"},
             # Challenges ask for this policy's coverage (the verifier's policy in force).
             {"name": "HOSTGATE_POLICY_ID", "value": POLICY_ID}],
            [{"name": "ek-ca", "configMap": {"name": "hostgate-ek-ca", "defaultMode": 0o444}}],
            [{"name": "ek-ca", "mountPath": "/etc/hostgate/ek-ca", "readOnly": True}],
        )
    if stage == "verifier":
        # The policy id in force; its versions are published to attest.policies.v1.
        return [{"name": "HOSTGATE_POLICY_ID", "value": POLICY_ID}], [], []
    if stage == "issuer":
        return (
            [
                {"name": "HOSTGATE_ISSUER_CA_CERT", "value": "/etc/hostgate/issuer-ca/ca.crt"},
                {"name": "HOSTGATE_ISSUER_CA_KEY", "value": "/etc/hostgate/issuer-ca/ca.key"},
                {"name": "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE",
                 "value": "/etc/hostgate/issuer-ca-passphrase/passphrase"},
                # Issued certificates name where relying parties check revocation.
                {"name": "HOSTGATE_ISSUER_CRL_URL", "value": crl_url()},
            ],
            [
                _secret_volume("issuer-ca", "hostgate-issuer-ca"),
                _secret_volume("issuer-ca-passphrase", "hostgate-issuer-ca-passphrase"),
            ],
            [
                {"name": "issuer-ca", "mountPath": "/etc/hostgate/issuer-ca", "readOnly": True},
                {"name": "issuer-ca-passphrase", "mountPath": "/etc/hostgate/issuer-ca-passphrase",
                 "readOnly": True},
            ],
        )
    return [], [], []


def _namespace_env(t: Topics) -> list[dict[str, str]]:
    """``HOSTGATE_TOPIC_NAMESPACE`` of a namespaced deployment (nothing without one)."""
    return [{"name": NAMESPACE_ENV, "value": t.namespace}] if t.namespace else []


KAFKA_TLS_ENV: Final = (
    {"name": "HOSTGATE_KAFKA_SECURITY_PROTOCOL", "value": "SSL"},
    {"name": "HOSTGATE_KAFKA_SSL_CAFILE", "value": "/etc/hostgate/kafka-ca/ca.crt"},
    {"name": "HOSTGATE_KAFKA_SSL_CERTFILE", "value": "/etc/hostgate/kafka-user/user.crt"},
    {"name": "HOSTGATE_KAFKA_SSL_KEYFILE", "value": "/etc/hostgate/kafka-user/user.key"},
)
"""mTLS to the Strimzi cluster, from the cluster CA and the pod's KafkaUser secrets."""
KAFKA_TLS_MOUNTS: Final = (
    {"name": "kafka-ca", "mountPath": "/etc/hostgate/kafka-ca", "readOnly": True},
    {"name": "kafka-user", "mountPath": "/etc/hostgate/kafka-user", "readOnly": True},
)
CONTAINER_SECURITY: Final = {
    "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}
"""Every hostgate container: non-root, read-only root, no privileges or capabilities."""


def _kafka_volumes(user: str) -> list[dict[str, Any]]:
    """The cluster CA and the KafkaUser secret ``user`` behind :data:`KAFKA_TLS_MOUNTS`."""
    return [_secret_volume("kafka-ca", CLUSTER_CA_SECRET), _secret_volume("kafka-user", user)]


def deployment(stage: str, t: Topics = DEFAULT_TOPICS) -> dict[str, Any]:
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[stage]
    extra_env, extra_vols, extra_mounts = _stage_mounts(stage)
    env = [
        {"name": "HOSTGATE_BOOTSTRAP", "value": BOOTSTRAP},
        *_namespace_env(t),
        # inside the namespace: the worker's group is group_id(stage, t)
        {"name": "HOSTGATE_GROUP", "value": group_id(stage)},
        # The server binds 127.0.0.1 unless told otherwise: kubelet probes and Prometheus
        # scrapes come to the pod IP.
        {"name": "HOSTGATE_HTTP_HOST", "value": HTTP_HOST},
        {"name": "HOSTGATE_HTTP_PORT", "value": str(HTTP_PORT)},
        *KAFKA_TLS_ENV,
        *extra_env,
    ]
    probe = {"port": "http", "scheme": "HTTP"}
    container = {
        "name": stage,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": ["run", stage],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": env,
        "startupProbe": {"httpGet": {"path": "/healthz", **probe},
                         "periodSeconds": 5, "failureThreshold": 60},
        "livenessProbe": {"httpGet": {"path": "/healthz", **probe},
                          "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", **probe},
                           "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
        "resources": {"requests": {"cpu": cpu_req, "memory": mem_req},
                      "limits": {"cpu": cpu_lim, "memory": mem_lim}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            *KAFKA_TLS_MOUNTS,
            *extra_mounts,
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": object_name(f"hostgate-{stage}", t), "labels": _labels(stage, t)},
        "spec": {
            # No ``replicas``: KEDA's HPA owns it (see the ScaledObject).
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _labels(stage, t)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": _labels(stage, t),
                    "annotations": {"prometheus.io/scrape": "true",
                                    "prometheus.io/port": str(HTTP_PORT),
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": UID,
                                        "runAsGroup": UID, "fsGroup": UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": _labels(stage, t)},
                    }],
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                        *_kafka_volumes(object_name(f"hostgate-{stage}", t)),
                        *extra_vols,
                    ],
                },
            },
        },
    }


def _fixed_deployment(name: str, labels: dict[str, str], replicas: int,
                      container: dict[str, Any], volumes: list[dict[str, Any]]
                      ) -> dict[str, Any]:
    """A Deployment of ``replicas`` pods that does not scale on lag (no ScaledObject)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def liveness_ticker(t: Topics = DEFAULT_TOPICS) -> dict[str, Any]:
    """One ``hostgate incidents tick`` process (SOC identity): stale-host checks on partitions
    that carry no traffic. A second one is harmless, so a plain single-replica Deployment."""
    labels = _labels("liveness-ticker", t)
    container = {
        "name": "liveness-ticker",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": ["incidents", "tick", "--every", "60"],
        "env": [
            {"name": "HOSTGATE_BOOTSTRAP", "value": BOOTSTRAP},
            *_namespace_env(t),
            *KAFKA_TLS_ENV,
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"},
                      "limits": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            *KAFKA_TLS_MOUNTS,
        ],
    }
    return _fixed_deployment(object_name("hostgate-liveness-ticker", t), labels, 1, container,
                             _kafka_volumes(object_name("hostgate-soc", t)))


CRL_PORT: Final = 8080
CRL_SERVICE: Final = "hostgate-crl"


def crl_url(t: Topics = DEFAULT_TOPICS) -> str:
    """Where relying parties fetch the CRL: the Service in front of ``issuer serve-crl``
    (cluster DNS; put an Ingress in front of it for parties outside the cluster and set
    ``HOSTGATE_ISSUER_CRL_URL`` to that name instead)."""
    return f"http://{object_name(CRL_SERVICE, t)}.{NAMESPACE}.svc/crl"


def crl_server(t: Topics = DEFAULT_TOPICS) -> dict[str, Any]:
    """``hostgate issuer serve-crl``: the signed CRL over HTTP, kept current from the issuer's
    hosts changelog. It signs with the issuer's CA and reads as the issuer's principal (the one
    that may read that changelog); it writes nothing to Kafka."""
    labels = _labels("crl", t)
    env, vols, mounts = _stage_mounts("issuer")
    probe = {"port": "http", "scheme": "HTTP"}
    container = {
        "name": "crl",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": ["issuer", "serve-crl", "--port", str(CRL_PORT),
                 "--listen-address", HTTP_HOST],
        "ports": [{"name": "http", "containerPort": CRL_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "HOSTGATE_BOOTSTRAP", "value": BOOTSTRAP},
            *_namespace_env(t),
            *KAFKA_TLS_ENV,
            *env,
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", **probe},
                          "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/healthz", **probe},
                           "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
        "resources": {"requests": {"cpu": "20m", "memory": "96Mi"},
                      "limits": {"cpu": "250m", "memory": "256Mi"}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            *KAFKA_TLS_MOUNTS,
            *mounts,
        ],
    }
    # Two replicas: stateless, each follows the changelog and signs the same CRL.
    return _fixed_deployment(object_name("hostgate-crl", t), labels, 2, container,
                             [*_kafka_volumes(object_name("hostgate-issuer", t)), *vols])


def crl_service(t: Topics = DEFAULT_TOPICS) -> dict[str, Any]:
    """The Service :func:`crl_url` names: port 80 to the CRL servers' ``http`` port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": object_name(CRL_SERVICE, t), "labels": _labels("crl", t)},
        "spec": {"selector": _labels("crl", t),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http",
                            "protocol": "TCP"}]},
    }


def pod_disruption_budget(stage: str, t: Topics = DEFAULT_TOPICS) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": object_name(f"hostgate-{stage}", t), "labels": _labels(stage, t)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(stage, t)}},
    }


def trigger_authentication(t: Topics = DEFAULT_TOPICS) -> dict[str, Any]:
    """KEDA's TLS client identity: its own KafkaUser (Describe only), never a stage's."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": object_name("hostgate-keda-kafka", t),
                     "labels": {"app.kubernetes.io/part-of": "hostgate"}},
        "spec": {"secretTargetRef": [
            {"parameter": "ca", "name": CLUSTER_CA_SECRET, "key": "ca.crt"},
            {"parameter": "cert", "name": object_name("hostgate-keda", t), "key": "user.crt"},
            {"parameter": "key", "name": object_name("hostgate-keda", t), "key": "user.key"},
        ]},
    }


def scaled_object(stage: str, partitions: int, t: Topics = DEFAULT_TOPICS) -> dict[str, Any]:
    """Scale one stage on its consumer group's lag, one trigger per input topic (the HPA takes
    the largest). Replicas never exceed the partition count (``allowIdleConsumers: "false"``
    and ``maxReplicaCount``); at least one stays up so challenges are answered promptly."""
    triggers = [{
        "type": "kafka",
        "metadata": {
            "bootstrapServers": BOOTSTRAP,
            "consumerGroup": group_id(stage, t),
            "topic": topic,
            "lagThreshold": "200",
            "activationLagThreshold": "1",
            "offsetResetPolicy": "earliest",
            "allowIdleConsumers": "false",
            "version": KEDA_KAFKA_VERSION,
            "tls": "enable",
        },
        "authenticationRef": {"name": object_name("hostgate-keda-kafka", t)},
    } for topic in stage_io(t)[stage].inputs]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": object_name(f"hostgate-{stage}", t), "labels": _labels(stage, t)},
        "spec": {
            "scaleTargetRef": {"name": object_name(f"hostgate-{stage}", t)},
            "minReplicaCount": 1,
            "maxReplicaCount": partitions,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                # Every scale step rebalances the group: grow fast, shrink slowly.
                "scaleUp": {"stabilizationWindowSeconds": 30,
                            "policies": [{"type": "Percent", "value": 100,
                                          "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": 300,
                              "policies": [{"type": "Pods", "value": 1,
                                            "periodSeconds": 120}]},
            }}},
            "triggers": triggers,
        },
    }


# --- monitoring ------------------------------------------------------------------------------


def monitoring_docs(t: Topics = DEFAULT_TOPICS) -> list[dict[str, Any]]:
    """PodMonitor, PrometheusRule and dashboard ConfigMap (``deploy/k8s/monitoring.py``)."""
    selector = {k: v for k, v in _labels(STAGES[0], t).items()
                if k != monitoring.COMPONENT_LABEL}
    labels = {"app.kubernetes.io/part-of": "hostgate", **selector}
    pods = "|".join(object_name(f"hostgate-{stage}", t) for stage in STAGES)
    return [
        monitoring.pod_monitor(object_name("hostgate", t), selector, STAGES, "http", labels),
        monitoring.prometheus_rule(object_name("hostgate", t), labels,
                                   f"({pods})-[a-z0-9]+-[a-z0-9]+",
                                   object_name("hostgate-liveness-ticker", t),
                                   selector.get(monitoring.INSTANCE_LABEL, "")),
        monitoring.dashboard_config_map(object_name("hostgate-grafana-dashboard", t), labels),
    ]


# --- rendering -------------------------------------------------------------------------------

HEADER: Final = (
    "# GENERATED by deploy/k8s/generate.py from services/runtime/topics.py - do not edit.\n"
    "# Regenerate with: python deploy/k8s/generate.py\n"
)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the dashboard JSON) as literal blocks, readable in a diff."""


def _str_block(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                   style="|" if "\n" in data else None)


_BlockDumper.add_representer(str, _str_block)


def dump_all(docs: Iterable[Mapping[str, Any]]) -> str:
    body = yaml.dump_all(list(docs), Dumper=_BlockDumper, sort_keys=False,
                         default_flow_style=False, width=100, explicit_start=True)
    return HEADER + body


def render(partitions: int = DEFAULT_PARTITIONS, replicas: int = REPLICAS,
           namespace: str = "") -> dict[str, str]:
    """File name (relative to ``deploy/k8s/generated``) -> YAML text. ``namespace``: a
    deployment under ``HOSTGATE_TOPIC_NAMESPACE`` (every topic, ACL, group and
    transactional-id prefix ``<ns>.<name>``, object names ``<ns>-<name>``)."""
    t = Topics(namespace)
    specs = production_topics(t)
    check_io(specs, t)
    stage_docs: list[dict[str, Any]] = [trigger_authentication(t)]
    for stage in STAGES:
        stage_docs += [deployment(stage, t), pod_disruption_budget(stage, t),
                       scaled_object(stage, partitions, t)]
    stage_docs += [liveness_ticker(t), crl_server(t), crl_service(t)]
    return {
        "topics.yaml": dump_all(kafka_topic(s, partitions, replicas) for s in specs),
        "users.yaml": dump_all(users(t)),
        "stages.yaml": dump_all(stage_docs),
        "monitoring.yaml": dump_all(monitoring_docs(t)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate deploy/k8s/generated/*.yaml from services/runtime/topics.py.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a committed file differs")
    parser.add_argument("--namespace", default="", metavar="NS",
                        help="render a deployment under HOSTGATE_TOPIC_NAMESPACE=NS (needs --out)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write (default deploy/k8s/generated, the committed files)")
    args = parser.parse_args(argv)
    if args.namespace and args.out is None:
        parser.error("--namespace needs --out: deploy/k8s/generated holds the un-namespaced files")
    out_dir: Path = args.out or OUT_DIR
    try:
        files = render(namespace=args.namespace)
    except (GenerateError, ConfigError) as exc:
        print(f"generate.py: {exc}", file=sys.stderr)
        return 2
    stale = [name for name, text in files.items()
             if not (out_dir / name).is_file() or (out_dir / name).read_text() != text]
    if args.check:
        for name in stale:
            print(f"stale: {out_dir / name} (run python deploy/k8s/generate.py)",
                  file=sys.stderr)
        return 1 if stale else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out_dir / name).write_text(files[name])
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
