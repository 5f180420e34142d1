"""The Prometheus Operator objects and the Grafana dashboard ConfigMap of one deployment.

Rendered by ``deploy/k8s/generate.py`` into ``generated/monitoring.yaml``:

``PodMonitor`` (``monitoring.coreos.com/v1``)
    scrapes ``/metrics`` on the ``http`` port of the four stage pods (``STAGES``; the CRL
    server and the liveness ticker export no metrics). ``jobLabel`` makes ``job="hostgate"``;
    ``podTargetLabels`` copies the pod's component label onto every series, so ``up`` names the
    stage of a pod that cannot be scraped.
``PrometheusRule``
    the alerts of :func:`alert_rules`. Every ``hostgate_*`` series they read is declared in
    ``services/runtime/metrics.py`` or ``services/runtime/worker.py`` (checked by
    ``tests/unit/test_deploy_monitoring.py``); ``EXTERNAL_METRICS`` lists the few that come
    from Prometheus itself or kube-state-metrics.
``ConfigMap`` labelled ``grafana_dashboard: "1"``
    ``deploy/grafana/hostgate.json``, byte for byte, for the Grafana dashboard sidecar.

Pure: the functions build dictionaries; ``generate.py`` dumps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

DASHBOARD: Final = Path(__file__).resolve().parents[1] / "grafana" / "hostgate.json"
"""The dashboard JSON, edited by hand (import it into Grafana directly, or through the
ConfigMap)."""
JOB: Final = "hostgate"
"""The ``job`` label of every scraped series: the pods' ``app.kubernetes.io/name``."""
JOB_LABEL: Final = "app.kubernetes.io/name"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
COMPONENT_TARGET_LABEL: Final = "app_kubernetes_io_component"
"""``podTargetLabels`` turns a pod label into a target label with ``.``, ``/`` and ``-`` made
``_`` (Prometheus' ``labelmap`` of ``__meta_kubernetes_pod_label_*``)."""
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
INSTANCE_TARGET_LABEL: Final = "app_kubernetes_io_instance"
SCRAPE_INTERVAL: Final = "30s"

EXTERNAL_METRICS: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    # name -> (who exports it, its labels)
    "up": ("Prometheus (one per scrape target)", frozenset()),
    "kube_pod_status_ready": ("kube-state-metrics",
                              frozenset({"namespace", "pod", "uid", "condition"})),
    "kube_deployment_status_replicas_available": ("kube-state-metrics",
                                                  frozenset({"namespace", "deployment"})),
}
"""Series the rules or the dashboard read that hostgate does not export itself."""

LAG_RECORDS: Final = 10_000
"""Records behind on one input topic of one stage (all partitions) before ``HostgateLagHigh``:
at KEDA's ``lagThreshold`` of 200 per replica that is the lag of 50 busy replicas, more than
any stage gets (``maxReplicaCount`` = partitions = 48)."""
LAG_GROWTH_RECORDS: Final = 1_000
"""Growth over 30 minutes, sustained for 30 more, before ``HostgateLagGrowing``."""
FAILED_VERDICT_RATIO: Final = 0.05
"""Share of the verifier's verdicts that are not ``PASS`` before ``HostgateVerdictsFailing``
(a single FAIL is the SOC's business: the incidents stage opens an incident for it)."""
TXN_WAIT_S: Final = 60
"""A transaction waiting this long for the brokers: no quorum or a fenced coordinator."""


def _lag(by: str, j: str) -> str:
    """Lag per ``by``: each partition counted once (after a rebalance the previous owner may
    still export its last value for a partition, so take the larger, never the sum)."""
    return (f"sum by ({by}) (max by (namespace, stage, topic, partition) "
            f"(hostgate_consumer_lag{{{j}}}))")


