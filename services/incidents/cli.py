"""``hostgate incidents ...``: read incidents and work them (acknowledge, root cause, remediate,
close).

Read commands (``list``, ``show``, ``tail``) read ``attest.incidents.v1`` with a read_committed
consumer that joins no group and commits nothing. Write commands publish one
``RemediationCommand`` to ``attest.remediation.v1`` keyed by the incident's host (looked up on
``attest.incidents.v1`` unless ``--host`` is given); the incidents stage applies it or publishes
a ``RemediationRejected`` record saying why not, which ``show`` and ``tail`` display.

``tick`` is the liveness ticker, a small process an operator runs beside the stage: every
``--every`` seconds it produces one ``LivenessTick`` to each partition of
``attest.remediation.v1`` (explicit partition), so stale hosts are reported even when a partition
gets no traffic at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from services.errors import ConfigError, HostgateError
from services.incidents.commands import (
    ACTIONS,
    MAX_COMMAND_JSON_BYTES,
    BadCommandJson,
    CommandRequest,
    parse_command_json,
    remediation_record,
)
from services.runtime.cli_conventions import add_kafka_arguments, print_report, publish_record
from services.runtime.connection import client_kwargs
from services.runtime.readers import (
    groupless_consumer,
    jsonable,
    read_to_end,
    rewind,
    topic_partitions,
)
from services.runtime.topics import topics_from_args
from services.wire import subjects


class IncidentNotFound(HostgateError):
    """No record on the incidents topic names that incident."""


class BrokerUnavailable(HostgateError):
    """The Kafka broker could not be reached."""

    retriable = True


async def _read_all(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every committed record of ``topic`` up to its end now, decoded, oldest first per
    partition (each with ``_subject`` and ``_coordinates``); after 30 s, what was read."""
    from aiokafka import TopicPartition

    from services.runtime.codec import Codec

    codec = Codec.load()
    async with groupless_consumer(bootstrap, error=BrokerUnavailable) as consumer:
        parts = await topic_partitions(bootstrap, topic)
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        end = await rewind(consumer, tps)
        out: list[dict[str, Any]] = []
        async for rec in read_to_end(consumer, tps, end, timeout_s=30, timed_out=None):
            if rec.offset >= end[TopicPartition(rec.topic, rec.partition)] or rec.value is None:
                continue
            try:
                decoded = codec.decode(rec.value)
            except HostgateError:
                continue
            row = dict(decoded.record)
            row["_subject"] = decoded.subject
            row["_coordinates"] = f"{rec.topic}[{rec.partition}]@{rec.offset}"
            out.append(row)
        return out


def _summaries(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Latest lifecycle event per incident."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["_subject"] == subjects.INCIDENT_EVENT:
            latest[row["incident_id"]] = row
    return latest


def _cmd_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_read_all(args.bootstrap, topics_from_args(args).incidents))
    incs = [r for r in _summaries(rows).values() if args.all or r["status"] != "CLOSED"]
    lines = [f"{r['incident_id']}  {r['host_id']:<24} {r['status']:<13} "
             f"occurrences={r['occurrences']}  opened={jsonable(r['opened_at'])}" for r in incs]
    print_report(args, [{k: v for k, v in r.items() if not k.startswith("_")} for r in incs], lines)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    rows = [r for r in asyncio.run(_read_all(args.bootstrap, topics_from_args(args).incidents))
            if r["incident_id"] == args.incident_id]
    if not rows:
        raise IncidentNotFound(f"no incident {args.incident_id} on {topics_from_args(args).incidents}")
    lines = []
    for r in rows:
        if r["_subject"] == subjects.INCIDENT_EVENT:
            lines.append(f"{jsonable(r['occurred_at'])}  {r['event']:<12} -> {r['status']:<12} "
                         f"by {r['actor']}: {r['note']}")
        else:
            lines.append(f"{jsonable(r['rejected_at'])}  REJECTED {r['action']} by {r['actor']}: "
                         f"{r['reason']} ({r['detail']})")
    print_report(args, rows, lines)
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    async def follow() -> int:
        from services.runtime.codec import Codec

        codec = Codec.load()
        async with groupless_consumer(args.bootstrap, topics_from_args(args).incidents,
                                      error=BrokerUnavailable,
                                      auto_offset_reset="earliest" if args.from_beginning
                                      else "latest") as consumer:
            seen = 0
            stop_at = time.monotonic() + args.timeout if args.timeout else None
            while args.max == 0 or seen < args.max:
                if stop_at is not None and time.monotonic() > stop_at:
                    break
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for rec in records:
                        if rec.value is None:
                            continue
                        decoded = codec.decode(rec.value)
                        row = {"_subject": decoded.subject, **decoded.record}
                        print(json.dumps(jsonable(row), sort_keys=True) if args.json else
                              f"{decoded.subject.split('.')[-1]} "
                              f"{json.dumps(jsonable(dict(decoded.record)), sort_keys=True)}",
                              flush=True)
                        seen += 1
        return 0

    return asyncio.run(follow())


