"""Deterministic ids and record digests: the same inputs give the same id in every process.

Ids are derived from what a record was made from (the coordinates of the input record, a
verdict id, a host and a record id), never drawn at random, so a stage that processes a record
again after a crash writes the same ids and a reader can tell a repeat from a new record.

* :func:`record_id`: ``<stage>:<kind>:<topic>:<partition>:<offset>``, readable.
* :func:`derived_id`: ``<prefix>-`` + the first hex characters of :func:`text_digest` of its
  parts, short and opaque. Each stage fixes its own parts (``services.collector.rejections``,
  ``services.issuer``, ``services.incidents``); :func:`coordinate_parts` spells coordinates.
* :func:`record_digest`: SHA-256 of a decoded Avro record in a framing-independent form, so the
  digest of one evidence is the same whether it arrived with single-object or Confluent framing,
  and any reader with ``schemas/`` can recompute it::

    SHA-256( "hostgate-canonical-v1\\0" || subject || 0x00 || enc(record) )

    enc(None) = "N";  enc(bool) = "T" | "F";  enc(int) = "I" || int64 BE
    enc(str)  = "S" || u32 len || UTF-8;       enc(bytes) = "B" || u32 len || bytes
    enc(datetime) = "I" || int64 BE of its epoch milliseconds (timestamp-millis)
    enc(list) = "L" || u32 count || enc(item)...
    enc(dict) = "M" || u32 count || (enc(key) || enc(value)) for keys in sorted order
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from collections.abc import Mapping
from typing import Any, Final

from services.wire.coords import Located
from services.wire.time import epoch_ms

__all__ = [
    "CanonicalEncodingError",
    "coordinate_parts",
    "derived_id",
    "record_digest",
    "record_id",
    "text_digest",
]

_DIGEST_TAG: Final = b"hostgate-canonical-v1\x00"
_MAX_DEPTH: Final = 16


class CanonicalEncodingError(ValueError):
    """A decoded record holds a value the canonical encoding does not define (a stage bug)."""


def text_digest(*parts: str, terminated: bool = False) -> bytes:
    """SHA-256 of the UTF-8 ``parts`` joined by NUL (``terminated``: each followed by NUL)."""
    text = "\x00".join(parts) + ("\x00" if terminated else "")
    return hashlib.sha256(text.encode("utf-8")).digest()


def derived_id(prefix: str, *parts: str, hex_chars: int = 32, terminated: bool = False) -> str:
    """``<prefix>-`` + the first ``hex_chars`` hex characters of :func:`text_digest`."""
    return f"{prefix}-{text_digest(*parts, terminated=terminated).hex()[:hex_chars]}"


def coordinate_parts(at: Located) -> tuple[str, str, str]:
    """``(topic, partition, offset)`` as the text parts of a :func:`derived_id`."""
    return (at.topic, str(at.partition), str(at.offset))


def record_id(stage: str, kind: str, at: Located) -> str:
    """``<stage>:<kind>:<topic>:<partition>:<offset>``: what ``stage`` made of the record at
    ``at`` (one id per kind of output)."""
    return f"{stage}:{kind}:{at.topic}:{at.partition}:{at.offset}"


def _enc(value: Any, out: bytearray, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise CanonicalEncodingError("record nests deeper than 16 levels")
    if value is None:
        out += b"N"
    elif isinstance(value, bool):
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        out += b"I" + struct.pack(">q", value)
    elif isinstance(value, dt.datetime):
        out += b"I" + struct.pack(">q", epoch_ms(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += b"S" + struct.pack(">I", len(raw)) + raw
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out += b"B" + struct.pack(">I", len(raw)) + raw
    elif isinstance(value, list | tuple):
        out += b"L" + struct.pack(">I", len(value))
        for item in value:
            _enc(item, out, depth + 1)
    elif isinstance(value, Mapping):
        out += b"M" + struct.pack(">I", len(value))
        for key in sorted(value):
            _enc(str(key), out, depth + 1)
            _enc(value[key], out, depth + 1)
    else:
        raise CanonicalEncodingError(f"no canonical encoding for {type(value).__name__}")


def record_digest(subject: str, record: Mapping[str, Any]) -> bytes:
    """SHA-256 over the canonical encoding of a decoded record (module docstring)."""
    out = bytearray(_DIGEST_TAG)
    out += subject.encode("utf-8") + b"\x00"
    _enc(record, out, 0)
    return hashlib.sha256(out).digest()
