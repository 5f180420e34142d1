"""The PodMonitor, alert rules and Grafana dashboard read only metrics and labels that exist.

No Prometheus here and no ``promtool``: the PromQL is read by a small extractor below (metric
selectors, their label matchers, ``by``/``without``/``on``/``ignoring`` labels, functions), and
the metric names are those prometheus_client really exposes for the metrics declared in
``services/runtime/metrics.py`` and ``services/runtime/worker.py`` (declared in a scratch
registry, so the ``_total``/``_bucket``/``_count`` suffix rules are the library's own). The
structure of the PodMonitor and PrometheusRule is checked against a schema of our own in
``test_deploy_manifests.py`` (no Prometheus Operator CRD is available offline).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
GENERATED = K8S / "generated"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "hostgate.json"
METRIC_SOURCES = (REPO_ROOT / "services" / "runtime" / "metrics.py",
                  REPO_ROOT / "services" / "runtime" / "worker.py")
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint"})
"""Labels the Prometheus Operator's PodMonitor scrape config puts on every series."""

Doc = dict[str, Any]
KINDS = {"Counter": Counter, "Gauge": Gauge, "Histogram": Histogram, "Summary": Summary}


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hostgate_deploy_generate_mon",
                                                  K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _docs(name: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((GENERATED / name).read_text()) if d]


def _one(kind: str) -> Doc:
    (doc,) = [d for d in _docs("monitoring.yaml") if d["kind"] == kind]
    return doc


# --- what the code exports -----------------------------------------------------------------------


def declared_metrics(path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``name -> (kind, labelnames)`` of every ``Counter/Gauge/Histogram/Summary("name", doc,
    [labels], ...)`` call in ``path`` (literal arguments only; anything else fails)."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in KINDS):
            continue
        labels_node = node.args[2] if len(node.args) > 2 else next(
            (k.value for k in node.keywords if k.arg == "labelnames"), None)
        name = node.args[0]
        assert isinstance(name, ast.Constant) and isinstance(name.value, str), ast.dump(node)
        assert isinstance(labels_node, ast.List | ast.Tuple), f"{name.value}: labels not literal"
        labels = tuple(ast.literal_eval(labels_node))
        found[name.value] = (node.func.id, labels)
    return found


@functools.cache
def exported() -> dict[str, frozenset[str]]:
    """Series name -> label names, as prometheus_client exposes the declared metrics (one child
    per metric, so every suffixed series shows up)."""
    registry = CollectorRegistry()
    for path in METRIC_SOURCES:
        for name, (kind, labels) in declared_metrics(path).items():
            metric = KINDS[kind](name, "doc", list(labels), registry=registry)
            child = metric.labels(*("x" for _ in labels))
            (child.observe if kind in ("Histogram", "Summary") else
             child.set if kind == "Gauge" else child.inc)(1)
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


def test_the_declarations_read_are_the_registry_of_a_worker() -> None:
    """The AST reading of metrics.py finds exactly what ``WorkerMetrics`` registers."""
    from services.runtime.metrics import WorkerMetrics

    families = {(f.name, f.type) for f in WorkerMetrics("verifier").registry.collect()}
    declared = {(name.removesuffix("_total"), kind.lower())
                for name, (kind, _) in declared_metrics(METRIC_SOURCES[0]).items()}
    assert families == declared
    assert "hostgate_misrouted_records" in declared_metrics(METRIC_SOURCES[1])
    assert {"hostgate_dlq_records_total", "hostgate_batch_seconds_bucket",
            "hostgate_consumer_lag"} <= set(exported())
    assert "le" in exported()["hostgate_batch_seconds_bucket"]


@functools.cache
def target_labels() -> frozenset[str]:
    extra = {re.sub(r"[^a-zA-Z0-9_]", "_", label)
             for label in _one("PodMonitor")["spec"].get("podTargetLabels", [])}
    return TARGET_LABELS | extra


def labels_of(metric: str) -> frozenset[str]:
    """Labels a query may use on ``metric``; fails for a series nobody exports."""
    from deploy.k8s.monitoring import EXTERNAL_METRICS

    if metric in EXTERNAL_METRICS:
        own = EXTERNAL_METRICS[metric][1]
        return own | target_labels() if metric == "up" else own | {"job", "instance"}
    if metric not in exported():
        raise AssertionError(f"no metric {metric!r} is exported (services/runtime/metrics.py, "
                             f"worker.py; known: {sorted(exported())})")
    return exported()[metric] | target_labels()


# --- a small PromQL reader -----------------------------------------------------------------------

FUNCTIONS = frozenset({
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "resets",
    "changes", "abs", "clamp_min", "clamp_max", "histogram_quantile", "absent",
    "absent_over_time", "max_over_time", "min_over_time", "avg_over_time", "sum_over_time",
    "last_over_time", "time", "timestamp", "vector", "scalar", "sort", "sort_desc",
    "label_replace", "label_join", "ceil", "floor", "round",
})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                      "ignoring", "group_left", "group_right"})
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SELECTOR = re.compile(rf"({_NAME})?\s*\{{([^}}]*)\}}")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


