"""``hostgate kafka ...`` and ``hostgate topics ...``: the local broker and the topic layout."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from typing import Any

from services.runtime import localbroker
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
    "HOSTGATE_KAFKA_HEAP (default '-Xms512m -Xmx1g')."
)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _cmd_fetch(args: argparse.Namespace) -> int:
    cfg = BrokerConfig.from_env()
    localbroker.check_java()
    localbroker.fetch_jars(cfg, echo=_err)
    print(f"Kafka {localbroker.KAFKA_VERSION} jars ready in {cfg.paths.lib}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    cfg = BrokerConfig.from_env()
    st = localbroker.up(cfg, timeout_s=args.timeout, echo=_err)
    print(st.to_json() if args.json else f"Kafka {st.version} is {st.state} on {st.bootstrap} "
          f"(pid {st.pid}); data in {st.data_dir}, log {st.log_file}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cfg = BrokerConfig.from_env()
    if not localbroker.down(cfg, echo=_err):
        print("Kafka is not running (nothing started by hostgate)")
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    cfg = BrokerConfig.from_env()
    localbroker.reset(cfg, echo=_err)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
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
    cfg = BrokerConfig.from_env()
    log = cfg.paths.server_log
    if not log.is_file():
        print(f"no broker log yet at {log}", file=sys.stderr)
        return 1
    cmd = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else []) + [str(log)]
    return subprocess.call(cmd)


def _bootstrap(args: argparse.Namespace) -> str:
    return chosen_broker(args, lambda: BrokerConfig.from_env().bootstrap)


def _cmd_topics_ensure(args: argparse.Namespace) -> int:
    layout = TopicLayout.from_env()
    specs = topics_from_args(args).all_specs()
    report = asyncio.run(ensure_topics(_bootstrap(args), specs, layout=layout, fix=args.fix))
    if args.json:
        print_json(report.to_dict(), indent=2, sort_keys=False)
    else:
        print(f"created {len(report.created)}, unchanged {len(report.ok)}, "
              f"drift {len(report.drift)}, fixed {len(report.fixed)}")
        for name in report.created:
            print(f"  created  {name}")
        for line in report.drift:
            print(f"  DRIFT    {line}")
    return 1 if report.drift and not args.fix else 0


def _cmd_topics_list(args: argparse.Namespace) -> int:
    layout = TopicLayout.from_env()
    rows: list[dict[str, Any]] = [
        {"name": s.name, "compacted": s.compacted, "purpose": s.purpose,
         "partitions": s.partitions or layout.partitions, "configs": s.configs(layout.replication)}
        for s in topics_from_args(args).all_specs()
    ]
    if args.json:
        print_json(rows, indent=2, sort_keys=False)
        return 0
    print_table("hostgate topics", ("topic", "partitions", "policy", "retention", "purpose"),
                [(row["name"], str(row["partitions"]), row["configs"]["cleanup.policy"],
                  row["configs"].get("retention.ms", "-"), row["purpose"]) for row in rows])
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``kafka`` and ``topics`` (and the stage runner's ``run``)."""
    kafka = sub.add_parser(
        "kafka", help="run a real single-node Kafka broker locally",
        description="Run a real single-node Apache Kafka 4.x broker (KRaft) from Maven "
                    "Central jars. " + ENV_HELP,
    )
    ksub = kafka.add_subparsers(dest="kafka_command", metavar="ACTION", required=True)
    p = ksub.add_parser("fetch", help="download the broker's jars (once; cached)")
    p.set_defaults(func=_cmd_fetch)
    p = ksub.add_parser("up", help="start the broker and wait until it answers metadata requests")
    p.add_argument("--timeout", type=float, default=localbroker.READY_TIMEOUT_S,
                   help="seconds to wait for readiness (default %(default)s)")
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
    p.set_defaults(func=_cmd_logs)
    p = ksub.add_parser("reset", help="stop the broker and delete its data (jars are kept)")
    p.set_defaults(func=_cmd_reset)

    topics = sub.add_parser(
        "topics", help="create and check hostgate's topics",
        description="Topics are declared once in services/runtime/topics.py: the pipeline's, "
                    "each stage's DLQ and state changelogs. Environment: HOSTGATE_PARTITIONS "
                    "(default 6), HOSTGATE_REPLICATION (default 1), HOSTGATE_TOPIC_NAMESPACE "
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

