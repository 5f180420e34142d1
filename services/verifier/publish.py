"""``hostgate policy publish``: put one policy version on the compacted ``attest.policies.v1``
(what verifiers apply) and on ``attest.policies.history.v1`` (what auditors replay against).

The document is loaded first (a malformed policy is refused with its line and reason), then the
topic is read in full (read_committed) to find the newest version already published under the
same id: a version that is not higher would never be in force (the verifier takes the highest),
so it is refused. ``--first-version`` publishes the first version of a policy into an empty
topic and refuses if that id already has one (a guard for provisioning scripts; it was called
``--bootstrap`` before that flag came to mean the Kafka servers in every command).

The record is written by an idempotent producer with ``acks=all``, key = policy id: first to
the history topic, then, once that is acknowledged, to the compacted topic. So a version in force
is always in the history; if the second write fails, the history holds a version that never
came into force, which replay indexes by digest like any other and no verdict names.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.errors import ConfigError, HostgateError
from services.runtime.cli_conventions import (
    add_broker_argument,
    add_json_flag,
    chosen_broker,
    print_json,
)
from services.runtime.cli_parser import RemovedFlag
from services.runtime.codec import Codec
from services.runtime.connection import client_kwargs
from services.runtime.stage import GlobalTableSpec
from services.runtime.topics import Topics, add_namespace_argument, topics_from_args
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.loader import load_policy
from services.verifier.policy_in_force import newer, published_record
from services.wire.subjects import POLICY_PUBLISHED

MAX_POLICY_FILE = 1 << 20
_FIRST_VERSION_HINT = " (a first publication is now --first-version)"
_VERSION_RE = re.compile(r"^[0-9]{1,9}$")


class PublishRefused(HostgateError):
    """The policy version cannot be published (not newer than the one in the topic...)."""


@dataclass(frozen=True)
class Published:
    """What was written, for the CLI's output."""

    topic: str
    partition: int
    offset: int
    policy_id: str
    version: int
    digest: str
    document_sha256: str
    history_topic: str
    history_partition: int
    history_offset: int

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "policy_id": self.policy_id, "version": self.version, "digest": self.digest,
                "document_sha256": self.document_sha256,
                "history": {"topic": self.history_topic, "partition": self.history_partition,
                            "offset": self.history_offset}}


def read_policy_text(path: Path) -> str:
    """The policy file's text (bounded; UTF-8), as ``ConfigError`` naming the file if unreadable."""
    try:
        raw = path.read_bytes()[: MAX_POLICY_FILE + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_POLICY_FILE:
        raise PolicyError(f"policy file {path} is larger than {MAX_POLICY_FILE} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy file {path} is not UTF-8 (byte offset {exc.start})") from exc


def choose_version(text: str, explicit: int | None) -> int:
    """``--policy-version`` if given, else the document's ``metadata.version`` when it is an integer."""
    if explicit is not None:
        if not 1 <= explicit < 2**31:
            raise ConfigError("--policy-version must be 1..2147483647")
        return explicit
    meta = load_policy(text).metadata.version
    if not _VERSION_RE.match(meta) or int(meta) < 1:
        raise ConfigError(f"metadata.version {meta!r} is not a positive integer; pass --policy-version")
    return int(meta)


async def publish(text: str, *, bootstrap: str, version: int, author: str,
                  topics: Topics, first_only: bool = False,
                  now_ms: int | None = None, allow_permissive: bool = False) -> Published:
    """Publish ``text`` as ``version``; see the module docstring for what is refused. A policy
    that declares ``spec.permissive: true`` (it may admit any host) needs ``allow_permissive``:
    publishing one is a decision, never an accident."""
    from aiokafka import AIOKafkaProducer

    from services.runtime.globaltable import GlobalTable

    record = published_record(text, version=version, author=author,
                              published_at_ms=now_ms if now_ms is not None
                              else int(time.time() * 1000))
    policy = load_policy(text)
    if policy.spec.permissive and not allow_permissive:
        raise PublishRefused(f"policy {policy.metadata.id!r} declares spec.permissive: true (it "
                             "may admit any host; see `hostgate policy lint`); pass "
                             "--allow-permissive to publish it anyway")
    codec = Codec.load()
    table = GlobalTable("policies", GlobalTableSpec(topics.policies, POLICY_PUBLISHED, newer),
                        bootstrap=bootstrap, codec=codec, client_id="hostgate.policy-publish")
    await table.start()
    try:
        current = table.get(record["policy_id"])
    finally:
        await table.stop()
    pid = record["policy_id"]
    if current is not None and first_only:
        raise PublishRefused(f"--first-version: policy {pid!r} already has version "
                             f"{current['version']} in {topics.policies}")
    if current is not None and int(current["version"]) >= version:
        raise PublishRefused(f"policy {pid!r} version {version} is not newer than version "
                             f"{current['version']} already in {topics.policies}; the verifier "
                             "would keep the newer one (pass a higher --policy-version)")
    value, key = codec.encode(POLICY_PUBLISHED, record), pid.encode("utf-8")
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), enable_idempotence=True,
                                acks="all", client_id="hostgate.policy-publish")
    await producer.start()
    try:
        kept = await producer.send_and_wait(topics.policy_history, value, key=key)
        meta = await producer.send_and_wait(topics.policies, value, key=key)
    finally:
        await producer.stop()
    return Published(topic=meta.topic, partition=meta.partition, offset=meta.offset,
                     policy_id=pid, version=version, digest=policy.digest,
                     document_sha256=bytes(record["digest"]).hex(),
                     history_topic=kept.topic, history_partition=kept.partition,
                     history_offset=kept.offset)


