"""Dead-letter records: the original bytes, untouched, plus why and where they failed.

Header names follow Kafka Connect's dead-letter-queue context headers (``__connect.errors.*``,
values as UTF-8 strings, as Connect writes them), so existing tooling can read them. Connect has
no header for the original timestamp, the consumer group or the stage, so those are added under
``hostgate.dlq.*``. The original record's headers come first and are kept as they were (all of
them, unless the record is too large to copy whole: ``services.runtime.plan``); ours are
appended (if a name repeats, e.g. a record re-driven from a DLQ, the last one is the newest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from services.runtime.stage import Coordinates, Headers

H_TOPIC: Final = "__connect.errors.topic"
H_PARTITION: Final = "__connect.errors.partition"
H_OFFSET: Final = "__connect.errors.offset"
H_EXC_CLASS: Final = "__connect.errors.exception.class.name"
H_EXC_MESSAGE: Final = "__connect.errors.exception.message"
H_STAGE: Final = "hostgate.dlq.stage"
H_REASON: Final = "hostgate.dlq.reason"
H_TIMESTAMP: Final = "hostgate.dlq.original.timestamp"
H_GROUP: Final = "hostgate.dlq.original.consumer.group"
H_BYTE_OFFSET: Final = "hostgate.dlq.byte.offset"
H_TRUNCATED: Final = "hostgate.dlq.original.size"
"""Set when the DLQ copy holds only a prefix of the value: the original's size in bytes."""
H_SHA256: Final = "hostgate.dlq.original.sha256"
"""With :data:`H_TRUNCATED`: SHA-256 (hex) of the whole original value, to match it in its topic."""
H_HEADER_COUNT: Final = "hostgate.dlq.original.headers"
"""Set when the DLQ copy keeps only the first of the original's headers: how many it had."""

MAX_MESSAGE_CHARS: Final = 1000
"""Exception messages are cut to this length (a DLQ header is not a place for a novel)."""

REASON_DECODE: Final = "decode"
"""The value (or key) could not be decoded: the stage never saw the record."""
REASON_STAGE_ERROR: Final = "stage-error"
"""The record decoded but the stage raised on it and had no (working) error policy."""
REASON_UNREADABLE: Final = "unreadable"
"""The client library could not read the record at all (a header name that is not UTF-8): the
DLQ record names its coordinates, where the original stays."""


@dataclass(frozen=True)
class Failure:
    """Why a record goes to the DLQ."""

    reason: str
    exception: BaseException


def exception_class_name(exc: BaseException) -> str:
    """The exception's fully qualified class name (``services.runtime.codec.UnknownSchema``)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def dlq_headers(
    original: Headers,
    *,
    stage: str,
    group: str,
    coordinates: Coordinates,
    timestamp_ms: int,
    failure: Failure,
) -> Headers:
    """The DLQ record's headers: the original ones, then the failure context."""
    message = str(failure.exception) or type(failure.exception).__name__
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    added: list[tuple[str, str]] = [
        (H_TOPIC, coordinates.topic),
        (H_PARTITION, str(coordinates.partition)),
        (H_OFFSET, str(coordinates.offset)),
        (H_EXC_CLASS, exception_class_name(failure.exception)),
        (H_EXC_MESSAGE, message),
        (H_STAGE, stage),
        (H_REASON, failure.reason),
        (H_TIMESTAMP, str(timestamp_ms)),
        (H_GROUP, group),
    ]
    byte_offset = getattr(failure.exception, "offset", None)
    if isinstance(byte_offset, int):
        added.append((H_BYTE_OFFSET, str(byte_offset)))
    return tuple(original) + tuple((name, value.encode("utf-8")) for name, value in added)


def header_value(headers: Headers, name: str) -> str | None:
    """The last value of header ``name`` as text, or None (for readers of DLQ records)."""
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            found = value
    return None if found is None else found.decode("utf-8", "replace")
