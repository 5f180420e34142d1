"""What the ``hostgate`` commands share, so each convention is written once: the Kafka flags
(``--bootstrap``, the Kafka servers in every command, and ``--topic-namespace``), ``--json``,
how a result is printed (as JSON, as lines or as a table) and how a command publishes one
record.

The evidence commands of ``services.tpm`` (``hostgate log``/``ima``, and ``hostgate policy``,
which reads logs too) keep theirs in ``services.tpm.cli_conventions``: that package imports
nothing of hostgate but ``services.errors``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from services.errors import HostgateError
from services.runtime.cli_parser import BootstrapServers
from services.runtime.connection import (
    BOOTSTRAP_ENV,
    DEFAULT_BOOTSTRAP,
    client_kwargs,
    env_bootstrap,
)
from services.runtime.readers import TopicUnavailable, jsonable
from services.runtime.topics import add_namespace_argument
from services.terminal import print_table

__all__ = [
    "add_bootstrap_argument",
    "add_broker_argument",
    "add_json_flag",
    "add_kafka_arguments",
    "chosen_broker",
    "print_json",
    "print_report",
    "print_table",
    "publish_record",
]

_SERVERS = "Kafka bootstrap servers"


def add_bootstrap_argument(parser: argparse.ArgumentParser, *, brief: bool = False,
                           hint: str = "") -> None:
    """``--bootstrap HOST:PORT[,...]``, the Kafka servers (its one meaning in every command):
    default ``HOSTGATE_BOOTSTRAP`` or the local broker's address, read when the parser is built.
    ``brief``: the help names the variable only (the operator commands). ``hint`` is added to
    the error for a missing or malformed value."""
    text = (f"{_SERVERS} [{BOOTSTRAP_ENV}]" if brief
            else f"{_SERVERS} (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--bootstrap", action=BootstrapServers, default=env_bootstrap(),
                        hint=hint, help=text)
    _add_broker_alias(parser, hint)


def add_broker_argument(parser: argparse.ArgumentParser, *,
                        fallback: str = DEFAULT_BOOTSTRAP, hint: str = "") -> None:
    """``--bootstrap HOST:PORT[,...]`` with no default, resolved by :func:`chosen_broker`
    (``fallback`` says in the help what is used without it or ``HOSTGATE_BOOTSTRAP``)."""
    parser.add_argument("--bootstrap", action=BootstrapServers, default=None, hint=hint,
                        help=f"{_SERVERS} (default: ${BOOTSTRAP_ENV} or {fallback})")
    _add_broker_alias(parser, hint)


def _add_broker_alias(parser: argparse.ArgumentParser, hint: str) -> None:
    # ``--broker`` was what two commands called their Kafka servers while their ``--bootstrap``
    # meant something else; kept, hidden, so scripts written against them still work.
    parser.add_argument("--broker", action=BootstrapServers, dest="bootstrap", hint=hint,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def chosen_broker(args: argparse.Namespace,
                  fallback: Callable[[], str] = lambda: DEFAULT_BOOTSTRAP) -> str:
    """``--bootstrap`` if given, else a non-empty ``HOSTGATE_BOOTSTRAP``, else ``fallback()``."""
    return str(args.bootstrap or os.environ.get(BOOTSTRAP_ENV) or fallback())


def add_json_flag(parser: argparse.ArgumentParser, help: str = "print JSON") -> None:
    """``--json``: print the command's result as JSON (``help`` says which result)."""
    parser.add_argument("--json", action="store_true", help=help)


def add_kafka_arguments(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """What every operator command that reads or writes the deployment's topics takes:
    ``--bootstrap``, ``--topic-namespace`` and (``json_flag``) ``--json``."""
    add_bootstrap_argument(parser, brief=True)
    add_namespace_argument(parser)
    if json_flag:
        add_json_flag(parser)


def print_json(doc: Any, *, indent: int | None = 1, sort_keys: bool = True) -> None:
    """``doc`` as JSON on stdout, then a newline."""
    json.dump(doc, sys.stdout, indent=indent, sort_keys=sort_keys)
    print()


def print_report(args: argparse.Namespace, data: Any, lines: Sequence[str]) -> None:
    """With ``--json`` the decoded records ``data`` (:func:`jsonable`), else ``lines`` (or
    ``(none)``)."""
    if args.json:
        print_json(jsonable(data), indent=2)
    else:
        print("\n".join(lines) if lines else "(none)")


async def publish_record(bootstrap: str, topic: str, key: str, value: bytes, *,
                         error: type[HostgateError] = TopicUnavailable) -> Any:
    """Write one encoded record with an idempotent producer (``acks=all``) and wait for the
    broker; its metadata. A Kafka failure raises ``error`` naming the topic and broker. No
    partition is given: the default partitioner puts it on its key's partition."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(**client_kwargs(bootstrap), enable_idempotence=True, acks="all")
    try:
        await producer.start()
        return await producer.send_and_wait(topic, value, key=key.encode("utf-8"))
    except KafkaError as exc:
        raise error(f"could not publish to {topic} at {bootstrap}: {exc}") from exc
    finally:
        await producer.stop()
