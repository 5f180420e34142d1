"""``WorkerConfig``: every setting of a worker, from flags and environment, read once.

Precedence: command-line flag, then environment variable, then the default below. Nothing else
in the runtime reads the environment.

==============================  =========================================  =================
environment                     meaning                                    default
==============================  =========================================  =================
``HOSTGATE_BOOTSTRAP``          Kafka bootstrap servers                    ``127.0.0.1:19092``
``HOSTGATE_GROUP``              consumer group (also the prefix of the     ``hostgate.<stage>``
                                transactional ids)
``HOSTGATE_INSTANCE_ID``        static group membership id (KIP-345);      unset (dynamic)
                                unique per live worker
``HOSTGATE_BATCH_MAX_RECORDS``  most records fetched and committed per     ``500``
                                poll (per transaction at most this many)
``HOSTGATE_BATCH_MAX_MS``       a transaction is committed once it has     ``2000``
                                been open this long, even if not full
``HOSTGATE_POLL_TIMEOUT_MS``    how long one poll waits for records        ``200``
``HOSTGATE_TXN_TIMEOUT_MS``     broker aborts a transaction open longer    ``60000``
``HOSTGATE_SESSION_TIMEOUT_MS`` group session timeout                      ``10000``
``HOSTGATE_EXACTLY_ONCE``       ``1``: transactions; ``0``: at-least-once  ``1``
                                (idempotent producer + offset commit;
                                for benchmarks only)
``HOSTGATE_HTTP_HOST``          address of /healthz /readyz /metrics       ``127.0.0.1``
``HOSTGATE_HTTP_PORT``          its port; ``0`` = no HTTP server           ``0``
``HOSTGATE_LOG_LEVEL``          debug, info, warning, error                ``info``
``HOSTGATE_SCHEMA_DIR``         directory of ``.avsc`` schemas             the repo's ``schemas/``
==============================  =========================================  =================
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from services.errors import ConfigError

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class WorkerConfig:
    """One worker's settings (see the module docstring for the environment names)."""

    stage: str
    bootstrap: str = DEFAULT_BOOTSTRAP
    group: str = ""
    instance_id: str | None = None
    batch_max_records: int = 500
    batch_max_ms: int = 2000
    poll_timeout_ms: int = 200
    txn_timeout_ms: int = 60000
    session_timeout_ms: int = 10000
    exactly_once: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = 0
    log_level: str = "info"
    schema_dir: Path | None = None

    def __post_init__(self) -> None:
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

    def transactional_id(self, partition: int) -> str:
        """The transactional id of task ``partition`` (stable across restarts, one per task)."""
        return f"{self.group}.task-{partition}"


_ENV: Mapping[str, str] = {
    "bootstrap": "HOSTGATE_BOOTSTRAP",
    "group": "HOSTGATE_GROUP",
    "instance_id": "HOSTGATE_INSTANCE_ID",
    "batch_max_records": "HOSTGATE_BATCH_MAX_RECORDS",
    "batch_max_ms": "HOSTGATE_BATCH_MAX_MS",
    "poll_timeout_ms": "HOSTGATE_POLL_TIMEOUT_MS",
    "txn_timeout_ms": "HOSTGATE_TXN_TIMEOUT_MS",
    "session_timeout_ms": "HOSTGATE_SESSION_TIMEOUT_MS",
    "exactly_once": "HOSTGATE_EXACTLY_ONCE",
    "http_host": "HOSTGATE_HTTP_HOST",
    "http_port": "HOSTGATE_HTTP_PORT",
    "log_level": "HOSTGATE_LOG_LEVEL",
    "schema_dir": "HOSTGATE_SCHEMA_DIR",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, raw: str, source: str) -> object:
    kind = {f.name: f.type for f in fields(WorkerConfig)}[name]
    try:
        if kind == "int":
            return int(raw)
        if kind == "bool":
            low = raw.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError("expected 1/0, true/false, yes/no or on/off")
        if kind == "Path | None":
            return Path(raw)
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
    values: dict[str, object] = {}
    for name, var in _ENV.items():
        if var in env and env[var] != "":
            values[name] = _convert(name, env[var], var)
    for name, value in (overrides or {}).items():
        if name not in _ENV:
            raise ConfigError(f"unknown worker setting {name!r}")
        if value is not None:
            values[name] = value
    return WorkerConfig(stage=stage, **values)  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's flags (each also settable by its environment variable)."""
    a = parser.add_argument
    a("--bootstrap", help="Kafka bootstrap servers [HOSTGATE_BOOTSTRAP, default "
      f"{DEFAULT_BOOTSTRAP}]")
    a("--group", help="consumer group and transactional-id prefix [HOSTGATE_GROUP, default "
      "hostgate.<stage>]")
    a("--instance-id", dest="instance_id",
      help="static membership id, unique per live worker [HOSTGATE_INSTANCE_ID]")
    a("--batch-max-records", dest="batch_max_records", type=int,
      help="most records per poll and per transaction [HOSTGATE_BATCH_MAX_RECORDS, default 500]")
    a("--batch-max-ms", dest="batch_max_ms", type=int,
      help="commit a transaction once open this long [HOSTGATE_BATCH_MAX_MS, default 2000]")
    a("--txn-timeout-ms", dest="txn_timeout_ms", type=int,
      help="broker-side transaction timeout [HOSTGATE_TXN_TIMEOUT_MS, default 60000]")
    a("--session-timeout-ms", dest="session_timeout_ms", type=int,
      help="consumer-group session timeout [HOSTGATE_SESSION_TIMEOUT_MS, default 10000]")
    a("--at-least-once", dest="exactly_once", action="store_const", const=False,
      help="no transactions (benchmark baseline) [HOSTGATE_EXACTLY_ONCE=0]")
    a("--http-host", dest="http_host",
      help="address for /healthz /readyz /metrics [HOSTGATE_HTTP_HOST, default 127.0.0.1]")
    a("--http-port", dest="http_port", type=int,
      help="port for /healthz /readyz /metrics, 0 = off [HOSTGATE_HTTP_PORT, default 0]")
    a("--log-level", dest="log_level", choices=LOG_LEVELS,
      help="[HOSTGATE_LOG_LEVEL, default info]")
    a("--schema-dir", dest="schema_dir", type=Path,
      help="Avro schema directory [HOSTGATE_SCHEMA_DIR, default the repository's schemas/]")


def overrides_from_args(args: argparse.Namespace) -> dict[str, object | None]:
    """The flags the user gave, as ``load_config`` overrides."""
    return {name: getattr(args, name, None) for name in _ENV}
