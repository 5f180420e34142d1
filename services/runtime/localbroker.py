"""A real single-node Apache Kafka broker for a laptop, the tests and the demo.

KRaft combined mode (one process is broker and controller), assembled from Maven Central jars
with the pom in ``deploy/local/`` — no tarball, no Docker. Everything lives under one directory,
``$HOSTGATE_HOME/kafka`` (``HOSTGATE_HOME`` defaults to ``~/.local/share/hostgate``; the Makefile
points it at ``.hostgate/`` in the checkout)::

    kafka/lib/             the broker's jars (kept across runs; Maven's own cache is ~/.m2)
    kafka/data/            log.dirs: topic data and KRaft metadata, formatted once
    kafka/logs/server.log  the broker's log (kafka.out holds JVM stdout/stderr)
    kafka/server.properties  rendered from deploy/local/server.properties.in
    kafka/kafka.pid        the PID of the broker this tool started

The broker is stopped by its own PID only after checking that the PID is still that broker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.errors import ConfigError, HostgateError

KAFKA_VERSION = "4.3.1"
DEFAULT_PORT = 19092
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
DEFAULT_HEAP = "-Xms512m -Xmx1g"
JVM_PERFORMANCE_OPTS = (
    "-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 "
    "-XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError "
    "-Djava.awt.headless=true"
)
_JAR_MARKER = ".complete"


class BrokerError(HostgateError):
    """The local broker could not be fetched, started, reached or stopped."""


def _repo_deploy_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "deploy" / "local"


@dataclass(frozen=True)
class NodePaths:
    """Where one broker process keeps its data, logs, config and PID file (the single broker,
    or one node of the local cluster: ``services.runtime.localcluster``)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.logs / "kafka.out"

    @property
    def properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"


@dataclass(frozen=True)
class BrokerPaths(NodePaths):
    """The single broker's :class:`NodePaths`, plus the jars and its cluster id."""

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def cluster_id_file(self) -> Path:
        return self.root / "cluster-id"


@dataclass(frozen=True)
class BrokerConfig:
    """How to run the local broker; ``from_env`` reads the documented variables."""

    home: Path
    port: int = DEFAULT_PORT
    heap: str = DEFAULT_HEAP
    deploy_dir: Path = field(default_factory=_repo_deploy_dir)

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def paths(self) -> BrokerPaths:
        return BrokerPaths(self.home / "kafka")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BrokerConfig:
        """Read ``HOSTGATE_HOME``, ``HOSTGATE_KAFKA_PORT`` and ``HOSTGATE_KAFKA_HEAP``."""
        env = dict(os.environ) if env is None else env
        home = Path(env.get("HOSTGATE_HOME") or Path.home() / ".local" / "share" / "hostgate")
        port_text = env.get("HOSTGATE_KAFKA_PORT", str(DEFAULT_PORT))
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"HOSTGATE_KAFKA_PORT={port_text!r} is not a port number") from None
        if not 1024 <= port <= 65534:
            raise ConfigError(f"HOSTGATE_KAFKA_PORT={port} must be between 1024 and 65534")
        return cls(home=home.resolve(), port=port, heap=env.get("HOSTGATE_KAFKA_HEAP", DEFAULT_HEAP))


@dataclass(frozen=True)
class BrokerStatus:
    """What ``hostgate kafka status`` reports."""

    state: str  # "not-fetched" | "stopped" | "starting" | "running" | "stale-pid"
    pid: int | None
    bootstrap: str
    ready: bool
    data_dir: str
    log_file: str
    version: str = KAFKA_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


# --------------------------------------------------------------------------- prerequisites


