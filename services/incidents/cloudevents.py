"""CloudEvents 1.0 Kafka protocol binding, binary content mode: attributes as ``ce_*`` headers.

In binary mode every context attribute becomes one UTF-8 header named ``ce_<attribute>`` and the
record value is the event data unchanged; ``datacontenttype`` maps to the ``content-type``
header, not ``ce_datacontenttype`` (CloudEvents spec, ``bindings/kafka-protocol-binding.md``,
section 3.2). The record key stays the host id (the binding's default key mapping).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from services.errors import HostgateError
from services.wire.time import to_datetime

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE_JSON: Final = "application/json"
_REQUIRED: Final = ("ce_specversion", "ce_id", "ce_source", "ce_type")
_MAX_HEADER_VALUE: Final = 1024
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


class CloudEventError(HostgateError):
    """Headers that do not form a valid binary-mode CloudEvent (names the header)."""


@dataclass(frozen=True)
class CloudEvent:
    """The context attributes of one event; the data travels as the record value."""

    id: str
    source: str
    type: str
    time_ms: int
    subject: str
    datacontenttype: str = CONTENT_TYPE_JSON
    dataschema: str | None = None


def rfc3339_ms(time_ms: int) -> str:
    """``time_ms`` (Unix epoch milliseconds, UTC) as RFC 3339 with milliseconds and ``Z``."""
    stamp = to_datetime(time_ms)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def binary_headers(event: CloudEvent) -> tuple[tuple[str, bytes], ...]:
    """The Kafka headers carrying ``event`` in binary content mode."""
    pairs = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", event.id),
        ("ce_source", event.source),
        ("ce_type", event.type),
        ("ce_time", rfc3339_ms(event.time_ms)),
        ("ce_subject", event.subject),
        ("content-type", event.datacontenttype),
    ]
    if event.dataschema is not None:
        pairs.append(("ce_dataschema", event.dataschema))
    for name, value in pairs:
        if not value:
            raise CloudEventError(f"header {name}: empty value")
    return tuple((name, value.encode("utf-8")) for name, value in pairs)


def read_binary_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """The ``ce_*`` and ``content-type`` headers of a record, checked (untrusted input): each
    required attribute present exactly once, UTF-8, bounded, ``ce_specversion`` 1.0,
    ``ce_time`` RFC 3339. Raises ``CloudEventError`` naming the header."""
    found: dict[str, str] = {}
    for index, (name, raw) in enumerate(headers):
        if not (name.startswith("ce_") or name == "content-type"):
            continue
        if name in found:
            raise CloudEventError(f"header {name} (#{index}) repeats")
        if len(raw) > _MAX_HEADER_VALUE:
            raise CloudEventError(f"header {name} (#{index}): {len(raw)} bytes > "
                                  f"{_MAX_HEADER_VALUE}")
        try:
            found[name] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CloudEventError(f"header {name} (#{index}): not UTF-8 at byte "
                                  f"{exc.start}") from None
    for name in _REQUIRED:
        if not found.get(name):
            raise CloudEventError(f"header {name}: missing or empty")
    if found["ce_specversion"] != SPEC_VERSION:
        raise CloudEventError(f"header ce_specversion: {found['ce_specversion']!r} is not 1.0")
    if "ce_time" in found and not _RFC3339.match(found["ce_time"]):
        raise CloudEventError(f"header ce_time: {found['ce_time']!r} is not RFC 3339")
    return found
