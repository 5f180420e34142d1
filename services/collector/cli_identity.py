"""``hostgate identity``: the operator's identity commands.

``release HOST --actor NAME --reason TEXT`` publishes an ``IdentityCommand`` (RELEASE) on
``attest.identity.v1`` — a topic only the operator principal may write — and returns once the
broker has it. The collector then removes the host's enrolment and its EK binding and writes
the audit record (``IdentityEvent``) on ``attest.identity.events.v1``
(``services.collector.identity``): the host, or a re-imaged machine with a new TPM, may enrol
again, and the issuer forgets the EK it bound the host to.

``show HOST`` reads, without joining a group, the host's newest enrolment row, the EK
registry's binding for its EK and the host's identity audit records: each from the one
partition the host's (or the EK's) key maps to.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from services.errors import ConfigError
from services.runtime.cli_conventions import add_kafka_arguments, print_json, publish_record
from services.runtime.partitioner import key_partition
from services.runtime.readers import (
    TopicUnavailable,
    groupless_consumer,
    jsonable,
    read_to_end,
    rewind,
    topic_partitions,
)
from services.runtime.topics import topics_from_args
from services.wire.subjects import IDENTITY_COMMAND, IDENTITY_EVENT

MAX_TEXT = 500
READ_TIMEOUT_S = 30.0


def _text(value: str, flag: str) -> str:
    text = " ".join(value.split())
    if not text:
        raise ConfigError(f"{flag} must not be empty: every identity command names who asked "
                            "and why")
    if len(text) > MAX_TEXT:
        raise ConfigError(f"{flag} is {len(text)} characters (limit {MAX_TEXT})")
    return text


def _host(value: str) -> str:
    if not value or len(value) > 128 or value != value.strip():
        raise ConfigError(f"host id {value[:64]!r} must be 1..128 characters without "
                            "surrounding spaces")
    return value


def _cmd_release(args: argparse.Namespace) -> int:
    from services.runtime.codec import Codec

    host = _host(args.host_id)
    record = {"command_id": f"idc-{uuid.uuid4().hex}", "host_id": host, "action": "RELEASE",
              "actor": _text(args.actor, "--actor"), "reason": _text(args.reason, "--reason"),
              "issued_at": int(time.time() * 1000)}
    topic = topics_from_args(args).identity
    value = Codec.load().encode(IDENTITY_COMMAND, record)
    # On the host's partition (its key's), the only one whose collector task may act on it.
    meta = asyncio.run(publish_record(args.bootstrap, topic, host, value))
    out = {"command_id": record["command_id"], "host_id": host, "action": "RELEASE",
           "topic": meta.topic, "partition": meta.partition, "offset": meta.offset}
    if args.json:
        print_json(out, indent=None)
    else:
        print(f"release of {host} requested ({out['command_id']}, {topic}[{meta.partition}]@"
              f"{meta.offset}); the collector records the outcome on "
              f"{topics_from_args(args).identity_events}")
    return 0


async def _latest(bootstrap: str, topic: str, key: str, subject: str | None = None
                  ) -> list[dict[str, Any]]:
    """Every committed record of ``key`` on the partition ``key`` maps to (oldest first; a
    tombstone as None-valued entry is dropped, and resets what came before)."""
    from aiokafka import TopicPartition

    from services.runtime.codec import Codec

    parts = await topic_partitions(bootstrap, topic)
    if not parts:
        raise TopicUnavailable(f"topic {topic} does not exist at {bootstrap}")
    tp = TopicPartition(topic, key_partition(key, len(parts)))
    codec = Codec.load()
    found: list[dict[str, Any]] = []
    async with groupless_consumer(bootstrap) as consumer:
        ends = await rewind(consumer, [tp])
        async for rec in read_to_end(consumer, [tp], ends, timeout_s=READ_TIMEOUT_S,
                                     timed_out=None):
            if rec.key != key.encode("utf-8") or rec.offset >= ends[tp]:
                continue
            if rec.value is None:
                found.clear()
                continue
            decoded = codec.decode(rec.value)
            if subject is None or decoded.subject == subject:
                found.append(decoded.record)
    return found


def _cmd_show(args: argparse.Namespace) -> int:
    host = _host(args.host_id)
    topics = topics_from_args(args)

    async def gather() -> dict[str, Any]:
        rows = await _latest(args.bootstrap, topics.changelog("collector", "enrollments"), host)
        row = rows[-1] if rows else None
        digest = row.get("ek_key_sha256") if row is not None else None
        if row is not None and digest is None and row.get("state") == "ENROLLED":
            from services.ekid import ek_key_sha256

            digest = ek_key_sha256(bytes(row["ek"]["ek_public"]))
        binding = None
        if digest is not None:
            found = await _latest(args.bootstrap, topics.changelog("collector", "ek_bindings"),
                                  bytes(digest).hex())
            binding = found[-1] if found else None
        audit = await _latest(args.bootstrap, topics.identity_events, host,
                              IDENTITY_EVENT)
        enrollment = None
        if row is not None:
            enrollment = {"state": row["state"], "ak_name": row["ak_name"],
                          "request_id": row["request_id"], "ek": {
                              k: v for k, v in row["ek"].items() if k != "ek_public"},
                          "pending": [{"challenge_id": p["challenge_id"], "stage": p["stage"],
                                       "expires_at": p["expires_at"]}
                                      for p in row.get("pending") or []],
                          "updated_at": row["updated_at"]}
        view: dict[str, Any] = jsonable({"host_id": host, "enrollment": enrollment,
                         "ek_sha256": None if digest is None else bytes(digest),
                         "binding": None if binding is None else {
                             "host_id": binding["host_id"], "bound_at": binding["bound_at"],
                             "updated_at": binding["updated_at"]},
                         "audit": [{"event": e["event"], "actor": e["actor"],
                                    "reason": e["reason"], "command_id": e["command_id"],
                                    "occurred_at": e["occurred_at"], "detail": e["detail"]}
                                   for e in audit]})
        return view

    view = asyncio.run(gather())
    if args.json:
        print_json(view, indent=None)
        return 0
    enr = view["enrollment"]
    print(f"host {host}: " + ("no enrolment" if enr is None else
                              f"{enr['state']}, AK {enr['ak_name'][:20]}…, "
                              f"{len(enr['pending'])} activation(s) open"))
    if view["ek_sha256"]:
        holder = view["binding"]["host_id"] if view["binding"] else "nobody (not bound)"
        print(f"  EK {view['ek_sha256'][:16]}… bound to {holder}")
    for e in view["audit"]:
        print(f"  {e['occurred_at']} {e['event']} by {e['actor']}: {e['reason']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hostgate identity``."""
    p = subparsers.add_parser(
        "identity", help="release a host id and its EK binding (audited), show a host's identity",
        description="One host id is bound to one EK (TPM) and one EK to one host id. Re-binding "
                    "(a re-imaged machine with a new TPM, a TPM moved to another id) is an "
                    "explicit operator command, recorded with who and why.")
    sub = p.add_subparsers(dest="identity_cmd", required=True)
    sp = sub.add_parser(
        "release", help="remove a host's enrolment and EK binding so it can enrol again",
        description="Publishes an IdentityCommand on attest.identity.v1 (operator principal "
                    "only). The collector removes the host's enrolment and releases its EK "
                    "binding, and records who, why and what on attest.identity.events.v1; the "
                    "issuer resets the EK it binds the host to and revokes its certificates.")
    sp.add_argument("host_id", metavar="HOST")
    sp.add_argument("--actor", required=True, help="who you are (recorded)")
    sp.add_argument("--reason", required=True, help="why, e.g. a change ticket (recorded)")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_release)
    sp = sub.add_parser("show", help="a host's enrolment, EK binding and identity audit")
    sp.add_argument("host_id", metavar="HOST")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_show)