def _java_major() -> int:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "Java is not installed; Kafka 4.x needs Java 17 or newer "
            "(fix: apt-get install openjdk-17-jre-headless, or run `make setup`)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise BrokerError(f"cannot tell the Java version from `java -version`: {out.stderr.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    return major


def check_java() -> None:
    """Fail with the fix if Java is missing or older than 17."""
    major = _java_major()
    if major < 17:
        raise BrokerError(
            f"Java {major} found; Kafka {KAFKA_VERSION} needs Java 17 or newer "
            "(fix: apt-get install openjdk-17-jre-headless)"
        )


def jars_present(cfg: BrokerConfig) -> bool:
    marker = cfg.paths.lib / _JAR_MARKER
    return marker.is_file() and marker.read_text().strip() == KAFKA_VERSION


def fetch_jars(cfg: BrokerConfig, *, echo: Callable[[str], None] = print) -> None:
    """Copy the broker's runtime classpath from Maven Central into ``kafka/lib`` (once)."""
    if jars_present(cfg):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven is not installed; it fetches the Kafka jars from Maven Central "
            "(fix: apt-get install maven, or run `make setup`)"
        )
    pom = cfg.deploy_dir / "pom.xml"
    if not pom.is_file():
        raise BrokerError(f"the broker's pom is missing: {pom}")
    lib = cfg.paths.lib
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    echo(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {lib} ...")
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"mvn could not fetch the Kafka jars (exit {proc.returncode}):\n{tail}")
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"mvn finished but {lib} holds no kafka_2.13 jar")
    (lib / _JAR_MARKER).write_text(KAFKA_VERSION + "\n")


# --------------------------------------------------------------------------- process state


