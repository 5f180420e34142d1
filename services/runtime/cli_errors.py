"""How the ``hostgate`` entry point reports a failed command: a Kafka client exception
translated into a hostgate error (the runtime is the only package that knows aiokafka), and
the JSON document ``--json`` prints for any error."""

from __future__ import annotations

from typing import Any

from services.errors import ExitCode, HostgateError

__all__ = ["KafkaUnavailable", "error_document", "kafka_failure"]

_DETAILS = ("offset", "seq", "field", "invalid_pcrs", "first", "event_seqs", "line")
"""Attributes an error may carry that say where it happened (``services.tpm.errors``)."""


class KafkaUnavailable(HostgateError):
    """The Kafka client gave up: no broker answered, or the request failed on its side."""

    retriable = True


def kafka_failure(exc: BaseException, bootstrap: str | None) -> HostgateError | None:
    """``exc`` as a :class:`KafkaUnavailable` naming ``bootstrap``, if it is a Kafka client
    error; else None (not Kafka's: a bug, which keeps its traceback)."""
    from aiokafka.errors import KafkaError

    if not isinstance(exc, KafkaError):
        return None
    where = f" at {bootstrap}" if bootstrap else ""
    reason = str(exc).removeprefix(f"{type(exc).__name__}: ")
    return KafkaUnavailable(f"no Kafka broker answered{where} ({type(exc).__name__}: {reason})")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def error_document(exc: HostgateError, code: ExitCode) -> dict[str, Any]:
    """``{"ok": false, "exit_status": N, "error": {"type", "message", ...where}}``."""
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for name in _DETAILS:
        if getattr(exc, name, None) is not None:
            error[name] = _jsonable(getattr(exc, name))
    return {"ok": False, "exit_status": int(code), "error": error}