async def _tick_round(producer: Any, bootstrap: str, topic: str, ticker: str) -> list[int]:
    """Produce one ``LivenessTick`` to every partition of ``topic``; the partitions ticked."""
    from aiokafka.errors import KafkaError

    from services.incidents.roster import roster_key
    from services.runtime.codec import Codec

    codec = Codec.load()
    parts = await topic_partitions(bootstrap, topic)
    if not parts:
        raise BrokerUnavailable(f"topic {topic} has no partitions at {bootstrap} (does it exist?)")
    issued_at = int(time.time() * 1000)
    try:
        futures = [await producer.send(
            topic, codec.encode(subjects.LIVENESS_TICK,
                                {"partition": p, "issued_at": issued_at, "ticker": ticker}),
            key=roster_key(p).encode("utf-8"), partition=p) for p in parts]
        for fut in futures:
            await fut
    except KafkaError as exc:
        raise BrokerUnavailable(f"could not publish ticks to {topic} at {bootstrap}: {exc}"
                                ) from exc
    return parts


def _cmd_tick(args: argparse.Namespace) -> int:
    if not args.every > 0:
        raise HostgateError(f"--every {args.every}: expected a positive number of seconds")
    topic = topics_from_args(args).remediation
    ticker = f"hostgate-incidents-tick@{socket.gethostname()}"[:256]

    async def run() -> int:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        producer = AIOKafkaProducer(**client_kwargs(args.bootstrap), enable_idempotence=True,
                                    acks="all")
        try:
            await producer.start()
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot reach {args.bootstrap}: {exc}") from exc
        try:
            while True:
                try:
                    parts = await _tick_round(producer, args.bootstrap, topic, ticker)
                except HostgateError as exc:
                    if args.once:
                        raise
                    print(f"hostgate: tick failed, retrying in {args.every:g}s: {exc}",
                          file=sys.stderr, flush=True)
                else:
                    print_report(args, {"topic": topic, "partitions": parts, "ticker": ticker},
                           [f"ticked {topic} partitions {parts}"])
                    sys.stdout.flush()
                if args.once:
                    return 0
                await asyncio.sleep(args.every)
        finally:
            await producer.stop()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


def command_request(args: argparse.Namespace) -> CommandRequest:
    """The command a write sub-command's arguments give: the flags of ``ack|root-cause|
    remediate|close``, or the JSON document of ``command --json-file``."""
    if args.incidents_cmd == "command":
        return parse_command_json(_read_json_file(args.json_file),
                                  source="stdin" if args.json_file == "-" else args.json_file)
    return CommandRequest(incident_id=args.incident_id, action=ACTIONS[args.incidents_cmd],
                          actor=args.actor, reason=args.reason, host_id=args.host)


