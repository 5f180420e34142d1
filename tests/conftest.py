"""Fixtures shared by every test area.

The real broker is started by ``make test`` (scripts/run-tests.sh), which exports
``HOSTGATE_BOOTSTRAP``. Tests that need it take the ``kafka_bootstrap`` fixture; when the broker is
not reachable they fail with the fix, never skip silently.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.support.softhsm"]  # the session's one SoftHSM2 token directory


def corpus_path() -> Path:
    """The real event-log corpus: ``HOSTGATE_CORPUS`` or ``../shared/corpus`` beside the repo."""
    raw = os.environ.get("HOSTGATE_CORPUS", "../shared/corpus")
    path = Path(raw)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def corpus_manifest() -> dict[str, str]:
    """Entry id -> file of every log in the corpus. A missing corpus fails the test that asks
    (never a skip: a test that did not run must not read as passed)."""
    path = corpus_path()
    manifest = path / "manifest.json"
    if not manifest.is_file():
        pytest.fail(f"event-log corpus not found at {path} (set HOSTGATE_CORPUS)")
    return {e["id"]: e["file"] for e in json.loads(manifest.read_text())["entries"]}


def corpus_log(entry_id: str) -> bytes:
    """The bytes of corpus entry ``entry_id``."""
    return (corpus_path() / corpus_manifest()[entry_id]).read_bytes()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    path = corpus_path()
    if not (path / "manifest.json").is_file():
        pytest.fail(f"event-log corpus not found at {path} (set HOSTGATE_CORPUS)")
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("HOSTGATE_BOOTSTRAP", "127.0.0.1:19092")
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    except OSError as exc:
        pytest.fail(
            f"no Kafka broker at {bootstrap} ({exc}); run the suite with `make test`, "
            "or start one with `hostgate kafka up`"
        )
    return bootstrap


CLUSTER_BASE_PORT = 29092
"""Node 1 of the test cluster; node i uses 29092 + 2(i-1) and the port above (29092-29097)."""


def _cluster_base_port() -> int:
    """29092 if 29092-29097 are free, else the first free run of six ports above it."""
    for base in range(CLUSTER_BASE_PORT, CLUSTER_BASE_PORT + 600, 10):
        free = True
        for port in range(base, base + 6):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    pytest.fail("no six free loopback ports for the test cluster above 29092")


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real three-node KRaft cluster (``hostgate kafka up --brokers 3``) with its own
    HOSTGATE_HOME under tmp and its own ports, never the suite's broker; stopped at the end.
    Yields its ``localcluster.ClusterConfig`` (``.bootstrap``, ``.nodes``). The jars are copied
    from the suite's HOSTGATE_HOME when it has them (else fetched from Maven as by ``up``)."""
    import shutil
    import subprocess
    import sys

    from services.runtime import localcluster
    from services.runtime.localbroker import BrokerConfig, jars_present

    home = tmp_path_factory.mktemp("cluster-home")
    shared = BrokerConfig.from_env()
    if jars_present(shared):
        shutil.copytree(shared.paths.lib, home / "kafka" / "lib")
    env = dict(os.environ, HOSTGATE_HOME=str(home), HOSTGATE_KAFKA_PORT=str(_cluster_base_port()))
    env.pop("HOSTGATE_KAFKA_HEAP", None)

    def hostgate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", "kafka", *args], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                              check=False)

    up = hostgate("up", "--brokers", "3")
    if up.returncode != 0:
        hostgate("down")
        pytest.fail(f"the test cluster did not start:\n{up.stdout}\n{up.stderr}")
    cfg = localcluster.from_home(env)
    assert cfg is not None
    cfg_env = {"HOSTGATE_HOME": str(home), "HOSTGATE_KAFKA_PORT": env["HOSTGATE_KAFKA_PORT"]}
    yield ClusterHandle(cfg, cfg_env, hostgate)
    down = hostgate("down")
    assert down.returncode == 0, down.stderr
    assert all(localcluster.node_pid(cfg, n) is None for n in cfg.nodes)


class ClusterHandle:
    """What the ``kafka_cluster`` fixture yields: the cluster's config, the environment that
    points ``hostgate`` at it, and ``hostgate kafka ...`` run with that environment."""

    def __init__(self, cfg: Any, env: dict[str, str], cli: Any) -> None:
        self.cfg = cfg
        self.env = env
        self.cli = cli

    @property
    def bootstrap(self) -> str:
        return str(self.cfg.bootstrap)
