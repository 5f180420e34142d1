"""``WorkerConfig`` parsing, the DLQ header builder and the health endpoint, without a broker."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from services.errors import ConfigError
from services.runtime import dlq
from services.runtime.codec import MalformedRecord
from services.runtime.config import WorkerConfig, add_arguments, load_config, overrides_from_args
from services.runtime.metrics import HealthServer, WorkerMetrics
from services.runtime.stage import Coordinates
from services.runtime.stages import build_stage
from tests.support import eostest


def test_defaults() -> None:
    cfg = load_config("eostest", env={})
    assert cfg.bootstrap == "127.0.0.1:19092" and cfg.group == "hostgate.eostest"
    assert cfg.exactly_once and cfg.http_port == 0 and cfg.instance_id is None
    assert cfg.transactional_id(3) == "hostgate.eostest.task-3"


def test_env_then_flags() -> None:
    env = {"HOSTGATE_BOOTSTRAP": "kafka:9092", "HOSTGATE_GROUP": "g",
           "HOSTGATE_BATCH_MAX_RECORDS": "50", "HOSTGATE_LOG_LEVEL": "DEBUG",
           "HOSTGATE_SCHEMA_DIR": "schemas", "HOSTGATE_HTTP_PORT": ""}
    cfg = load_config("eostest", env=env)
    assert (cfg.bootstrap, cfg.group, cfg.group_id, cfg.batch_max_records, cfg.log_level,
            cfg.schema_dir, cfg.http_port) == ("kafka:9092", "g", "g", 50, "debug",
                                               Path("schemas"), 0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--batch-max-records", "7", "--http-port", "9464"])
    cfg = load_config("eostest", env=env, overrides=overrides_from_args(args))
    assert cfg.batch_max_records == 7 and cfg.http_port == 9464 and cfg.group == "g"


@pytest.mark.parametrize(("env", "message"), [
    ({"HOSTGATE_BATCH_MAX_RECORDS": "many"}, "HOSTGATE_BATCH_MAX_RECORDS='many'"),
    ({"HOSTGATE_BATCH_MAX_RECORDS": "0"}, "batch_max_records"),
    ({"HOSTGATE_TOPIC_NAMESPACE": "a..b"}, "HOSTGATE_TOPIC_NAMESPACE='a..b'"),
    ({"HOSTGATE_ISSUER_TOPIC_PREFIX": "t."}, "set HOSTGATE_TOPIC_NAMESPACE instead"),
    ({"HOSTGATE_BATCH_MAX_MS": "30000"}, "third of txn_timeout_ms"),
    ({"HOSTGATE_HTTP_PORT": "70000"}, "http_port"),
    ({"HOSTGATE_LOG_LEVEL": "loud"}, "log_level"),
])
def test_bad_settings_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config("eostest", env=env)


def test_namespace_moves_the_group_and_the_transactional_ids() -> None:
    cfg = load_config("issuer", env={"HOSTGATE_TOPIC_NAMESPACE": "blue"})
    assert (cfg.group, cfg.group_id) == ("hostgate.issuer", "blue.hostgate.issuer")
    assert cfg.transactional_id(2) == "blue.hostgate.issuer.task-2"
    cfg = load_config("issuer", env={"HOSTGATE_TOPIC_NAMESPACE": "blue", "HOSTGATE_GROUP": "g"})
    assert (cfg.group_id, cfg.transactional_id(0)) == ("blue.g", "blue.g.task-0")


def test_at_least_once_is_a_keyword_for_benchmarks_only() -> None:
    """No environment variable or flag turns transactions off: only ``bench/runtime.py``'s
    baseline builds ``WorkerConfig(exactly_once=False)`` directly."""
    assert load_config("verifier", env={"HOSTGATE_EXACTLY_ONCE": "0"}).exactly_once
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--at-least-once"])
    with pytest.raises(ConfigError, match="unknown worker setting 'exactly_once'"):
        load_config("verifier", env={}, overrides={"exactly_once": False})
    assert not WorkerConfig(stage="eostest", exactly_once=False).exactly_once


def test_unknown_stage() -> None:
    with pytest.raises(ConfigError, match="no stage called 'nope'"):
        build_stage("nope", {})
    with pytest.raises(ConfigError, match=r"known: collector, incidents, issuer, verifier\)"):
        build_stage("eostest", {})
    assert eostest.build_stage({}).input_topics == ("eostest.input.v1",)


def test_dlq_headers_kafka_connect_names_and_truncation() -> None:
    exc = MalformedRecord("x" * 5000, offset=17)
    headers = dlq.dlq_headers((("orig", b"1"),), stage="verifier", group="g",
                              coordinates=Coordinates("t", 4, 99), timestamp_ms=123,
                              failure=dlq.Failure(dlq.REASON_DECODE, exc))
    assert headers[0] == ("orig", b"1")
    got = {k: v.decode() for k, v in headers[1:]}
    assert got["__connect.errors.topic"] == "t"
    assert got["__connect.errors.partition"] == "4"
    assert got["__connect.errors.offset"] == "99"
    assert got["__connect.errors.exception.class.name"] == \
        "services.runtime.codec.MalformedRecord"
    assert len(got["__connect.errors.exception.message"]) == dlq.MAX_MESSAGE_CHARS
    assert got["hostgate.dlq.byte.offset"] == "17"
    assert (got["hostgate.dlq.stage"], got["hostgate.dlq.reason"],
            got["hostgate.dlq.original.timestamp"]) == ("verifier", "decode", "123")
    assert dlq.header_value((*headers, ("hostgate.dlq.reason", b"later")),
                            dlq.H_REASON) == "later"


async def _http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_health_endpoint() -> None:
    metrics = WorkerMetrics("eostest")
    metrics.dlq.labels("eostest", "decode").inc(3)
    ready = {"v": False}
    server = HealthServer(metrics, lambda: ready["v"], lambda: 0.0, stale_after_s=1e12)
    await server.start("127.0.0.1", 0)
    try:
        assert (await _http(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 200")
        assert (await _http(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 503")
        ready["v"] = True
        assert (await _http(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 200")
        body = await _http(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert b'hostgate_dlq_records_total{reason="decode",stage="eostest"} 3.0' in body
        assert (await _http(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 405")
        assert await _http(server.port, b"GET /" + b"a" * 10000 + b"\r\n\r\n") == b""
    finally:
        await server.stop()


def test_decision_labels_come_from_enum_facts_only() -> None:
    from services.runtime.metrics import MAX_LABEL_CHARS, WorkerMetrics, decision_labels

    assert decision_labels("ok", {"outcome": "rejected", "reason": "REPLAYED_NONCE",
                                  "host_id": "h1"}) == ("rejected", "REPLAYED_NONCE")
    assert decision_labels("ok", {"verdict": "FAIL", "verdict_id": "abc"}) == ("FAIL", "")
    assert decision_labels("on-error", {}) == ("on-error", "")
    outcome, _ = decision_labels("ok", {"outcome": "x" * 500})
    assert len(outcome) == MAX_LABEL_CHARS
    m = WorkerMetrics("collector")
    m.decisions.labels("collector", "rejected", "STALE_NONCE").inc()
    assert b'hostgate_decisions_total{outcome="rejected",reason="STALE_NONCE",stage="collector"} 1.0' \
        in m.render()