def _read_json_file(name: str) -> str:
    try:
        raw = (sys.stdin.buffer.read(MAX_COMMAND_JSON_BYTES + 1) if name == "-" else
               Path(name).read_bytes()[:MAX_COMMAND_JSON_BYTES + 1])
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror or exc}") from exc
    source = "stdin" if name == "-" else name
    if len(raw) > MAX_COMMAND_JSON_BYTES:
        raise BadCommandJson(f"{source}: larger than {MAX_COMMAND_JSON_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadCommandJson(f"{source}: not UTF-8 (byte offset {exc.start})") from None


def _cmd_write(args: argparse.Namespace) -> int:
    from services.runtime.codec import Codec

    request = command_request(args)
    topics = topics_from_args(args)
    host = request.host_id
    if host is None:
        rows = asyncio.run(_read_all(args.bootstrap, topics.incidents))
        hosts = {r["host_id"] for r in rows if r["incident_id"] == request.incident_id}
        if len(hosts) != 1:
            give = "host_id" if args.incidents_cmd == "command" else "--host"
            raise IncidentNotFound(f"no incident {request.incident_id} on {topics.incidents} "
                                   f"(give {give} if it is too new to be there)")
        host = hosts.pop()
    record = remediation_record(request, host_id=host, issued_at_ms=int(time.time() * 1000))
    value = Codec.load().encode(subjects.REMEDIATION_COMMAND, record)
    asyncio.run(publish_record(args.bootstrap, topics.remediation, host, value,
                               error=BrokerUnavailable))
    summary = {k: record[k] for k in ("command_id", "incident_id", "host_id", "action")}
    print_report(args, summary, [f"published {record['action']} {record['command_id']} for "
                           f"{request.incident_id} (host {host}); the stage's answer appears in "
                           f"`hostgate incidents show {request.incident_id}`"])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hostgate incidents``."""
    p = subparsers.add_parser(
        "incidents", help="list, inspect and work attestation incidents",
        description="Incidents are opened by the incidents stage when a host fails attestation "
                    "(one per host; repeated failures add occurrences). Work them through "
                    "OPEN -> ACKNOWLEDGED -> ROOT_CAUSED -> REMEDIATED -> CLOSED.")
    sub = p.add_subparsers(dest="incidents_cmd", required=True)
    sp = sub.add_parser("list", help="incidents not yet closed (latest event of each)")
    sp.add_argument("--all", action="store_true", help="include closed incidents")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_list)
    sp = sub.add_parser("show", help="every event and refused command of one incident")
    sp.add_argument("incident_id")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_show)
    sp = sub.add_parser("tail", help="follow attest.incidents.v1 and print each record")
    sp.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    sp.add_argument("--max", type=int, default=0, help="stop after N records (0: never)")
    sp.add_argument("--timeout", type=float, default=0, help="stop after S seconds (0: never)")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_tail)
    sp = sub.add_parser(
        "tick", help="liveness ticker: tick every partition so silent hosts are reported",
        description="Run beside the incidents stage (one small process per deployment; two are "
                    "harmless). Every --every seconds, produce one hostgate.LivenessTick to each "
                    "partition of attest.remediation.v1 (explicitly by partition number, "
                    "idempotent producer). The stage checks that partition's hosts with the "
                    "tick's time as 'now' and reports each host silent for longer than "
                    "HOSTGATE_INCIDENTS_STALE_AFTER_S as a stale-host OCSF finding, even when "
                    "the partition gets no other traffic (a dead pipeline or a dead fleet). "
                    "Pick --every well below the stale window. Needs write access to "
                    "attest.remediation.v1.")
    sp.add_argument("--every", type=float, default=60.0,
                    help="seconds between rounds of ticks (default 60)")
    sp.add_argument("--once", action="store_true", help="tick every partition once and exit")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_tick)
    helps = {"ack": "acknowledge (take) an OPEN incident",
             "root-cause": "record the root cause (--reason) of an ACKNOWLEDGED incident",
             "remediate": "mark a ROOT_CAUSED incident's host remediated",
             "close": "close a REMEDIATED incident after the post-mortem"}
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text + ". Publishes a "
                            "RemediationCommand; an invalid step is refused by the stage "
                            "with a RemediationRejected record.")
        sp.add_argument("incident_id")
        sp.add_argument("--actor", required=True, help="who you are (recorded on the incident)")
        sp.add_argument("--reason", required=True,
                        help="why; for root-cause, the root cause itself")
        sp.add_argument("--host", help="the incident's host (default: looked up)")
        add_kafka_arguments(sp)
        sp.set_defaults(func=_cmd_write)
    sp = sub.add_parser(
        "command", help="publish a remediation command given as JSON (a SOAR playbook's form)",
        description="Read one JSON remediation command and publish the same RemediationCommand "
                    "the ack/root-cause/remediate/close flags would. The document: "
                    '{"incident_id": ..., "action": "ACKNOWLEDGE|ROOT_CAUSE|REMEDIATE|CLOSE", '
                    '"actor": ..., "reason": ..., "host_id": ... (optional: looked up), '
                    '"command_id": ... (optional: a fresh id; a repeated one is refused as '
                    "DUPLICATE, so a retried playbook step is applied once)}. Unknown keys are "
                    "refused. The JSON Schema is in the README (For the SOC).")
    sp.add_argument("--json-file", required=True, metavar="FILE",
                    help="the JSON command, or - for stdin")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_write)
