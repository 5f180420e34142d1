"""The local broker's life cycle, run as a user would: through the ``hostgate kafka`` CLI.

Uses its own HOSTGATE_HOME and port so it never disturbs the suite's shared broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.errors import ExitCode

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port > 65000:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def hostgate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture()
def broker_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, HOSTGATE_HOME=str(tmp_path / "home"),
               HOSTGATE_KAFKA_PORT=str(_free_port_pair()), HOSTGATE_KAFKA_HEAP="-Xmx384m")
    yield env
    hostgate(env, "kafka", "down")


def _status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    proc = hostgate(env, "kafka", "status", "--json")
    return proc.returncode, json.loads(proc.stdout)


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _consume_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        return [rec.value for recs in batch.values() for rec in recs if rec.value is not None]
    finally:
        await consumer.stop()


def test_up_down_up_keeps_data_and_status_tells_the_truth(broker_env: dict[str, str]) -> None:
    rc, st = _status(broker_env)
    assert rc == 1 and st["state"] == "not-fetched"

    up = hostgate(broker_env, "kafka", "up")
    assert up.returncode == 0, up.stderr
    rc, st = _status(broker_env)
    assert rc == 0 and st["state"] == "running" and st["ready"] is True
    pid = st["pid"]
    assert isinstance(pid, int) and Path(f"/proc/{pid}").exists()
    bootstrap = str(st["bootstrap"])

    asyncio.run(_produce(bootstrap, "lifecycle.v1", b"survives restarts"))

    down = hostgate(broker_env, "kafka", "down")
    assert down.returncode == 0, down.stderr
    rc, st = _status(broker_env)
    assert rc == 1 and st["state"] == "stopped"
    assert not Path(f"/proc/{pid}/cmdline").exists() or b"kafka.Kafka" not in Path(
        f"/proc/{pid}/cmdline").read_bytes()

    again = hostgate(broker_env, "kafka", "up")
    assert again.returncode == 0, again.stderr
    assert "formatting" not in again.stderr  # storage is formatted once
    assert asyncio.run(_consume_all(bootstrap, "lifecycle.v1")) == [b"survives restarts"]

    # `up` on a running broker is a no-op that reports it.
    twice = hostgate(broker_env, "kafka", "up")
    assert twice.returncode == 0 and "running" in twice.stdout


def test_port_taken_is_a_clear_error(broker_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(broker_env["HOSTGATE_KAFKA_PORT"])))
        squatter.listen()
        proc = hostgate(broker_env, "kafka", "up")
    assert proc.returncode == ExitCode.ERROR
    assert f"port {broker_env['HOSTGATE_KAFKA_PORT']}" in proc.stderr
    assert "HOSTGATE_KAFKA_PORT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stale_data_directory_from_another_cluster(broker_env: dict[str, str]) -> None:
    assert hostgate(broker_env, "kafka", "up").returncode == 0
    assert hostgate(broker_env, "kafka", "down").returncode == 0
    home = Path(broker_env["HOSTGATE_HOME"]) / "kafka"
    (home / "cluster-id").write_text("AAAAAAAAAAAAAAAAAAAAAA\n")
    proc = hostgate(broker_env, "kafka", "up")
    assert proc.returncode == ExitCode.ERROR
    assert "belongs to another cluster" in proc.stderr and "hostgate kafka reset" in proc.stderr
    # The fix it names works.
    assert hostgate(broker_env, "kafka", "reset").returncode == 0
    assert hostgate(broker_env, "kafka", "up").returncode == 0


def test_cluster_id_starting_with_a_dash_is_formatted(broker_env: dict[str, str]) -> None:
    # 1 in 64 random cluster ids starts with "-"; kafka-storage read this one, passed as
    # "-t ID", as an option and refused to format (seen on a fresh CI machine).
    home = Path(broker_env["HOSTGATE_HOME"]) / "kafka"
    home.mkdir(parents=True)
    (home / "cluster-id").write_text("--T2YbZcQHqZO5KzkfdUjg\n")
    up = hostgate(broker_env, "kafka", "up")
    assert up.returncode == 0, up.stderr
    meta = (home / "data" / "meta.properties").read_text()
    assert "cluster.id=--T2YbZcQHqZO5KzkfdUjg" in meta


def test_new_cluster_ids_never_start_with_a_dash() -> None:
    from services.runtime.localbroker import _kafka_uuid

    ids = [_kafka_uuid() for _ in range(5000)]  # about 78 would start with "-" otherwise
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)


def test_missing_java_and_maven_name_the_fix(broker_env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = dict(broker_env, PATH=str(empty))
    proc = hostgate(env, "kafka", "up")
    assert proc.returncode == ExitCode.ERROR
    assert "Java is not installed" in proc.stderr and "apt-get install" in proc.stderr

    java = subprocess.run(["sh", "-c", "command -v java"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (empty / "java").symlink_to(java)
    proc = hostgate(env, "kafka", "fetch")
    assert proc.returncode == ExitCode.ERROR
    assert "Maven is not installed" in proc.stderr