class Query:
    """What one PromQL expression reads: ``selectors`` [(metric, [(label, op, value)])] and
    ``grouping`` (labels named in ``by (...)`` and the like)."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.selectors: list[tuple[str, list[tuple[str, str, str]]]] = []
        self.grouping: set[str] = set()
        assert expr.count("(") == expr.count(")"), f"unbalanced parentheses: {expr}"
        text = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries, incl. $__rate_interval
        text = _SELECTOR.sub(self._selector, text)
        text = _GROUPING.sub(self._group, text)
        assert "{" not in text and "}" not in text and '"' not in text, f"unparsed: {text}"
        for match in re.finditer(rf"(?<![0-9.]){_NAME}(\s*\()?", text):
            word, call = match.group(0).rstrip("( "), match.group(1)
            if call:
                assert word in FUNCTIONS, f"unknown function {word!r} in {expr}"
            elif word not in KEYWORDS and not word.startswith("__sel"):
                self.selectors.append((word, []))
        assert self.selectors, f"no metric in {expr}"

    def _selector(self, m: re.Match[str]) -> str:
        name, body = m.group(1), m.group(2)
        assert name, f"selector without a metric name in {self.expr}"
        matchers, pos = [], 0
        while pos < len(body.rstrip()):
            mm = _MATCHER.match(body, pos)
            assert mm, f"cannot read matchers {body!r} in {self.expr}"
            matchers.append((mm.group(1), mm.group(2), mm.group(3)))
            pos = mm.end()
        self.selectors.append((name, matchers))
        return " __sel "

    def _group(self, m: re.Match[str]) -> str:
        self.grouping |= {x.strip() for x in m.group(2).split(",") if x.strip()}
        return " "

    def metrics(self) -> set[str]:
        return {name for name, _ in self.selectors}


def check_query(expr: str) -> Query:
    """Fail unless every metric exists, every matcher's label is one of its metric's, and every
    grouping label is one of each metric the expression reads."""
    from services.runtime.topics import STAGES

    q = Query(expr)
    for metric, matchers in q.selectors:
        have = labels_of(metric)
        for label, op, value in matchers:
            assert label in have, f"{metric} has no label {label!r} ({sorted(have)}): {expr}"
            if label == "stage" and op == "=":
                assert value in STAGES, f"no stage {value!r}: {expr}"
            if label == "job" and op == "=":
                assert value == _one("PodMonitor")["spec"]["selector"]["matchLabels"][
                    _one("PodMonitor")["spec"]["jobLabel"]], f"job {value!r} is not scraped"
    for label in q.grouping:
        for metric in q.metrics():
            assert label in labels_of(metric), f"{metric} has no label {label!r}: {expr}"
    return q


@pytest.mark.parametrize(("expr", "error"), [
    ("rate(hostgate_dlq_records[5m])", "no metric 'hostgate_dlq_records'"),
    ("sum by (host) (hostgate_records_in_total)", "no label 'host'"),
    ('hostgate_decisions_total{verdict="FAIL"}', "no label 'verdict'"),
    ('hostgate_tasks{stage="verfier"}', "no stage 'verfier'"),
    ("hostgate_batch_seconds_bucket{le=\"1\"} + hostgate_batch_seconds", "no metric"),
    ("rat(hostgate_tasks[5m])", "unknown function"),
])
def test_the_reader_catches_what_would_not_exist(expr: str, error: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(error)):
        check_query(expr)


# --- the PodMonitor selects the stage pods and their metrics port -------------------------------


def _matches(selector: Doc, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": present and value in e.get("values", []),
              "NotIn": value not in e.get("values", []),
              "Exists": present, "DoesNotExist": not present}[e["operator"]]
        if not ok:
            return False
    return True


def _deployments(docs: list[Doc]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] == "Deployment")


def _check_pod_monitor(pm: Doc, stages: list[Doc], others: list[Doc]) -> None:
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for dep in stages:
        pod = dep["spec"]["template"]
        assert _matches(pm["spec"]["selector"], pod["metadata"]["labels"]), dep["metadata"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert endpoint["port"] in ports, f"{dep['metadata']['name']}: no port {endpoint['port']}"
        assert str(ports[endpoint["port"]]) == env["HOSTGATE_HTTP_PORT"]
        assert env["HOSTGATE_HTTP_HOST"] == "0.0.0.0"  # the pod IP is scraped
        assert pod["metadata"]["labels"][pm["spec"]["jobLabel"]] == "hostgate"
    for dep in others:
        assert not _matches(pm["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])


def test_pod_monitor_selects_exactly_the_stage_pods_and_their_metrics_port() -> None:
    from services.runtime.topics import STAGES

    deps = list(_deployments(_docs("stages.yaml")))
    stages = [d for d in deps if d["spec"]["template"]["spec"]["containers"][0]["args"][:1]
              == ["run"]]
    assert sorted(d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
                  for d in stages) == sorted(STAGES)
    others = [d for d in deps if d not in stages]
    assert others, "the CRL server and the liveness ticker export no metrics"
    _check_pod_monitor(_one("PodMonitor"), stages, others)


def test_a_namespaced_pod_monitor_selects_only_its_own_pods(gen: ModuleType) -> None:
    files = {n: [d for d in yaml.safe_load_all(t) if d]
             for n, t in gen.render(namespace="blue").items()}
    (pm,) = [d for d in files["monitoring.yaml"] if d["kind"] == "PodMonitor"]
    mine = [d for d in _deployments(files["stages.yaml"])
            if d["spec"]["template"]["spec"]["containers"][0]["args"][:1] == ["run"]]
    plain = list(_deployments(_docs("stages.yaml")))
    _check_pod_monitor(pm, mine, plain)
    (rule,) = [d for d in files["monitoring.yaml"] if d["kind"] == "PrometheusRule"]
    for r in rule["spec"]["groups"][0]["rules"]:
        if "hostgate_" in r["expr"]:
            assert 'app_kubernetes_io_instance="blue"' in r["expr"], r["alert"]


# --- alert rules ---------------------------------------------------------------------------------


def _rules() -> list[Doc]:
    return [r for g in _one("PrometheusRule")["spec"]["groups"] for r in g["rules"]]


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_every_rule_reads_existing_metrics_and_labels(rule: Doc) -> None:
    check_query(rule["expr"])
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    for text in rule["annotations"].values():  # template labels the expression keeps
        for label in re.findall(r"\$labels\.([a-zA-Z_]+)", text):
            q = Query(rule["expr"])
            kept = q.grouping or set().union(*(labels_of(m) for m in q.metrics()))
            assert label in kept, f"{rule['alert']}: $labels.{label} is aggregated away"


def test_the_rules_cover_lag_dlq_verdicts_errors_stale_hosts_and_readiness() -> None:
    used: dict[str, set[str]] = {}
    for rule in _rules():
        for metric in Query(rule["expr"]).metrics():
            used.setdefault(metric, set()).add(rule["alert"])
    for metric in ("hostgate_consumer_lag", "hostgate_dlq_records_total",
                   "hostgate_decisions_total", "hostgate_internal_errors_total",
                   "hostgate_transaction_waiting_seconds", "up", "kube_pod_status_ready",
                   "kube_deployment_status_replicas_available"):
        assert metric in used, f"no alert on {metric}"
    assert len(used["hostgate_consumer_lag"]) >= 2  # above a threshold, and growing


def test_verdict_and_pod_names_in_the_rules_are_real() -> None:
    from deploy.k8s.monitoring import EXTERNAL_METRICS

    core = (REPO_ROOT / "services" / "verifier" / "core.py").read_text()
    assert 'result="PASS" if passed else "FAIL"' in core  # outcome!="PASS" means failed
    deps = {d["metadata"]["name"]: d for d in _deployments(_docs("stages.yaml"))}
    rules = {r["alert"]: r for r in _rules()}
    (regex,) = re.findall(r'pod=~"([^"]+)"', rules["HostgateWorkerNotReady"]["expr"])
    for name in deps:
        pod = f"{name}-7c9d8f6b5-x2k4q"  # <deployment>-<replicaset hash>-<pod suffix>
        assert bool(re.fullmatch(regex, pod)) == (name not in (
            "hostgate-crl", "hostgate-liveness-ticker")), pod
    (ticker,) = re.findall(r'deployment="([^"]+)"', rules["HostgateStaleHostCheckDown"]["expr"])
    assert deps[ticker]["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "incidents", "tick"]
    readme = (REPO_ROOT / "deploy" / "README.md").read_text()
    for metric, (source, _) in EXTERNAL_METRICS.items():
        assert metric in readme and source.split(" ")[0] in readme, metric


# --- the Grafana dashboard -----------------------------------------------------------------------


def _panels(panels: list[Doc]) -> Iterator[Doc]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


@functools.cache
def _dashboard() -> Doc:
    doc: Doc = json.loads(DASHBOARD.read_text())
    return doc


def test_dashboard_ships_in_the_config_map_for_the_grafana_sidecar() -> None:
    cm = _one("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == {"hostgate.json": DASHBOARD.read_text()}


def test_every_dashboard_query_reads_existing_metrics_and_labels() -> None:
    dash = _dashboard()
    panels = [p for p in _panels(dash["panels"]) if p["type"] != "row"]
    assert len({p["id"] for p in panels}) == len(panels)
    read: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            read |= check_query(target["expr"]).metrics()
            for label in re.findall(r"\{\{\s*([a-zA-Z_]+)\s*\}\}", target["legendFormat"]):
                q = Query(target["expr"])
                assert label in q.grouping, f"{panel['title']}: legend {label} not kept"
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_]+)\)", var["query"]["query"])
        assert m, var["name"]
        for metric in check_query(m.group(1)).metrics():
            assert m.group(2) in labels_of(metric), var["name"]
    for metric in ("hostgate_records_in_total", "hostgate_records_out_total",
                   "hostgate_decisions_total", "hostgate_dlq_records_total",
                   "hostgate_internal_errors_total", "hostgate_consumer_lag",
                   "hostgate_batch_seconds_bucket", "up"):
        assert metric in read, f"no panel reads {metric}"