def _read_pid(paths: BrokerPaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_our_broker(pid: int, paths: BrokerPaths) -> bool:
    """True if ``pid`` is alive and is the broker started with our server.properties."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return "kafka.Kafka" in args and str(paths.properties) in args


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _answers_metadata(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when the broker answers a metadata request (not only an open port)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return bool(cluster.get("brokers"))
    except Exception:  # any failure here just means "not ready yet"
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def broker_ready(cfg: BrokerConfig) -> bool:
    return _port_open(cfg.port) and asyncio.run(_answers_metadata(cfg.bootstrap))


def status(cfg: BrokerConfig) -> BrokerStatus:
    """Report the truth: is the broker fetched, running (by our PID) and answering?"""
    paths = cfg.paths
    pid = _read_pid(paths)

    def make(state: str, ready: bool = False, pid_: int | None = None) -> BrokerStatus:
        return BrokerStatus(state=state, pid=pid_, bootstrap=cfg.bootstrap, ready=ready,
                            data_dir=str(paths.data), log_file=str(paths.server_log))

    if pid is not None and _is_our_broker(pid, paths):
        ready = broker_ready(cfg)
        return make("running" if ready else "starting", ready, pid)
    if pid is not None:
        return make("stale-pid", False, pid)
    if not jars_present(cfg):
        return make("not-fetched")
    return make("stopped")


# --------------------------------------------------------------------------- start / stop


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding. Like Kafka's own
    ``Uuid.randomUuid``, never one starting with ``-`` (1 in 64 would): command-line parsers,
    kafka-storage's included, read such a value as an option."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _render_properties(cfg: BrokerConfig) -> None:
    template = (cfg.deploy_dir / "server.properties.in").read_text()
    text = (
        template.replace("@PORT@", str(cfg.port))
        .replace("@CONTROLLER_PORT@", str(cfg.controller_port))
        .replace("@DATA_DIR@", str(cfg.paths.data))
    )
    cfg.paths.properties.write_text(text)


def _java_base(cfg: BrokerConfig) -> list[str]:
    log_cfg = cfg.deploy_dir / "log4j2.xml"
    return [
        "java", *cfg.heap.split(), *JVM_PERFORMANCE_OPTS.split(),
        f"-Dkafka.logs.dir={cfg.paths.logs}",
        f"-Dlog4j2.configurationFile=file:{log_cfg}",
        "-cp", str(cfg.paths.lib / "*"),
    ]


def _formatted_cluster_id(paths: BrokerPaths) -> str | None:
    meta = paths.data / "meta.properties"
    if not meta.is_file():
        return None
    for line in meta.read_text().splitlines():
        if line.startswith("cluster.id="):
            return line.split("=", 1)[1].strip()
    raise BrokerError(f"{meta} has no cluster.id; the data directory is damaged "
                      "(fix: hostgate kafka reset)")


def _format_storage(cfg: BrokerConfig, echo: Callable[[str], None]) -> None:
    paths = cfg.paths
    existing = _formatted_cluster_id(paths)
    expected = paths.cluster_id_file.read_text().strip() if paths.cluster_id_file.is_file() else None
    if existing is not None:
        if expected is not None and existing != expected:
            raise BrokerError(
                f"the data directory {paths.data} belongs to another cluster "
                f"(cluster.id {existing}, this broker's is {expected}); "
                "fix: `hostgate kafka reset` wipes it, or point HOSTGATE_HOME elsewhere"
            )
        if expected is None:
            paths.cluster_id_file.write_text(existing + "\n")
        return
    if paths.data.exists() and any(paths.data.iterdir()):
        raise BrokerError(
            f"the data directory {paths.data} is not empty but was never formatted "
            "(fix: `hostgate kafka reset`)"
        )
    cluster_id = expected or _kafka_uuid()
    echo(f"formatting KRaft storage in {paths.data} (cluster id {cluster_id})")
    env = dict(os.environ, KAFKA_HEAP_OPTS="-Xmx512m")
    proc = subprocess.run(
        [*_java_base(cfg), "kafka.tools.StorageTool", "format", "--standalone",
         f"--cluster-id={cluster_id}", "-c", str(paths.properties)],
        capture_output=True, text=True, check=False, env=env, timeout=120,
    )
    if proc.returncode != 0:
        raise BrokerError(f"formatting storage failed: {(proc.stdout + proc.stderr).strip()[-800:]}")
    paths.cluster_id_file.write_text(cluster_id + "\n")


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def up(cfg: BrokerConfig, *, timeout_s: float = READY_TIMEOUT_S,
       echo: Callable[[str], None] = print) -> BrokerStatus:
    """Start the broker (fetching and formatting first where needed) and wait until it answers."""
    check_java()
    paths = cfg.paths
    current = status(cfg)
    if current.state in ("running", "starting"):
        if current.state == "starting":
            _wait_ready(cfg, current.pid or 0, timeout_s)
        return status(cfg)
    if current.state == "stale-pid":
        paths.pid_file.unlink(missing_ok=True)
    for port in (cfg.port, cfg.controller_port):
        if _port_open(port):
            raise BrokerError(
                f"port {port} on 127.0.0.1 is taken by another process; stop it or choose another "
                "port with HOSTGATE_KAFKA_PORT (the controller uses the port above it)"
            )
    fetch_jars(cfg, echo=echo)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    _render_properties(cfg)
    _format_storage(cfg, echo)
    with open(paths.stdout_log, "ab") as out:
        proc = subprocess.Popen(
            [*_java_base(cfg), "kafka.Kafka", str(paths.properties)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # not killed by the shell's Ctrl-C; `down` stops it
        )
    paths.pid_file.write_text(f"{proc.pid}\n")
    echo(f"starting Kafka {KAFKA_VERSION} (pid {proc.pid}) on {cfg.bootstrap} ...")
    _wait_ready(cfg, proc.pid, timeout_s, proc)
    return status(cfg)


def _wait_ready(cfg: BrokerConfig, pid: int, timeout_s: float,
                proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            cfg.paths.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"the broker exited with status {proc.returncode} during start-up; last log lines:\n"
                f"{_tail(cfg.paths.stdout_log, 10)}\n{_tail(cfg.paths.server_log, 15)}"
            )
        if broker_ready(cfg):
            return
        time.sleep(0.5)
    down(cfg, echo=lambda _m: None)
    raise BrokerError(
        f"the broker did not answer metadata requests within {timeout_s:.0f}s and was stopped; "
        f"see {cfg.paths.server_log}"
    )


def down(cfg: BrokerConfig, *, echo: Callable[[str], None] = print) -> bool:
    """Stop the broker this tool started (by its PID). Returns False if none was running."""
    paths = cfg.paths
    pid = _read_pid(paths)
    if pid is None:
        return False
    if not _is_our_broker(pid, paths):
        paths.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _is_our_broker(pid, paths):
        time.sleep(0.2)
    if _is_our_broker(pid, paths):
        echo(f"broker pid {pid} ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s; sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        while _is_our_broker(pid, paths):
            time.sleep(0.1)
    paths.pid_file.unlink(missing_ok=True)
    echo(f"stopped Kafka (pid {pid})")
    return True


def reset(cfg: BrokerConfig, *, echo: Callable[[str], None] = print) -> None:
    """Stop the broker and delete its data (the jars stay)."""
    down(cfg, echo=echo)
    paths = cfg.paths
    for path in (paths.data, paths.cluster_id_file):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    echo(f"wiped {paths.data}")
