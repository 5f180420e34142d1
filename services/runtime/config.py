"""``WorkerConfig``: every setting of a worker, from flags and environment, read once.

Precedence: command-line flag, then environment variable, then the default below. Nothing else
in the runtime reads the environment.

==============================  =========================================  =================
environment                     meaning                                    default
==============================  =========================================  =================
``HOSTGATE_BOOTSTRAP``          Kafka bootstrap servers                    ``127.0.0.1:19092``
``HOSTGATE_TOPIC_NAMESPACE``    the deployment's namespace: topics, the    empty
                                group and so the transactional ids become
                                ``<ns>.<name>`` (``runtime.topics.Topics``)
``HOSTGATE_GROUP``              consumer group inside the namespace (also  ``hostgate.<stage>``
                                the prefix of the transactional ids)
``HOSTGATE_INSTANCE_ID``        static group membership id (KIP-345);      unset (dynamic)
                                unique per live worker
``HOSTGATE_BATCH_MAX_RECORDS``  most records fetched and committed per     ``500``
                                poll (per transaction at most this many)
``HOSTGATE_BATCH_MAX_MS``       a transaction is committed once it has     ``2000``
                                been open this long, even if not full
``HOSTGATE_POLL_TIMEOUT_MS``    how long one poll waits for records        ``200``
``HOSTGATE_TXN_TIMEOUT_MS``     broker aborts a transaction open longer    ``60000``
``HOSTGATE_SESSION_TIMEOUT_MS`` group session timeout                      ``10000``
``HOSTGATE_HTTP_HOST``          address of /healthz /readyz /metrics       ``127.0.0.1``
``HOSTGATE_HTTP_PORT``          its port; ``0`` = no HTTP server           ``0``
``HOSTGATE_LOG_LEVEL``          debug, info, warning, error                ``info``
``HOSTGATE_SCHEMA_DIR``         directory of ``.avsc`` schemas             the repo's ``schemas/``
==============================  =========================================  =================

The stage's consumer group is ``group_id``: ``HOSTGATE_GROUP`` inside the namespace, so two
deployments with different namespaces never share a group, and the per-task transactional ids
``<group_id>.task-<p>`` never fence each other's producers. ``exactly_once=False`` (idempotent
producer and offset commits, no transactions) is a keyword for the runtime benchmark's baseline
only (``bench/runtime.py``); no flag or environment variable sets it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from services.errors import ConfigError
from services.runtime.connection import BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP
from services.runtime.topics import Topics

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class WorkerConfig:
    """One worker's settings (see the module docstring for the environment names)."""

    stage: str
    bootstrap: str = DEFAULT_BOOTSTRAP
    namespace: str = ""
    group: str = ""
    """The group as configured (default ``hostgate.<stage>``); ``group_id`` is the one used."""
    instance_id: str | None = None
    batch_max_records: int = 500
    batch_max_ms: int = 2000
    poll_timeout_ms: int = 200
    txn_timeout_ms: int = 60000
    session_timeout_ms: int = 10000
    exactly_once: bool = True
    """``False``: at-least-once, the benchmark's baseline only (not settable by env or flag)."""
    http_host: str = "127.0.0.1"
    http_port: int = 0
    log_level: str = "info"
    schema_dir: Path | None = None

    def __post_init__(self) -> None:
        Topics(self.namespace)  # ConfigError on a malformed namespace
        if not self.group:
            object.__setattr__(self, "group", f"hostgate.{self.stage}")
        checks = [
            (1 <= self.batch_max_records <= 100_000, "batch_max_records must be 1..100000"),
            (self.batch_max_ms >= 1, "batch_max_ms must be ≥ 1"),
            (self.poll_timeout_ms >= 0, "poll_timeout_ms must be ≥ 0"),
            (self.session_timeout_ms >= 1000, "session_timeout_ms must be ≥ 1000"),
            # A transaction must finish well inside the broker's timeout, or the broker aborts it
            # under us and the next call fails with ProducerFenced.
            (self.batch_max_ms * 3 <= self.txn_timeout_ms,
             "batch_max_ms must be at most a third of txn_timeout_ms"),
            (0 <= self.http_port <= 65535, "http_port must be 0..65535"),
            (self.log_level in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}"),
            (bool(self.bootstrap.strip()), "bootstrap must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"worker config: {message}")

    @property
    def group_id(self) -> str:
        """The consumer group: ``group`` inside the namespace."""
        return Topics(self.namespace).name(self.group)

    def transactional_id(self, partition: int) -> str:
        """The transactional id of task ``partition`` (stable across restarts, one per task)."""
        return f"{self.group_id}.task-{partition}"


_ENV: Mapping[str, str] = {
    "bootstrap": BOOTSTRAP_ENV,
    "group": "HOSTGATE_GROUP",
    "instance_id": "HOSTGATE_INSTANCE_ID",
    "batch_max_records": "HOSTGATE_BATCH_MAX_RECORDS",
    "batch_max_ms": "HOSTGATE_BATCH_MAX_MS",
    "poll_timeout_ms": "HOSTGATE_POLL_TIMEOUT_MS",
    "txn_timeout_ms": "HOSTGATE_TXN_TIMEOUT_MS",
    "session_timeout_ms": "HOSTGATE_SESSION_TIMEOUT_MS",
    "http_host": "HOSTGATE_HTTP_HOST",
    "http_port": "HOSTGATE_HTTP_PORT",
    "log_level": "HOSTGATE_LOG_LEVEL",
    "schema_dir": "HOSTGATE_SCHEMA_DIR",
}


_PARSERS: Mapping[str, Callable[[str], object]] = {"int": int, "Path | None": Path}
"""A setting's annotated type -> how the text of its flag or variable becomes one (else: text)."""


def _convert(name: str, raw: str, source: str) -> object:
    parse = _PARSERS.get(str({f.name: f.type for f in fields(WorkerConfig)}[name]))
    try:
        if parse is not None:
            return parse(raw)
        if name == "log_level":
            return raw.strip().lower()
        return raw
    except ValueError as exc:
        raise ConfigError(f"{source}={raw!r}: {exc}") from None


def load_config(
    stage: str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object | None] | None = None,
) -> WorkerConfig:
    """Build the config for ``stage``: ``overrides`` (flags; None = not given) beat ``env``,
    which beats the defaults."""
    env = os.environ if env is None else env
    values: dict[str, object] = {"namespace": Topics.from_env(env).namespace}
    for name, var in _ENV.items():
        if var in env and env[var] != "":
            values[name] = _convert(name, env[var], var)
    for name, value in (overrides or {}).items():
        if name not in _ENV:
            raise ConfigError(f"unknown worker setting {name!r}")
        if value is not None:
            values[name] = value
    return WorkerConfig(stage=stage, **values)  # type: ignore[arg-type]


_FLAG_HELP: Mapping[str, str] = {
    "bootstrap": "Kafka bootstrap servers",
    "group": "consumer group and transactional-id prefix, inside the namespace",
    "instance_id": "static membership id, unique per live worker",
    "batch_max_records": "most records per poll and per transaction",
    "batch_max_ms": "commit a transaction once open this long",
    "txn_timeout_ms": "broker-side transaction timeout",
    "session_timeout_ms": "consumer-group session timeout",
    "http_host": "address for /healthz /readyz /metrics",
    "http_port": "port for /healthz /readyz /metrics, 0 = off",
    "log_level": "",
    "schema_dir": "Avro schema directory",
}
"""The settings with a flag (``--<name>``, in this order), and what their help says before the
variable and the default."""
_SHOWN_DEFAULT: Mapping[str, str | None] = {
    "group": "hostgate.<stage>", "instance_id": None, "schema_dir": "the repository's schemas/"}
"""Defaults the help names in words (None: none named); the others are ``WorkerConfig``'s."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's flags (each also settable by its environment variable)."""
    declared = {f.name: f for f in fields(WorkerConfig)}
    for name, what in _FLAG_HELP.items():
        default = _SHOWN_DEFAULT.get(name, str(declared[name].default))
        where = f"{_ENV[name]}, default {default}" if default is not None else _ENV[name]
        options: dict[str, Any] = {"dest": name, "help": f"{what} [{where}]".lstrip()}
        parse = _PARSERS.get(str(declared[name].type))
        if parse is not None:
            options["type"] = parse
        if name == "log_level":
            options["choices"] = LOG_LEVELS
        parser.add_argument(f"--{name.replace('_', '-')}", **options)


def overrides_from_args(args: argparse.Namespace) -> dict[str, object | None]:
    """The flags the user gave, as ``load_config`` overrides."""
    return {name: getattr(args, name, None) for name in _ENV}