def add_publish_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``publish`` to ``hostgate policy``'s sub-commands."""
    p = sub.add_parser(
        "publish",
        help="publish a policy version to attest.policies.v1 and its history topic",
        description="Load POLICY (refusing a malformed one with its line and reason), check "
        "that its version is newer than any already published under the same id, and write it "
        "as a hostgate.PolicyPublished record keyed by the policy id, to "
        "attest.policies.history.v1 (kept forever, for audit replay) and then to "
        "attest.policies.v1. Verifiers whose HOSTGATE_POLICY_ID names it pick it up within a "
        "second; the highest version is the one in force.",
        epilog="Environment: HOSTGATE_BOOTSTRAP (broker; default the local broker), "
        "HOSTGATE_TOPIC_NAMESPACE (the deployment's namespace: topics <ns>.<name>).",
    )
    p.add_argument("policy", type=Path, metavar="POLICY", help="policy YAML file")
    p.add_argument("--first-version", action="store_true",
                   help="first publication: refuse if the policy id already has a version")
    p.add_argument("--policy-version", dest="version", type=int, default=None,
                   metavar="VERSION",
                   help="version to publish (default: metadata.version, if an integer)")
    p.add_argument("--version", action=RemovedFlag,
                   instead="is now --policy-version here (--version is hostgate's own)")
    p.add_argument("--author", default=None, help="who publishes (default: the login name)")
    add_broker_argument(p, fallback="the local broker", hint=_FIRST_VERSION_HINT)
    p.add_argument("--allow-permissive", action="store_true",
                   help="publish a policy that declares spec.permissive: true (refused "
                        "otherwise: such a policy may admit any host)")
    add_namespace_argument(p)
    add_json_flag(p, "print what was written as JSON")
    p.set_defaults(func=cmd_publish)


def _local_broker() -> str:
    from services.runtime.localbroker import BrokerConfig

    return BrokerConfig.from_env().bootstrap


def cmd_publish(args: argparse.Namespace) -> int:
    """Run ``hostgate policy publish``."""
    text = read_policy_text(args.policy)
    version = choose_version(text, args.version)
    author = args.author or getpass.getuser()
    topics = topics_from_args(args)
    done = asyncio.run(publish(text, bootstrap=chosen_broker(args, _local_broker),
                               version=version, author=author,
                               topics=topics, first_only=args.first_version,
                               allow_permissive=args.allow_permissive))
    if args.json:
        print_json(done.to_json())
    else:
        print(f"published policy {done.policy_id} version {done.version} ({done.digest}) to "
              f"{done.topic}[{done.partition}]@{done.offset} and "
              f"{done.history_topic}[{done.history_partition}]@{done.history_offset}")
    return 0
