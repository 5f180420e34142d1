"""A real multi-node Apache Kafka cluster on loopback: ``hostgate kafka up --brokers 3``.

The same Maven Central jars as the single broker (``services.runtime.localbroker``), N separate
JVMs, each in KRaft combined mode (broker and controller in one process); the N controllers are
a static voter quorum (``controller.quorum.voters``), so a majority must be up for the cluster
to change its metadata (elect leaders, shrink ISRs). Under ``$HOSTGATE_HOME/kafka``::

    kafka/lib/                  the jars (shared with the single broker)
    kafka/cluster.json          the cluster's shape: node count, base port, cluster id
    kafka/node-<id>/data/       that node's log.dirs, formatted once
    kafka/node-<id>/logs/       server.log (and kafka.out: JVM stdout/stderr)
    kafka/node-<id>/server.properties   rendered from deploy/local/cluster-node.properties.in
    kafka/node-<id>/kafka.pid   the PID of the node this tool started

Ports: node *i* (1-based) serves clients on ``base + 2(i-1)`` and its controller on the port
above (base 29092: 29092/29093, 29094/29095, 29096/29097). Replication follows the node count:
RF ``min(3, N)``, min ISR ``RF - 1`` (at least 1), for the internal topics as for hostgate's
(``services.runtime.topics``). A node is stopped or killed only by its own PID, after checking
that the PID is still that node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.errors import ConfigError
from services.runtime import localbroker
from services.runtime.localbroker import (
    JVM_PERFORMANCE_OPTS,
    KAFKA_VERSION,
    BrokerConfig,
    BrokerError,
)
from services.runtime.topics import min_insync, replication_for

DEFAULT_CLUSTER_HEAP = "-Xms256m -Xmx512m"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
MAX_NODES = 9
CLUSTER_FILE = "cluster.json"


def min_isr_for(replication: int) -> int:
    """The cluster-wide ``min.insync.replicas`` for ``replication`` (``topics.min_insync``)."""
    return min_insync(replication)


NodePaths = localbroker.NodePaths


@dataclass(frozen=True)
class ClusterConfig:
    """How to run the local cluster; ``from_env`` reads the documented variables."""

    home: Path
    brokers: int = 3
    base_port: int = localbroker.DEFAULT_PORT
    heap: str = DEFAULT_CLUSTER_HEAP
    deploy_dir: Path = field(default_factory=localbroker._repo_deploy_dir)

    def __post_init__(self) -> None:
        if not 2 <= self.brokers <= MAX_NODES:
            raise ConfigError(f"a cluster has 2..{MAX_NODES} brokers, not {self.brokers}")

    @property
    def root(self) -> Path:
        return self.home / "kafka"

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(range(1, self.brokers + 1))

    def port(self, node: int) -> int:
        """The client (PLAINTEXT) port of ``node``."""
        return self.base_port + 2 * (node - 1)

    def controller_port(self, node: int) -> int:
        return self.port(node) + 1

    def node_paths(self, node: int) -> NodePaths:
        self.check_node(node)
        return NodePaths(self.root / f"node-{node}")

    def check_node(self, node: int) -> None:
        if node not in self.nodes:
            raise ConfigError(f"node {node} is not in this cluster (nodes 1..{self.brokers})")

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port(n)}" for n in self.nodes)

    @property
    def replication(self) -> int:
        return replication_for(self.brokers)

    @property
    def jars(self) -> BrokerConfig:
        """The single-broker config whose ``lib/`` this cluster shares (fetching, checks)."""
        return BrokerConfig(home=self.home, deploy_dir=self.deploy_dir)

    @classmethod
    def from_env(cls, brokers: int, env: Mapping[str, str] | None = None) -> ClusterConfig:
        """``HOSTGATE_HOME``, ``HOSTGATE_KAFKA_PORT`` (node 1's port; the others follow) and
        ``HOSTGATE_KAFKA_HEAP`` (per node; default ``-Xms256m -Xmx512m`` when unset)."""
        env = dict(os.environ) if env is None else dict(env)
        single = BrokerConfig.from_env(env)
        heap = env.get("HOSTGATE_KAFKA_HEAP") or DEFAULT_CLUSTER_HEAP
        if single.port + 2 * brokers > 65535:
            raise ConfigError(f"HOSTGATE_KAFKA_PORT={single.port} leaves no room for "
                              f"{brokers} nodes (two ports each)")
        return cls(home=single.home, brokers=brokers, base_port=single.port, heap=heap)


def configured_brokers(home: Path) -> int | None:
    """The node count of the cluster recorded under ``home`` (``None``: no cluster there)."""
    path = home / "kafka" / CLUSTER_FILE
    try:
        return int(json.loads(path.read_text())["brokers"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise BrokerError(f"{path} is damaged ({exc}); fix: hostgate kafka reset") from exc


def from_home(env: Mapping[str, str] | None = None) -> ClusterConfig | None:
    """The cluster recorded under ``$HOSTGATE_HOME`` with its recorded base port, or ``None``."""
    env = dict(os.environ) if env is None else dict(env)
    home = BrokerConfig.from_env(env).home
    brokers = configured_brokers(home)
    if brokers is None:
        return None
    doc = json.loads((home / "kafka" / CLUSTER_FILE).read_text())
    cfg = ClusterConfig.from_env(brokers, env)
    return ClusterConfig(home=cfg.home, brokers=brokers, base_port=int(doc["base_port"]),
                         heap=cfg.heap, deploy_dir=cfg.deploy_dir)


# --------------------------------------------------------------------------- process state


def node_pid(cfg: ClusterConfig, node: int) -> int | None:
    """The PID of ``node`` if it is alive and is the node started with our properties."""
    paths = cfg.node_paths(node)
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        args = [a.decode(errors="replace")
                for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return None
    if "kafka.Kafka" in args and str(paths.properties) in args:
        return pid
    return None


@dataclass(frozen=True)
class NodeStatus:
    """One node: its process and ports."""

    node: int
    state: str  # "running" | "starting" | "stopped" | "not-formatted"
    pid: int | None
    port: int
    controller_port: int
    data_dir: str
    log_file: str


@dataclass(frozen=True)
class ClusterStatus:
    """What ``hostgate kafka status`` reports for a cluster."""

    state: str  # "running" | "degraded" | "stopped" | "not-fetched"
    ready: bool
    bootstrap: str
    brokers: int
    live_brokers: list[int]
    controller: int | None
    nodes: list[NodeStatus]
    leaders: dict[str, dict[int, int]]
    under_replicated: list[str]
    offline: list[str]
    version: str = KAFKA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


async def cluster_metadata(bootstrap: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The cluster's metadata (brokers, controller, every topic's partitions) or ``None`` if no
    node answers within ``timeout_s``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        response = await asyncio.wait_for(admin._get_cluster_metadata(None), timeout_s)
        doc: dict[str, Any] = response.to_object()
        return doc
    except Exception:  # any failure means "no answer now"
        return None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def status(cfg: ClusterConfig) -> ClusterStatus:
    """Each node's process, and what the cluster's metadata says about leaders and replicas."""
    nodes = []
    for n in cfg.nodes:
        paths = cfg.node_paths(n)
        pid = node_pid(cfg, n)
        if pid is not None:
            state = "running" if localbroker._port_open(cfg.port(n)) else "starting"
        else:
            state = "stopped" if (paths.data / "meta.properties").is_file() else "not-formatted"
        nodes.append(NodeStatus(n, state, pid, cfg.port(n), cfg.controller_port(n),
                                str(paths.data), str(paths.server_log)))
    running = [s for s in nodes if s.pid is not None]
    meta = asyncio.run(cluster_metadata(cfg.bootstrap)) if running else None
    live = sorted(b["node_id"] for b in meta["brokers"]) if meta else []
    leaders: dict[str, dict[int, int]] = {}
    under: list[str] = []
    offline: list[str] = []
    for topic in (meta or {}).get("topics", []):
        parts = leaders.setdefault(topic["topic"], {})
        for p in topic["partitions"]:
            parts[p["partition"]] = p["leader"]
            where = f"{topic['topic']}[{p['partition']}]"
            if p["leader"] < 0:
                offline.append(f"{where} replicas {p['replicas']}")
            elif len(p["isr"]) < len(p["replicas"]):
                under.append(f"{where} leader {p['leader']} replicas {p['replicas']} "
                             f"isr {p['isr']}")
    if not localbroker.jars_present(cfg.jars) and not running:
        state = "not-fetched"
    elif not running:
        state = "stopped"
    elif len(live) == cfg.brokers and len(running) == cfg.brokers and not offline:
        state = "running"
    else:
        state = "degraded"
    return ClusterStatus(state=state, ready=state == "running", bootstrap=cfg.bootstrap,
                         brokers=cfg.brokers, live_brokers=live,
                         controller=(meta or {}).get("controller_id"), nodes=nodes,
                         leaders=leaders, under_replicated=under, offline=offline)


# --------------------------------------------------------------------------- start / stop


def _voters(cfg: ClusterConfig) -> str:
    return ",".join(f"{n}@127.0.0.1:{cfg.controller_port(n)}" for n in cfg.nodes)


def _render(cfg: ClusterConfig, node: int) -> None:
    paths = cfg.node_paths(node)
    template = (cfg.deploy_dir / "cluster-node.properties.in").read_text()
    values = {"NODE_ID": node, "VOTERS": _voters(cfg), "PORT": cfg.port(node),
              "CONTROLLER_PORT": cfg.controller_port(node), "DATA_DIR": paths.data,
              "REPLICATION": cfg.replication, "MIN_ISR": min_isr_for(cfg.replication)}
    for key, value in values.items():
        template = template.replace(f"@{key}@", str(value))
    paths.properties.write_text(template)


def _java(cfg: ClusterConfig, paths: NodePaths, heap: str) -> list[str]:
    return ["java", *heap.split(), *JVM_PERFORMANCE_OPTS.split(),
            f"-Dkafka.logs.dir={paths.logs}",
            f"-Dlog4j2.configurationFile=file:{cfg.deploy_dir / 'log4j2.xml'}",
            "-cp", str(cfg.jars.paths.lib / "*")]


def _cluster_id(cfg: ClusterConfig) -> str:
    """The cluster's id (from ``cluster.json``, created on the first ``up``); refuses a home
    whose recorded cluster has another shape."""
    path = cfg.root / CLUSTER_FILE
    if path.is_file():
        doc = json.loads(path.read_text())
        if int(doc["brokers"]) != cfg.brokers:
            raise BrokerError(
                f"{cfg.root} holds a {doc['brokers']}-node cluster, not {cfg.brokers}; "
                "fix: `hostgate kafka reset` wipes it, or point HOSTGATE_HOME elsewhere")
        return str(doc["cluster_id"])
    cluster_id = localbroker._kafka_uuid()
    cfg.root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"brokers": cfg.brokers, "base_port": cfg.base_port,
                                "cluster_id": cluster_id}) + "\n")
    return cluster_id


def _format(cfg: ClusterConfig, cluster_id: str, echo: Callable[[str], None]) -> None:
    """Format every node's storage that is not formatted yet (in parallel: one JVM each)."""
    procs: dict[int, subprocess.Popen[str]] = {}
    for n in cfg.nodes:
        paths = cfg.node_paths(n)
        meta = paths.data / "meta.properties"
        if meta.is_file():
            if f"cluster.id={cluster_id}" not in meta.read_text():
                raise BrokerError(f"{paths.data} belongs to another cluster; "
                                  "fix: `hostgate kafka reset`")
            continue
        echo(f"formatting KRaft storage of node {n} in {paths.data} (cluster id {cluster_id})")
        procs[n] = subprocess.Popen(
            [*_java(cfg, paths, "-Xmx256m"), "kafka.tools.StorageTool", "format",
             f"--cluster-id={cluster_id}", "-c", str(paths.properties)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for n, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise BrokerError(f"formatting node {n} failed: {out.strip()[-800:]}")


def _spawn(cfg: ClusterConfig, node: int) -> int:
    paths = cfg.node_paths(node)
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.stdout_log, "ab") as out:
        proc = subprocess.Popen(
            [*_java(cfg, paths, cfg.heap), "kafka.Kafka", str(paths.properties)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    paths.pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def _check_ports_free(cfg: ClusterConfig, nodes: list[int]) -> None:
    for n in nodes:
        for port in (cfg.port(n), cfg.controller_port(n)):
            if localbroker._port_open(port):
                raise BrokerError(
                    f"port {port} on 127.0.0.1 (node {n}) is taken by another process; stop it "
                    "or choose another base port with HOSTGATE_KAFKA_PORT (node i uses "
                    "port+2(i-1) and the port above it)")


def up(cfg: ClusterConfig, *, timeout_s: float = READY_TIMEOUT_S,
       echo: Callable[[str], None] = print) -> ClusterStatus:
    """Start every node that is not running (fetching and formatting first where needed) and
    wait until the metadata shows all of them."""
    localbroker.check_java()
    cluster_id = _cluster_id(cfg)
    stopped = [n for n in cfg.nodes if node_pid(cfg, n) is None]
    _check_ports_free(cfg, stopped)
    localbroker.fetch_jars(cfg.jars, echo=echo)
    for n in cfg.nodes:
        cfg.node_paths(n).root.mkdir(parents=True, exist_ok=True)
        _render(cfg, n)
    _format(cfg, cluster_id, echo)
    for n in stopped:
        pid = _spawn(cfg, n)
        echo(f"starting Kafka {KAFKA_VERSION} node {n} (pid {pid}) on 127.0.0.1:{cfg.port(n)}")
    wait_ready(cfg, timeout_s)
    return status(cfg)


def wait_ready(cfg: ClusterConfig, timeout_s: float = READY_TIMEOUT_S,
               nodes: tuple[int, ...] | None = None) -> None:
    """Wait until the metadata lists ``nodes`` (default: every node) as live brokers and every
    partition has a leader again (just after a restart some are briefly offline)."""
    want = set(cfg.nodes if nodes is None else nodes)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [n for n in want if not _started(cfg, n)]
        if dead:
            paths = cfg.node_paths(dead[0])
            raise BrokerError(
                f"node {dead[0]} is not running (exited during start-up?); last log lines:\n"
                f"{localbroker._tail(paths.stdout_log, 10)}\n"
                f"{localbroker._tail(paths.server_log, 15)}")
        meta = asyncio.run(cluster_metadata(cfg.bootstrap))
        if meta is not None and want <= {b["node_id"] for b in meta["brokers"]} and not any(
                p["leader"] < 0 for t in meta["topics"] for p in t["partitions"]):
            return
        time.sleep(0.5)
    raise BrokerError(f"nodes {sorted(want)} did not all register (with a leader for every "
                      f"partition) within {timeout_s:.0f}s; see {cfg.root}/node-*/logs/server.log")


def _started(cfg: ClusterConfig, node: int) -> bool:
    """Whether the process in ``node``'s PID file is alive (it may not have exec'd java yet)."""
    try:
        pid = int(cfg.node_paths(node).pid_file.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def start_node(cfg: ClusterConfig, node: int, *, wait: bool = True,
               timeout_s: float = READY_TIMEOUT_S) -> int:
    """Start one (formatted, stopped) node again; its PID. ``wait``: until it is a live broker."""
    pid = node_pid(cfg, node)
    if pid is None:
        if not (cfg.node_paths(node).data / "meta.properties").is_file():
            raise BrokerError(f"node {node} was never formatted; run `hostgate kafka up "
                              f"--brokers {cfg.brokers}` first")
        _check_ports_free(cfg, [node])
        pid = _spawn(cfg, node)
    if wait:
        wait_ready(cfg, timeout_s, nodes=(node,))
    return pid


def _wait_exit(cfg: ClusterConfig, node: int, pid: int, wait_s: float) -> None:
    """Wait until ``node`` has exited; SIGKILL it if it takes longer than ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while node_pid(cfg, node) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + wait_s
        time.sleep(0.05)
    cfg.node_paths(node).pid_file.unlink(missing_ok=True)


def signal_node(cfg: ClusterConfig, node: int, sig: signal.Signals = signal.SIGKILL,
                *, wait_s: float = STOP_TIMEOUT_S) -> int | None:
    """Send ``sig`` to ``node`` (by its PID, checked); for SIGKILL and SIGTERM wait until it
    has exited. The PID signalled, or ``None`` if the node was not running."""
    pid = node_pid(cfg, node)
    if pid is None:
        return None
    os.kill(pid, sig)
    if sig in (signal.SIGKILL, signal.SIGTERM):
        _wait_exit(cfg, node, pid, wait_s)
    return pid


def down(cfg: ClusterConfig, *, echo: Callable[[str], None] = print) -> bool:
    """Stop every node this tool started (SIGTERM to all at once, then wait). False if none
    ran."""
    pids = {n: pid for n in cfg.nodes if (pid := node_pid(cfg, n)) is not None}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    for n, pid in pids.items():
        _wait_exit(cfg, n, pid, STOP_TIMEOUT_S)
        echo(f"stopped Kafka node {n} (pid {pid})")
    return bool(pids)


def reset(cfg: ClusterConfig, *, echo: Callable[[str], None] = print) -> None:
    """Stop the cluster and delete every node's data and the cluster record (jars stay)."""
    import shutil

    down(cfg, echo=echo)
    for n in cfg.nodes:
        shutil.rmtree(cfg.node_paths(n).root, ignore_errors=True)
    (cfg.root / CLUSTER_FILE).unlink(missing_ok=True)
    echo(f"wiped the {cfg.brokers}-node cluster in {cfg.root}")


__all__ = ["BrokerError", "ClusterConfig", "ClusterStatus", "NodeStatus", "configured_brokers",
           "down", "from_home", "min_isr_for", "node_pid", "replication_for", "reset", "signal_node",
           "start_node", "status", "up", "wait_ready"]