def _alert(name: str, expr: str, for_: str, severity: str, summary: str,
           description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def alert_rules(stage_pod_regex: str, ticker_deployment: str,
                instance: str = "") -> list[dict[str, Any]]:
    """The alert rules. ``stage_pod_regex`` matches the stage pods' names (kube-state-metrics
    knows pods by name only), ``ticker_deployment`` is the liveness ticker's Deployment;
    ``instance``: the ``app.kubernetes.io/instance`` of a namespaced deployment, so its rules
    read its own pods only."""
    j = f'job="{JOB}"' + (f', {INSTANCE_TARGET_LABEL}="{instance}"' if instance else "")
    growth = (f"sum by (namespace, stage, topic) (max by (namespace, stage, topic, partition) "
              f"(delta(hostgate_consumer_lag{{{j}}}[30m])))")
    verdicts = f'hostgate_decisions_total{{{j}, stage="verifier"}}'
    failed = f'hostgate_decisions_total{{{j}, stage="verifier", outcome!="PASS"}}'
    return [
        _alert("HostgateLagHigh", f"{_lag('namespace, stage, topic', j)} > {LAG_RECORDS}", "15m",
               "warning", "{{ $labels.stage }} is {{ $value }} records behind on "
               "{{ $labels.topic }}",
               "The stage's consumer group has been more than "
               f"{LAG_RECORDS} records behind on this input for 15 minutes; KEDA should "
               "have scaled it out. Check hostgate_batch_seconds and the pods' CPU limits."),
        _alert("HostgateLagGrowing", f"{growth} > {LAG_GROWTH_RECORDS}", "30m", "warning",
               "{{ $labels.stage }} keeps falling behind on {{ $labels.topic }}",
               f"Lag grew by more than {LAG_GROWTH_RECORDS} records in every 30-minute window "
               "for 30 minutes: the stage consumes slower than its input arrives."),
        _alert("HostgateDeadLetters",
               f"sum by (namespace, stage, reason) "
               f"(increase(hostgate_dlq_records_total{{{j}}}[10m])) > 0", "", "warning",
               "{{ $labels.stage }} dead-lettered records ({{ $labels.reason }})",
               "Records went to the stage's DLQ topic (<stage>.dlq.v1) in the last 10 "
               "minutes; their hostgate.dlq.* headers name the reason and the original "
               "coordinates."),
        _alert("HostgateInternalErrors",
               f"sum by (namespace, stage, error) "
               f"(increase(hostgate_internal_errors_total{{{j}}}[10m])) > 0", "", "critical",
               "{{ $labels.stage }} hit a bug: {{ $labels.error }}",
               "A decision raised an unexpected exception (services.runtime.faults): the "
               "record was dead-lettered and the host was not blamed. File a bug with the DLQ "
               "record."),
        _alert("HostgateVerdictsFailing",
               f"sum by (namespace) (rate({failed}[15m])) / "
               f"sum by (namespace) (rate({verdicts}[15m])) > {FAILED_VERDICT_RATIO}",
               "15m", "warning",
               "{{ $value | humanizePercentage }} of verdicts are not PASS",
               "More than 5% of the verifier's verdicts failed for 15 minutes: a fleet-wide "
               "cause (a firmware or kernel roll-out, a policy version) rather than one host. "
               "The reasons are in the verdicts and the incidents' findings."),
        _alert("HostgateTransactionStuck",
               f"max by (namespace, stage, partition) "
               f"(hostgate_transaction_waiting_seconds{{{j}}}) > {TXN_WAIT_S}", "2m", "critical",
               "{{ $labels.stage }} task {{ $labels.partition }} cannot commit",
               "A transaction has waited for the brokers for over a minute: too few in-sync "
               "replicas or an unavailable transaction coordinator."),
        _alert("HostgateRetriedTransactions",
               f"sum by (namespace, stage, kind) (rate(hostgate_errors_total{{{j}}}[10m])) "
               "> 0.1", "15m", "warning",
               "{{ $labels.stage }} retries transactions ({{ $labels.kind }})",
               "Transactions keep failing and being retried; the stage makes no progress on "
               "the affected partitions."),
        _alert("HostgateMisroutedRecords",
               f"sum by (namespace, stage, topic) "
               f"(increase(hostgate_misrouted_records_total{{{j}}}[10m])) > 0", "", "warning",
               "{{ $labels.stage }} got records on the wrong partition of {{ $labels.topic }}",
               "A producer does not partition by host id (docs/design/identity.md)."),
        _alert("HostgateWorkerDown", f"up{{{j}}} == 0", "5m", "critical",
               "{{ $labels.pod }} cannot be scraped",
               "Prometheus has not reached the pod's /metrics for 5 minutes."),
        _alert("HostgateWorkerNotReady",
               f'kube_pod_status_ready{{condition="false", pod=~"{stage_pod_regex}"}} == 1',
               "10m", "warning", "{{ $labels.pod }} has not been ready for 10 minutes",
               "/readyz fails until every assigned task's changelog is restored; a pod that "
               "stays unready is stuck restoring or cannot reach the brokers. Needs "
               "kube-state-metrics."),
        _alert("HostgateStaleHostCheckDown",
               f'kube_deployment_status_replicas_available{{deployment="{ticker_deployment}"}}'
               " < 1", "10m", "warning", "the liveness ticker is not running",
               "Without `hostgate incidents tick` stale hosts are reported only when traffic "
               "reaches their partition. (hostgate exports no stale-host count; stale hosts "
               "themselves are OCSF findings on soc.findings.ocsf.v1.) Needs "
               "kube-state-metrics."),
    ]


def pod_monitor(name: str, selector: Mapping[str, str], stages: Sequence[str], port: str,
                labels: Mapping[str, str]) -> dict[str, Any]:
    """Scrape ``/metrics`` on ``port`` of the pods with ``selector`` whose component is one of
    ``stages``."""
    target_labels = [COMPONENT_LABEL, *(k for k in selector if k not in (JOB_LABEL,))]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "jobLabel": JOB_LABEL,
            "podTargetLabels": list(dict.fromkeys(target_labels)),
            "selector": {
                "matchLabels": dict(selector),
                "matchExpressions": [{"key": COMPONENT_LABEL, "operator": "In",
                                      "values": list(stages)}],
            },
            "podMetricsEndpoints": [{"port": port, "path": "/metrics", "scheme": "http",
                                     "interval": SCRAPE_INTERVAL}],
        },
    }


def prometheus_rule(name: str, labels: Mapping[str, str], stage_pod_regex: str,
                    ticker_deployment: str, instance: str = "") -> dict[str, Any]:
    """The alerts of :func:`alert_rules` in one group."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"groups": [{"name": "hostgate", "rules": alert_rules(
            stage_pod_regex, ticker_deployment, instance)}]},
    }


def dashboard_config_map(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The dashboard for Grafana's sidecar (it loads ConfigMaps labelled
    ``grafana_dashboard``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {**labels, "grafana_dashboard": "1"}},
        "data": {DASHBOARD.name: DASHBOARD.read_text()},
    }
