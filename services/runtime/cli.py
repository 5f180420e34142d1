"""``hostgate kafka ...`` and ``hostgate topics ...``: the local broker and the topic layout."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

from services.errors import ConfigError
from services.runtime import cluster_faults, localbroker, localcluster
from services.runtime.cli_conventions import (
    add_broker_argument,
    add_json_flag,
    chosen_broker,
    print_json,
    print_table,
)
from services.runtime.cli_parser import RemovedFlag
from services.runtime.localbroker import BrokerConfig
from services.runtime.topics import (
    TopicLayout,
    add_namespace_argument,
    ensure_topics,
    topics_from_args,
)

ENV_HELP = (
    "Environment: HOSTGATE_HOME (default ~/.local/share/hostgate; the Makefile uses ./.hostgate), "
    "HOSTGATE_KAFKA_PORT (default 19092; the controller listens on the next port), "
    "HOSTGATE_KAFKA_HEAP (default '-Xms512m -Xmx1g'; a cluster's nodes '-Xms256m -Xmx512m' "
    "each), HOSTGATE_KAFKA_BROKERS (nodes for `up`, default 1). A cluster (`up --brokers 3`) "
    "is remembered in $HOSTGATE_HOME/kafka/cluster.json: status, down, logs, reset, kill and "
    "start then act on it; node i listens on HOSTGATE_KAFKA_PORT+2(i-1)."
)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _cmd_fetch(args: argparse.Namespace) -> int:
    cfg = BrokerConfig.from_env()
    localbroker.check_java()
    localbroker.fetch_jars(cfg, echo=_err)
    print(f"Kafka {localbroker.KAFKA_VERSION} jars ready in {cfg.paths.lib}")
    return 0


def _cluster() -> localcluster.ClusterConfig | None:
    return localcluster.from_home()


def _need_cluster() -> localcluster.ClusterConfig:
    cfg = _cluster()
    if cfg is None:
        raise ConfigError("no cluster in this HOSTGATE_HOME; start one with "
                          "`hostgate kafka up --brokers 3`")
    return cfg


def _requested_brokers(args: argparse.Namespace) -> int:
    if args.brokers is not None:
        return int(args.brokers)
    text = os.environ.get("HOSTGATE_KAFKA_BROKERS")
    if text:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"HOSTGATE_KAFKA_BROKERS={text!r} is not a number") from None
    recorded = localcluster.configured_brokers(BrokerConfig.from_env().home)
    return recorded or 1


def _cmd_up(args: argparse.Namespace) -> int:
    brokers = _requested_brokers(args)
    recorded = localcluster.configured_brokers(BrokerConfig.from_env().home)
    if brokers == 1 and recorded is not None:
        raise ConfigError(f"this HOSTGATE_HOME holds a {recorded}-node cluster; "
                          "`hostgate kafka reset` it first, or use another HOSTGATE_HOME")
    if brokers > 1:
        ccfg = localcluster.ClusterConfig.from_env(brokers)
        cst = localcluster.up(ccfg, timeout_s=args.timeout, echo=_err)
        print(cst.to_json() if args.json else
              f"Kafka {cst.version} cluster is {cst.state}: {cst.brokers} nodes on "
              f"{cst.bootstrap} (pids {', '.join(str(n.pid) for n in cst.nodes)}); "
              f"data in {ccfg.root}/node-*")
        return 0
    cfg = BrokerConfig.from_env()
    st = localbroker.up(cfg, timeout_s=args.timeout, echo=_err)
    print(st.to_json() if args.json else f"Kafka {st.version} is {st.state} on {st.bootstrap} "
          f"(pid {st.pid}); data in {st.data_dir}, log {st.log_file}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    ccfg = _cluster()
    if ccfg is not None:
        if not localcluster.down(ccfg, echo=_err):
            print("the Kafka cluster is not running (nothing started by hostgate)")
        return 0
    cfg = BrokerConfig.from_env()
    if not localbroker.down(cfg, echo=_err):
        print("Kafka is not running (nothing started by hostgate)")
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    ccfg = _cluster()
    if ccfg is not None:
        localcluster.reset(ccfg, echo=_err)
        return 0
    cfg = BrokerConfig.from_env()
    localbroker.reset(cfg, echo=_err)
    return 0


def _print_cluster_status(st: localcluster.ClusterStatus) -> None:
    print(f"Kafka {st.version} cluster: {st.state}; {len(st.live_brokers)}/{st.brokers} brokers "
          f"live {st.live_brokers}; bootstrap {st.bootstrap}")
    for n in st.nodes:
        pid = f"pid {n.pid}" if n.pid else "no process"
        print(f"  node {n.node}: {n.state}, {pid}, port {n.port} (controller "
              f"{n.controller_port}); log {n.log_file}")
    led: dict[int, int] = {}
    for parts in st.leaders.values():
        for leader in parts.values():
            led[leader] = led.get(leader, 0) + 1
    total = sum(led.values())
    if total:
        spread = ", ".join(f"node {k}: {v}" for k, v in sorted(led.items()) if k >= 0)
        print(f"  partition leaders ({total} partitions): {spread}")
    for line in st.under_replicated:
        print(f"  UNDER-REPLICATED {line}")
    for line in st.offline:
        print(f"  OFFLINE {line}")


def _cmd_status(args: argparse.Namespace) -> int:
    ccfg = _cluster()
    if ccfg is not None:
        cst = localcluster.status(ccfg)
        if args.address:
            print(cst.bootstrap)
        elif args.json:
            print(cst.to_json())
        elif not args.quiet:
            _print_cluster_status(cst)
        return 0 if cst.ready else 1
    cfg = BrokerConfig.from_env()
    st = localbroker.status(cfg)
    if args.address:
        print(st.bootstrap)
    elif args.json:
        print(st.to_json())
    elif not args.quiet:
        pid = f", pid {st.pid}" if st.pid else ""
        print(f"Kafka {st.version}: {st.state}{pid}; bootstrap {st.bootstrap}; "
              f"data {st.data_dir}; log {st.log_file}")
    return 0 if st.ready else 1


def _cmd_logs(args: argparse.Namespace) -> int:
    ccfg = _cluster()
    if ccfg is not None:
        if args.node is None:
            print(f"this is a {ccfg.brokers}-node cluster: name one with --node 1..{ccfg.brokers}",
                  file=sys.stderr)
            return 2
        log = ccfg.node_paths(args.node).server_log
    elif args.node not in (None, 1):
        print("a single broker has only node 1", file=sys.stderr)
        return 2
    else:
        log = BrokerConfig.from_env().paths.server_log
    if not log.is_file():
        print(f"no broker log yet at {log}", file=sys.stderr)
        return 1
    cmd = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else []) + [str(log)]
    return subprocess.call(cmd)


def _cmd_kill(args: argparse.Namespace) -> int:
    cfg = _need_cluster()
    sig = signal.Signals[f"SIG{args.signal.upper().removeprefix('SIG')}"]
    pid = cluster_faults.kill(cfg, args.node, sig)
    print(f"sent {sig.name} to node {args.node} (pid {pid})")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    cfg = _need_cluster()
    pid = cluster_faults.restart(cfg, args.node, wait=not args.no_wait)
    print(f"node {args.node} is {'started' if args.no_wait else 'a live broker again'} "
          f"(pid {pid})")
    return 0


def _cmd_leader(args: argparse.Namespace) -> int:
    bootstrap = _bootstrap(args)
    node = asyncio.run(cluster_faults.partition_leader(bootstrap, args.topic, args.partition))
    return _answer(args, node, f"leader of {args.topic}[{args.partition}]")


def _cmd_coordinator(args: argparse.Namespace) -> int:
    bootstrap = _bootstrap(args)
    if args.txn is not None:
        node = asyncio.run(cluster_faults.transaction_coordinator(bootstrap, args.txn))
        what = f"transaction coordinator of {args.txn}"
    else:
        node = asyncio.run(cluster_faults.group_coordinator(bootstrap, args.group))
        what = f"group coordinator of {args.group}"
    return _answer(args, node, what)


def _answer(args: argparse.Namespace, node: int, what: str) -> int:
    """Print the node found (``--json``: ``{"node": N}``) and, with ``--kill``, SIGKILL it."""
    if args.json:
        print_json({"node": node, "what": what})
    else:
        print(node)
    if args.kill:
        pid = cluster_faults.kill(_need_cluster(), node)
        _err(f"killed node {node} (pid {pid}), the {what}")
    return 0


def _local_bootstrap() -> str:
    ccfg = _cluster()
    return ccfg.bootstrap if ccfg is not None else BrokerConfig.from_env().bootstrap


def _bootstrap(args: argparse.Namespace) -> str:
    return chosen_broker(args, _local_bootstrap)


def _cmd_topics_ensure(args: argparse.Namespace) -> int:
    layout = TopicLayout.from_env()
    specs = topics_from_args(args).all_specs()
    report = asyncio.run(ensure_topics(_bootstrap(args), specs, layout=layout, fix=args.fix))
    if args.json:
        print_json(report.to_dict(), indent=2, sort_keys=False)
    else:
        print(f"created {len(report.created)}, unchanged {len(report.ok)}, "
              f"drift {len(report.drift)}, fixed {len(report.fixed)} "
              f"(replication {report.replication}, min.insync.replicas "
              f"{max(1, report.replication - 1)})")
        for name in report.created:
            print(f"  created  {name}")
        for line in report.drift:
            print(f"  DRIFT    {line}")
    return 1 if report.drift and not args.fix else 0


def _cmd_topics_list(args: argparse.Namespace) -> int:
    layout = TopicLayout.from_env()
    rows: list[dict[str, Any]] = [
        {"name": s.name, "compacted": s.compacted, "purpose": s.purpose,
         "partitions": s.partitions or layout.partitions, "configs": s.configs(layout.rf)}
        for s in topics_from_args(args).all_specs()
    ]
    if args.json:
        print_json(rows, indent=2, sort_keys=False)
        return 0
    print_table("hostgate topics", ("topic", "partitions", "policy", "retention", "purpose"),
                [(row["name"], str(row["partitions"]), row["configs"]["cleanup.policy"],
                  row["configs"].get("retention.ms", "-"), row["purpose"]) for row in rows])
    return 0


def _register_faults(ksub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The cluster's fault driver: ``kill``, ``start``, ``leader``, ``coordinator``."""
    p = ksub.add_parser("kill", help="signal one cluster node by id (default SIGKILL)")
    p.add_argument("node", type=int, metavar="NODE")
    p.add_argument("--signal", default="KILL", choices=("KILL", "TERM", "STOP", "CONT"),
                   help="KILL (default, waits until it is gone), TERM, STOP or CONT")
    p.set_defaults(func=_cmd_kill)
    p = ksub.add_parser("start", help="start one stopped cluster node again")
    p.add_argument("node", type=int, metavar="NODE")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait until it is a live broker again")
    p.set_defaults(func=_cmd_start)
    p = ksub.add_parser("leader", help="the node id leading a partition")
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("partition", type=int, metavar="PARTITION")
    p.add_argument("--kill", action="store_true", help="then SIGKILL exactly that node")
    add_broker_argument(p, fallback="the local broker or cluster")
    add_json_flag(p)
    p.set_defaults(func=_cmd_leader)
    p = ksub.add_parser("coordinator",
                        help="the node id coordinating a transactional id or a consumer group")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--txn", metavar="ID", help="a transactional id (e.g. <group>.task-0)")
    which.add_argument("--group", metavar="ID", help="a consumer group id")
    p.add_argument("--kill", action="store_true", help="then SIGKILL exactly that node")
    add_broker_argument(p, fallback="the local broker or cluster")
    add_json_flag(p)
    p.set_defaults(func=_cmd_coordinator)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``kafka`` and ``topics`` (and the stage runner's ``run``)."""
    kafka = sub.add_parser(
        "kafka", help="run a real Kafka broker (or a 3-node cluster) locally",
        description="Run a real single-node Apache Kafka 4.x broker (KRaft), or with "
                    "`up --brokers 3` a three-node cluster, from Maven Central jars. " + ENV_HELP,
    )
    ksub = kafka.add_subparsers(dest="kafka_command", metavar="ACTION", required=True)
    p = ksub.add_parser("fetch", help="download the broker's jars (once; cached)")
    p.set_defaults(func=_cmd_fetch)
    p = ksub.add_parser("up", help="start the broker and wait until it answers metadata requests")
    p.add_argument("--timeout", type=float, default=localcluster.READY_TIMEOUT_S,
                   help="seconds to wait for readiness (default %(default)s)")
    p.add_argument("--brokers", type=int, choices=range(1, localcluster.MAX_NODES + 1),
                   metavar="N", default=None,
                   help="1: one broker (the default); N > 1: an N-node KRaft cluster, each node "
                        "broker and controller, RF min(3, N), min ISR RF-1 "
                        "[HOSTGATE_KAFKA_BROKERS]")
    add_json_flag(p, "print the status as JSON")
    p.set_defaults(func=_cmd_up)
    p = ksub.add_parser("down", help="stop the broker hostgate started (by its PID)")
    p.set_defaults(func=_cmd_down)
    p = ksub.add_parser("status", help="fetched / stopped / starting / running; exit 0 only if ready")
    add_json_flag(p, "print the status as JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing; exit status only")
    p.add_argument("--address", action="store_true", help="print only the broker's address")
    p.add_argument("--bootstrap", action=RemovedFlag,
                   instead="is now --address here (--bootstrap names Kafka servers elsewhere)")
    p.set_defaults(func=_cmd_status)
    p = ksub.add_parser("logs", help="show the broker's log")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep following the log")
    p.add_argument("--node", type=int, default=None, metavar="N",
                   help="the cluster node whose log to show (required for a cluster)")
    p.set_defaults(func=_cmd_logs)
    p = ksub.add_parser("reset", help="stop the broker and delete its data (jars are kept)")
    p.set_defaults(func=_cmd_reset)
    _register_faults(ksub)

    topics = sub.add_parser(
        "topics", help="create and check hostgate's topics",
        description="Topics are declared once in services/runtime/topics.py: the pipeline's, "
                    "each stage's DLQ and state changelogs. Environment: HOSTGATE_PARTITIONS "
                    "(default 6), HOSTGATE_REPLICATION (default: detected from the cluster, min(3, brokers); min ISR = RF-1), HOSTGATE_TOPIC_NAMESPACE "
                    "(every name becomes <namespace>.<name>; default none).",
    )
    tsub = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    p = tsub.add_parser("ensure", help="create missing topics, report drift (exit 1 on drift)")
    add_broker_argument(p, fallback="the local broker")
    add_namespace_argument(p)
    p.add_argument("--fix", action="store_true", help="raise partitions and reset configs")
    add_json_flag(p, "print the report as JSON")
    p.set_defaults(func=_cmd_topics_ensure)
    p = tsub.add_parser("list", help="list the declared topics")
    add_namespace_argument(p)
    add_json_flag(p, "print as JSON")
    p.set_defaults(func=_cmd_topics_list)

