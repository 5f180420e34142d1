"""Poison records go to the DLQ with their original bytes and the reason; the stage keeps going.

Real broker, real eostest worker process. Also checks /healthz, /readyz and /metrics of
the running worker and that SIGTERM exits 0.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import urllib.request
from pathlib import Path

import pytest

from services.runtime import dlq
from services.runtime.codec import Codec
from tests.integration import runtime_support as rs
from tests.support.eostest import INPUT_SUBJECT, eostest_codec

pytestmark = [pytest.mark.kafka]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _poison(codec: Codec) -> dict[str, tuple[bytes, bytes, list[tuple[str, bytes]], str, str]]:
    """name -> (key, value, original headers, expected reason, expected exception class)."""
    good = codec.encode(INPUT_SUBJECT, {"key": "host-trunc", "seq": 123456789})
    return {
        # 0x9e is neither a single-object (c3 01) nor a Confluent (00) first byte.
        "random": (b"host-rand", bytes.fromhex("9e5c11d07a4f00ff13") * 3,
                   [("trace", b"abc")], dlq.REASON_DECODE, "MalformedRecord"),
        # Confluent framing, schema id 999999 is in no registry.json.
        "unknown-id": (b"host-unk", b"\x00" + struct.pack(">I", 999_999) + b"\x02\x02",
                       [], dlq.REASON_DECODE, "UnknownSchema"),
        # A valid TestInput cut inside its zig-zag varint `seq`.
        "truncated": (b"host-trunc", good[:-2], [], dlq.REASON_DECODE, "MalformedRecord"),
        # A well-formed record, but a TestCounter where only TestInput is expected.
        "wrong-type": (b"host-wrong", codec.encode("hostgate.test.TestCounter",
                                                   {"key": "x", "count": 1}),
                       [], dlq.REASON_DECODE, "UnexpectedRecordType"),
        # Decodes, but the stage raises on it (seq < 0) and has no error policy.
        "stage-error": (b"host-neg", codec.encode(INPUT_SUBJECT, {"key": "host-neg", "seq": -1}),
                        [], dlq.REASON_STAGE_ERROR, "NegativeSequence"),
        # A good value under a key that is not UTF-8.
        "bad-key": (b"\xff\xfe", codec.encode(INPUT_SUBJECT, {"key": "k", "seq": 1}),
                    [], dlq.REASON_DECODE, "UnicodeDecodeError"),
    }


async def test_poison_records_land_in_dlq_and_stage_keeps_going(tmp_path: Path,
                                                            kafka_bootstrap: str) -> None:
    codec = eostest_codec()
    topics = rs.fresh_topics("dlq")
    await rs.create_topics(topics)
    port = _free_port()
    worker = rs.WorkerProcess(topics, "g", tmp_path, "dlq-worker",
                              {"HOSTGATE_HTTP_PORT": str(port), "HOSTGATE_BATCH_MAX_RECORDS": "7"})
    try:
        poison = _poison(codec)
        good = rs.make_inputs(300, 20, seed=7)
        await rs.produce_inputs(topics.input, good[:150], codec)
        await rs.produce_raw(topics.input, [(k, v, h) for k, v, h, _, _ in poison.values()])
        await rs.produce_inputs(topics.input, good[150:], codec)
        worker.start()

        async def drained() -> bool:
            try:
                return await rs.group_lag(worker.group, topics.input) == 0
            except LookupError:
                return False

        await rs.wait_until(drained, 90, "consumer-group lag 0")
        assert worker.alive(), worker.log_text()[-3000:]
        status, _body = await asyncio.to_thread(_get, port, "/healthz")
        assert status == 200
        status, _ = await asyncio.to_thread(_get, port, "/readyz")
        assert status == 200
        status, metrics = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200
        assert 'hostgate_dlq_records_total{reason="decode",stage="eostest"} 5.0' in metrics
        assert 'hostgate_dlq_records_total{reason="stage-error",stage="eostest"} 1.0' in metrics
        assert 'hostgate_records_in_total{stage="eostest"} 306.0' in metrics
        assert 'hostgate_consumer_lag{partition="0",stage="eostest"' in metrics or \
            "hostgate_consumer_lag{" in metrics
        assert (await asyncio.to_thread(_get, port, "/nope"))[0] == 404

        assert worker.terminate() == 0, worker.log_text()[-3000:]

        inputs = await rs.read_committed(topics.input)
        dead = await rs.read_committed(topics.dlq)
        by_value = {r.value: r for r in dead}
        assert len(dead) == len(poison)
        for name, (key, value, headers, reason, exc_class) in poison.items():
            rec = by_value.get(value)
            assert rec is not None, f"{name}: not in the DLQ with its original bytes"
            assert rec.key == key, name
            assert list(rec.headers[: len(headers)]) == headers, f"{name}: original headers lost"
            src = next(r for r in inputs if r.value == value)
            h = rec.headers
            assert dlq.header_value(h, dlq.H_REASON) == reason, name
            assert (dlq.header_value(h, dlq.H_EXC_CLASS) or "").endswith(exc_class), name
            assert dlq.header_value(h, dlq.H_TOPIC) == topics.input
            assert dlq.header_value(h, dlq.H_PARTITION) == str(src.partition)
            assert dlq.header_value(h, dlq.H_OFFSET) == str(src.offset)
            assert dlq.header_value(h, dlq.H_STAGE) == "eostest"
            assert dlq.header_value(h, dlq.H_GROUP) == worker.group
            assert dlq.header_value(h, dlq.H_EXC_MESSAGE)
        assert dlq.header_value(by_value[poison["truncated"][1]].headers,
                                dlq.H_BYTE_OFFSET) is not None

        good_inputs = [r for r in inputs if r.value not in by_value]
        outputs = await rs.read_committed(topics.output)
        rs.check_exactly_once(topics, good_inputs, outputs, codec)
        assert '"worker.stopped"' in worker.log_text()
    finally:
        worker.kill()
        await rs.delete_topics(topics)
