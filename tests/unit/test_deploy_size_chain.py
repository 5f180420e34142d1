"""Issue 18, first two findings, checked offline on the manifests as written: every stage's
health and metrics server is reachable where kubelet, Prometheus and compose look for it, and
no link of the size chain refuses an evidence record the link before it let through
(``services/runtime/record_size.py``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.collector.config import IntakeLimits
from services.runtime import record_size as size
from services.runtime.topics import Topics
from services.runtime.worker import LARGE_RECORD_PRODUCER

DEPLOY = Path(__file__).parents[2] / "deploy"
STAGES = ("collector", "verifier", "issuer", "incidents")


def _k8s(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text()))


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"].removeprefix("hostgate-"): d
            for d in _k8s("generated/stages.yaml") if d["kind"] == "Deployment"}


# -- health and metrics: bind address, probes, scrapes ----------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_k8s_probes_and_scrapes_reach_the_server(stage: str) -> None:
    deployment = _deployments()[stage]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOSTGATE_HTTP_HOST"] == "0.0.0.0"  # the pod IP, not loopback
    port = int(env["HOSTGATE_HTTP_PORT"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        target = container[probe]["httpGet"]["port"]
        assert named.get(target, target) == port, probe
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("stage", STAGES)
def test_compose_stages_bind_every_address_and_check_their_port(stage: str) -> None:
    service = _compose()["services"][stage]
    env = service["environment"]
    assert env["HOSTGATE_HTTP_HOST"] == "0.0.0.0"
    url = re.search(r"http://([\d.]+):(\d+)/readyz", " ".join(service["healthcheck"]["test"]))
    assert url is not None and int(url.group(2)) == int(env["HOSTGATE_HTTP_PORT"])


# -- the size chain ---------------------------------------------------------------------------

def test_the_chain_in_the_code() -> None:
    intake = IntakeLimits()
    evidence = intake.max_ima_bytes + intake.max_boot_log_bytes
    assert (intake.max_ima_bytes, intake.max_boot_log_bytes) == (size.MAX_IMA_LIST_BYTES,
                                                                  size.MAX_BOOT_LOG_BYTES)
    assert evidence < size.MAX_RECORD_BYTES <= size.PRODUCER_MAX_REQUEST_BYTES
    assert LARGE_RECORD_PRODUCER["max_request_size"] == size.PRODUCER_MAX_REQUEST_BYTES
    assert size.PRODUCER_MAX_REQUEST_BYTES <= size.TOPIC_MAX_MESSAGE_BYTES
    assert size.TOPIC_MAX_MESSAGE_BYTES <= size.BROKER_MESSAGE_MAX_BYTES
    assert size.BROKER_MESSAGE_MAX_BYTES <= size.REPLICA_FETCH_MAX_BYTES
    assert size.BROKER_MESSAGE_MAX_BYTES <= size.CONSUMER_PARTITION_FETCH_BYTES


def test_agent_producer_takes_the_largest_evidence() -> None:
    source = (Path(__file__).parents[2] / "services" / "agent" / "client.py").read_text()
    assert "max_request_size=PRODUCER_MAX_REQUEST_BYTES" in source
    assert "compression_type=PRODUCER_COMPRESSION" in source


def test_aiokafka_can_compress_as_configured() -> None:
    from aiokafka.codec import has_zstd

    assert size.PRODUCER_COMPRESSION == "zstd" and has_zstd()


def _large_topics() -> set[str]:
    t = Topics()
    return {t.evidence, t.collected}


def test_topic_specs_raise_the_limit_for_large_records() -> None:
    specs = {s.name: s.configs(3) for s in Topics().all_specs()}
    for name in _large_topics():
        assert int(specs[name]["max.message.bytes"]) == size.TOPIC_MAX_MESSAGE_BYTES


def test_generated_kafka_topics_carry_the_limit() -> None:
    topics = {d["metadata"]["name"]: d["spec"]["config"] for d in _k8s("generated/topics.yaml")
              if d["kind"] == "KafkaTopic"}
    by_topic_name = {d.get("topicName", n): d for n, d in topics.items()}
    for name in _large_topics():
        config = by_topic_name.get(name) or topics[name]
        assert int(config["max.message.bytes"]) == size.TOPIC_MAX_MESSAGE_BYTES


def _assert_broker(message_max: Any, replica_fetch: Any, where: str) -> None:
    assert int(message_max) >= size.TOPIC_MAX_MESSAGE_BYTES, where
    assert int(replica_fetch) >= int(message_max), where


def test_strimzi_broker_limits() -> None:
    (kafka,) = [d for d in _k8s("kafka.yaml") if d["kind"] == "Kafka"]
    config = kafka["spec"]["kafka"]["config"]
    _assert_broker(config["message.max.bytes"], config["replica.fetch.max.bytes"], "kafka.yaml")


def test_compose_broker_limits() -> None:
    for name, service in _compose()["services"].items():
        if name.startswith("kafka-"):
            env = service["environment"]
            _assert_broker(env["KAFKA_MESSAGE_MAX_BYTES"], env["KAFKA_REPLICA_FETCH_MAX_BYTES"],
                           name)


def test_local_broker_limits() -> None:
    text = (DEPLOY / "local" / "server.properties.in").read_text()
    props = dict(line.split("=", 1) for line in text.splitlines()
                 if line and not line.startswith("#"))
    _assert_broker(props["message.max.bytes"], props["replica.fetch.max.bytes"], "local")
