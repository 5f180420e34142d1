"""``hostgate replay``: re-verify recorded evidence from ``attest.collected.v1`` (audit replay).

The Kafka side of :mod:`services.verifier.audit_replay`. It has its own consumer per topic — no
consumer group, no offset commits, ``read_committed`` — so it has no effect on the live stages.
Each consumer is assigned every partition of its topic (the broker serves them in parallel) and
reads up to the end offsets taken when it started; the topics are read concurrently.

* without ``--policy``: every recorded verdict is recomputed under the policy it names (found by
  digest among every record of ``attest.policies.history.v1`` and ``attest.policies.v1``: the
  compacted topic loses superseded versions, the history keeps them) and compared field by
  field; any difference is a finding and the exit status is 1;
* with ``--policy FILE``: a what-if — which hosts would change verdict under that policy, and
  why; the exit status is 0.

Times (``--from``/``--to``) select collected evidence by its record timestamp: ISO 8601
(``2026-01-01T10:00``, UTC unless an offset is given), a date, epoch milliseconds, or a
duration back from now (``15m``, ``2h``, ``7d``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.errors import ConfigError, HostgateError
from services.runtime.cli_conventions import (
    add_broker_argument,
    add_json_flag,
    chosen_broker,
    print_json,
    print_table,
)
from services.runtime.connection import client_kwargs
from services.runtime.readers import groupless_consumer, read_to_end, rewind
from services.runtime.topics import Topics, add_namespace_argument, topics_from_args
from services.verifier.audit_replay import (
    AuditReport,
    Located,
    PolicyIndex,
    WhatIfReport,
    audit,
    what_if,
)
from services.wire.subjects import EVIDENCE_COLLECTED, POLICY_PUBLISHED, VERDICT

READ_TIMEOUT_S = 300.0
_DURATION = re.compile(r"^([0-9]{1,9})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ReplayError(HostgateError):
    """Replay could not read what it needs (topic missing, broker unreachable, bad option)."""


def parse_time(text: str, *, now_ms: int) -> int:
    """``--from``/``--to`` value -> epoch milliseconds (see the module docstring)."""
    raw = text.strip()
    m = _DURATION.match(raw)
    if m:
        return now_ms - int(m.group(1)) * _UNIT_S[m.group(2)] * 1000
    if raw.isdigit():
        return int(raw)
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"time {text!r} is not ISO 8601, epoch milliseconds or a duration "
                          "like 15m/2h/7d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


async def partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Partition count of each existing topic in ``topics`` (missing topics are left out)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap), client_id="hostgate.replay")
    await admin.start()
    try:
        docs = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {str(d["topic"]): len(d["partitions"]) for d in docs
            if d.get("partitions") and not d.get("error_code")}


@dataclass(frozen=True)
class ReadSpec:
    """What to read from one topic."""

    topic: str
    subject: str
    start_ms: int | None = None
    end_ms: int | None = None
    host: str | None = None


async def read_topic(bootstrap: str, spec: ReadSpec, codec: Any,
                     on_record: Callable[[], None] | None = None) -> list[Located]:
    """Every committed record of ``spec.topic`` from ``start_ms`` up to the end offsets taken
    now (``end_ms`` bounds by record timestamp), decoded as ``spec.subject``; tombstones and
    other hosts' records (``spec.host``, by key) are skipped."""
    from aiokafka import TopicPartition

    async with groupless_consumer(bootstrap, error=ReplayError,
                                  unreachable="cannot reach Kafka at {bootstrap}: {exc_type}",
                                  client_id="hostgate.replay", auto_offset_reset="earliest",
                                  max_partition_fetch_bytes=8 * 1024 * 1024) as consumer:
        count = (await partition_counts(bootstrap, [spec.topic])).get(spec.topic, 0)
        if not count:
            raise ReplayError(f"topic {spec.topic} does not exist (`hostgate topics ensure` "
                              "creates hostgate's topics)")
        tps = [TopicPartition(spec.topic, p) for p in range(count)]
        ends = await rewind(consumer, tps)
        if spec.start_ms is not None:
            found = await consumer.offsets_for_times({tp: spec.start_ms for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        out: list[Located] = []
        key = spec.host.encode() if spec.host is not None else None
        async for r in read_to_end(consumer, tps, ends, timeout_s=READ_TIMEOUT_S,
                                   timed_out=lambda: ReplayError(
                                       f"could not read {spec.topic} to its end offsets within "
                                       f"{READ_TIMEOUT_S:.0f}s")):
            if r.offset >= ends[TopicPartition(r.topic, r.partition)]:
                continue
            if r.value is None or (key is not None and r.key != key):
                continue
            if spec.end_ms is not None and r.timestamp > spec.end_ms:
                continue
            try:
                rec = codec.decode(r.value, expected={spec.subject}).record
            except HostgateError:
                continue  # not this record type: the verifier DLQs such bytes
            out.append(Located(r.topic, r.partition, r.offset, r.timestamp, rec))
            if on_record is not None:
                on_record()
        out.sort(key=lambda loc: (loc.partition, loc.offset))
        return out


@dataclass(frozen=True, repr=False)
class Recorded:
    """Everything replay read."""

    collected: list[Located]
    verdicts: list[Located]
    policies: list[Located]

    def __repr__(self) -> str:
        # Counts only: asyncio.run (CPython 3.11) formats the finished main task, result
        # included, when it restores the SIGINT handler; a full repr of thousands of records
        # with their boot logs took seconds.
        return (f"Recorded(collected={len(self.collected)}, verdicts={len(self.verdicts)}, "
                f"policies={len(self.policies)})")


async def read_recorded(bootstrap: str, *, namespace: str = "", start_ms: int | None = None,
                        end_ms: int | None = None, host: str | None = None,
                        on_record: Callable[[], None] | None = None) -> Recorded:
    """Read collected evidence, verdicts and policies concurrently (see the module docstring)."""
    from services.runtime.codec import Codec

    topics = Topics(namespace)
    codec = Codec.load()
    collected, verdicts, history, policies = await asyncio.gather(
        read_topic(bootstrap, ReadSpec(topics.collected, EVIDENCE_COLLECTED, start_ms, end_ms,
                                       host), codec, on_record),
        read_topic(bootstrap, ReadSpec(topics.verdicts, VERDICT, start_ms, None, host),
                   codec, on_record),
        read_topic(bootstrap, ReadSpec(topics.policy_history, POLICY_PUBLISHED), codec),
        read_topic(bootstrap, ReadSpec(topics.policies, POLICY_PUBLISHED), codec))
    # The compacted topic as well: it may still hold versions published before the history
    # topic existed. The index keeps one entry per digest.
    return Recorded(collected, verdicts, [*history, *policies])


def run_replay(recorded: Recorded, *, policy_text: str | None, time_filtered: bool,
               progress: Callable[[int], None] | None = None,
               jobs: int = 1) -> AuditReport | WhatIfReport:
    """Audit (no policy) or what-if over what was read."""
    collected_keys = {(c.topic, c.partition, c.offset) for c in recorded.collected}
    verdicts = recorded.verdicts
    if time_filtered:  # verdicts of evidence outside the range are not this run's business
        verdicts = [v for v in verdicts if (str(v.record["collected"]["topic"]),
                                            int(v.record["collected"]["partition"]),
                                            int(v.record["collected"]["offset"]))
                    in collected_keys]
    if policy_text is None:
        index = PolicyIndex.build(p.record for p in recorded.policies)
        return audit(recorded.collected, verdicts, index, progress=progress, jobs=jobs)
    return what_if(recorded.collected, verdicts, load_what_if_policy(policy_text),
                   progress=progress)


def load_what_if_policy(text: str) -> Any:
    """The ``PolicyInForce`` of a policy file (version from ``metadata.version`` if numeric)."""
    from services.verifier.policy.loader import load_policy
    from services.verifier.policy_in_force import load_in_force, published_record

    meta = load_policy(text).metadata.version
    version = int(meta) if meta.isdigit() and len(meta) < 10 else 0
    return load_in_force(published_record(text, version=version, published_at_ms=0,
                                          author="what-if"))


# --- output ---------------------------------------------------------------------------------
def _print_audit(report: AuditReport) -> None:
    """The audit report as tables (``services.terminal``: boxed on a terminal, tab-separated
    and never cut when piped, so digests and coordinates stay whole)."""
    from rich.markup import escape

    colour = "green" if report.ok else "red"
    print_table("audit replay", ("item", "value"), [
        ("evidence records read", str(report.evidences)),
        ("recorded verdicts", str(report.verdicts)),
        ("reproduced exactly", f"[green]{report.reproduced}[/green]"),
        ("by result", escape(", ".join(f"{k} {n}" for k, n in sorted(
            report.by_result.items())) or "-")),
        ("findings", f"[{colour}]{len(report.findings)}[/{colour}]")])
    if report.findings:
        rows = []
        for f in report.findings:
            what = f.message + "".join(f"\n  {d.field}: recorded {d.recorded} / replayed "
                                       f"{d.replayed}" for d in f.diffs[:6])
            rows.append(tuple(escape(c) for c in (f.kind.value, f.host_id, f.where, what)))
        print_table("findings", ("kind", "host", "where", "what"), rows,
                    fold=("kind", "host", "where", "what"))


def _print_what_if(report: WhatIfReport) -> None:
    """The what-if report: one summary line, then a table of the verdicts that would change
    (through ``services.terminal``, as :func:`_print_audit`)."""
    from rich.markup import escape

    print(f"what-if under {report.policy}: {report.evidences} evidence records, "
          f"{len(report.changes)} would change ({len(report.hosts)} hosts)")
    if report.changes:
        rows = []
        for c in report.changes:
            why = "; ".join(c.sentences) or (
                "no longer fails: " + ", ".join(c.removed_rules) if c.removed_rules else "-")
            rows.append(tuple(escape(v) for v in (c.host_id, c.where, c.recorded, c.would_be,
                                                   why)))
        columns = ("host", "evidence", "recorded", "would be", "why")
        print_table("verdicts that would change", columns, rows, fold=columns)


def _cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    now_ms = int(time.time() * 1000)
    start = parse_time(args.from_time, now_ms=now_ms) if args.from_time else None
    end = parse_time(args.to_time, now_ms=now_ms) if args.to_time else None
    if start is not None and end is not None and end < start:
        raise ConfigError("--to is before --from")
    policy_text = None
    if args.policy is not None:
        from services.verifier.publish import read_policy_text

        policy_text = read_policy_text(args.policy)
    bootstrap = chosen_broker(args)
    namespace = topics_from_args(args).namespace
    console = Console(stderr=True)
    show = console.is_terminal and not args.json
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True, disable=not show) as bar:
        reading = bar.add_task("reading records", total=None)
        recorded = asyncio.run(read_recorded(
            bootstrap, namespace=namespace, start_ms=start, end_ms=end, host=args.host,
            on_record=lambda: bar.advance(reading)))
        total = len(recorded.verdicts if policy_text is None else recorded.collected)
        task = bar.add_task("re-appraising", total=total)
        report = run_replay(recorded, policy_text=policy_text,
                            time_filtered=start is not None or end is not None,
                            progress=lambda n: bar.update(task, completed=n), jobs=args.jobs)
    if args.json:
        print_json(report.to_json())
    elif isinstance(report, AuditReport):
        _print_audit(report)
    else:
        _print_what_if(report)
    if isinstance(report, AuditReport):
        return 0 if report.ok else 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hostgate replay``."""
    p = subparsers.add_parser(
        "replay", help="re-verify recorded evidence and compare with the recorded verdicts",
        description="Audit replay. Reads attest.collected.v1, attest.verdicts.v1, "
        "attest.policies.history.v1 and attest.policies.v1 with its own consumers (no group, "
        "no commits, read_committed: the live stages are not affected) and re-appraises the "
        "evidence with the verifier's core. Without --policy every recorded verdict must be "
        "reproduced exactly under the policy it names; any difference is a finding (a bug, or "
        "a tampered record) and the exit status is 1. With --policy it is a what-if: which "
        "hosts would change verdict under that policy, and why.",
        epilog="TIME is ISO 8601 (UTC unless an offset is given), epoch milliseconds, or a "
        "duration back from now such as 15m, 2h, 7d; it selects evidence by record timestamp. "
        "Environment: HOSTGATE_BOOTSTRAP, HOSTGATE_TOPIC_NAMESPACE.")
    p.add_argument("--from", dest="from_time", metavar="TIME", default=None,
                   help="only evidence recorded at or after TIME")
    p.add_argument("--to", dest="to_time", metavar="TIME", default=None,
                   help="only evidence recorded at or before TIME")
    p.add_argument("--host", default=None, metavar="ID", help="only this host's records")
    p.add_argument("--policy", type=Path, default=None, metavar="FILE",
                   help="what-if: appraise under this policy YAML instead of the recorded ones")
    add_broker_argument(p)
    p.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="audit: re-appraise in N processes (default: one per CPU, %(default)s "
                        "here); the report is the same for any N")
    add_namespace_argument(p)
    add_json_flag(p, "print the report as JSON")
    p.set_defaults(func=_cmd_replay)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value
