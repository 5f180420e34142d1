"""Pieces every collector decision uses: time, ids, digests, rejections. Pure.

Canonical digest (``record_digest``). A decoded Avro record is hashed in a framing-independent
form so the digest of one evidence is the same whether it arrived with single-object or
Confluent framing, and any reader with ``schemas/`` can recompute it::

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

from services.runtime.stage import Decision, InputRecord, Output

SUBJECT_REJECTED: Final = "hostgate.IntakeRejected"
_DIGEST_TAG = b"hostgate-canonical-v1\x00"
_MAX_DEPTH = 16


class CanonicalEncodingError(ValueError):
    """A decoded record holds a value the canonical encoding does not define (a stage bug)."""


def epoch_ms(value: Any) -> int:
    """Milliseconds since the epoch of a ``timestamp-millis`` value (int or aware datetime)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return int(value)


def to_datetime(ms: int) -> dt.datetime:
    """An aware UTC datetime for ``ms`` (what certificate validity is checked at)."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


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


def output_id(inp: InputRecord, kind: str) -> str:
    """Deterministic id of what ``inp`` produced: ``collector:<kind>:<topic>:<part>:<offset>``."""
    c = inp.coordinates
    return f"collector:{kind}:{c.topic}:{c.partition}:{c.offset}"


def derived_id(inp: InputRecord, kind: str) -> str:
    """A short deterministic id (challenge ids): ``<kind>-`` + 32 hex of SHA-256(coordinates)."""
    c = inp.coordinates
    h = hashlib.sha256(f"{kind}\x00{c.topic}\x00{c.partition}\x00{c.offset}".encode())
    return f"{kind}-{h.hexdigest()[:32]}"


def coordinates_record(inp: InputRecord) -> dict[str, Any]:
    """``hostgate.Coordinates`` of the input."""
    c = inp.coordinates
    return {"topic": c.topic, "partition": c.partition, "offset": c.offset}


def host_key(inp: InputRecord) -> str:
    """The partition's host: the Kafka key, else the host id the record claims."""
    return inp.key if inp.key is not None else str(inp.record.get("host_id", ""))


def reject(inp: InputRecord, topic: str, reason: str, detail: str,
           *, extra_log: Mapping[str, str | int | bool] | None = None,
           state_updates: tuple[Any, ...] = ()) -> Decision:
    """An ``IntakeRejected`` for ``inp`` on ``topic``: reason symbol plus a sentence naming
    the field or limit. Never put secrets or key material in ``detail``."""
    key = host_key(inp)
    rejection_id = output_id(inp, "rejected")
    record = {
        "rejection_id": rejection_id,
        "host_id": key,
        "reason": reason,
        "detail": detail[:1000],
        "source": coordinates_record(inp),
        "record_subject": inp.subject,
        "record_digest": record_digest(inp.subject, inp.record),
        "rejected_at": inp.timestamp_ms,
    }
    out = Output(topic=topic, key=key, subject=SUBJECT_REJECTED, record=record,
                 id=rejection_id)
    log: dict[str, str | int | bool] = {"outcome": "rejected", "reason": reason,
                                        "subject": inp.subject}
    log.update(extra_log or {})
    return Decision(outputs=(out,), state_updates=state_updates, log=log)


def check_identity(inp: InputRecord, id_fields: tuple[str, ...],
                   max_chars: int) -> tuple[str, str] | None:
    """(reason, detail) if the key and ``host_id`` disagree (``HOST_MISMATCH``) or an id is
    empty or too long (``MALFORMED``); None if the record may be looked at further."""
    claimed = str(inp.record.get("host_id", ""))
    if inp.key is None or inp.key != claimed:
        return ("HOST_MISMATCH", f"record host_id {claimed[:64]!r} differs from its Kafka key "
                f"{(inp.key or '')[:64]!r}: a host may only speak for itself")
    for name in ("host_id", *id_fields):
        value = str(inp.record.get(name, ""))
        if not value or len(value) > max_chars:
            return ("MALFORMED",
                    f"field {name} must be 1..{max_chars} characters, got {len(value)}")
    return None
