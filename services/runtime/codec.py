"""Avro codec for every record hostgate puts on a topic.

One *subject* per record type; the subject is the record's Avro full name
(``hostgate.EvidenceSubmitted``). Every version of every subject lives in
``schemas/<subject>/v<N>.avsc`` and ``schemas/registry.json`` fixes its Confluent schema id, so
a reader needs nothing but ``schemas/`` (see ``schemas/README.md``).

Two framings, told apart by the first byte of the value:

* **Single-object encoding** (Avro specification, "Single-object encoding"), the default::

      C3 01 | 8-byte CRC-64-AVRO fingerprint of the parsing canonical form (little-endian) | body

* **Confluent wire format**, when a registry is configured (or ``framing="confluent"``)::

      00 | 4-byte big-endian schema id | body

``decode`` accepts both, reads the body with the *writer's* schema and resolves it to the newest
version of the same subject (Avro schema resolution), so consumers always see the newest shape.

Every byte handed to ``decode`` is hostile: the body length is bounded, trailing bytes are an
error, and whatever the Avro decoder raises on garbage is translated in one place
(``_read_body``) into ``MalformedRecord`` carrying the byte offset where reading stopped.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

# The errors live in their own module (the registry client raises them too); re-exported.
from services.runtime.codec_errors import (
    CodecError,
    InvalidRecord,
    MalformedRecord,
    RegistryUnavailable,
    SchemaDirError,
    UnexpectedRecordType,
    UnknownSchema,
)

if TYPE_CHECKING:
    from services.runtime.schema_registry import RegistryClient

__all__ = [
    "CONFLUENT_MAGIC",
    "DEFAULT_MAX_BODY_BYTES",
    "SINGLE_OBJECT_MARKER",
    "Codec",
    "CodecError",
    "Decoded",
    "Framing",
    "InvalidRecord",
    "MalformedRecord",
    "RegistryUnavailable",
    "SchemaDirError",
    "SchemaVersion",
    "UnexpectedRecordType",
    "UnknownSchema",
    "default_schema_dir",
    "schema_fingerprint",
]

SINGLE_OBJECT_MARKER: Final = b"\xc3\x01"
"""Avro single-object encoding marker (specification, "Single-object encoding")."""
SINGLE_OBJECT_HEADER_LEN: Final = 10
CONFLUENT_MAGIC: Final = b"\x00"
"""Confluent Schema Registry wire format, magic byte 0."""
CONFLUENT_HEADER_LEN: Final = 5
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""Largest Avro body ``decode`` reads (and ``encode`` produces); bigger values are refused."""

Framing = Literal["single-object", "confluent"]



# --------------------------------------------------------------------------------------------
# Schema table


@dataclass(frozen=True)
class SchemaVersion:
    """One published version of one subject, parsed once at load."""

    subject: str
    version: int
    schema_id: int
    """Confluent schema id from ``schemas/registry.json``."""
    fingerprint: bytes
    """8-byte CRC-64-AVRO fingerprint of the parsing canonical form, in wire (little-endian)
    order."""
    canonical: str
    """Parsing canonical form."""
    source: str = field(repr=False)
    """The ``.avsc`` text as published (what a registry is given)."""
    parsed: dict[str, Any] = field(repr=False, compare=False, hash=False)
    """fastavro's parsed schema (do not mutate)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded value: its subject, the (newest) reader version its ``record`` conforms to,
    and the version it was written with."""

    subject: str
    version: int
    record: dict[str, Any]
    writer_version: int | None = None


def schema_fingerprint(parsed_schema: Any) -> bytes:
    """CRC-64-AVRO fingerprint of a parsed schema, as the 8 bytes single-object encoding
    carries (fastavro's hex string is already in little-endian byte order)."""
    hex_fp = _fastavro_fingerprint(to_parsing_canonical_form(parsed_schema), "CRC-64-AVRO")
    return bytes.fromhex(hex_fp)


def default_schema_dir() -> Path:
    """``schemas/`` at the repository root (this file is ``services/runtime/codec.py``)."""
    return Path(__file__).resolve().parents[2] / "schemas"


def _load_table(schema_dir: Path) -> list[SchemaVersion]:
    """Read ``registry.json`` and every ``<subject>/v<N>.avsc`` it lists; check they agree."""
    registry_path = schema_dir / "registry.json"
    try:
        registry = json.loads(registry_path.read_text(encoding="utf-8"))
        entries = registry["schemas"]
        if not isinstance(entries, list):
            raise TypeError("'schemas' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SchemaDirError(f"{registry_path.name}: cannot read the schema list: {exc}") from exc

    table: list[SchemaVersion] = []
    listed: set[Path] = set()
    for index, entry in enumerate(entries):
        try:
            subject = str(entry["subject"])
            version = int(entry["version"])
            schema_id = int(entry["id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaDirError(
                f"{registry_path.name}: entry {index} lacks subject/version/id: {exc}"
            ) from exc
        path = schema_dir / subject / f"v{version}.avsc"
        listed.add(path.resolve())
        try:
            source = path.read_text(encoding="utf-8")
            raw = json.loads(source)
            parsed = parse_schema(raw)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SchemaDirError(f"{subject}/v{version}.avsc: {exc}") from exc
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise SchemaDirError(f"{subject}/v{version}.avsc: top level is not a record")
        full_name = parsed["name"]
        if full_name != subject:
            raise SchemaDirError(
                f"{subject}/v{version}.avsc: record full name {full_name!r} is not the subject"
            )
        table.append(
            SchemaVersion(
                subject=subject,
                version=version,
                schema_id=schema_id,
                fingerprint=schema_fingerprint(parsed),
                canonical=to_parsing_canonical_form(parsed),
                source=source,
                parsed=parsed,
            )
        )

    on_disk = {p.resolve() for p in schema_dir.glob("*/v*.avsc")}
    if unlisted := sorted(str(p.relative_to(schema_dir.resolve())) for p in on_disk - listed):
        raise SchemaDirError(f"registry.json does not list {', '.join(unlisted)}")
    _check_unique(table, lambda s: s.schema_id, "schema id")
    _check_unique(table, lambda s: (s.subject, s.version), "subject version")
    _check_unique(table, lambda s: s.fingerprint, "fingerprint (canonical form)")
    return table


def _check_unique(table: list[SchemaVersion], key: Any, what: str) -> None:
    seen: dict[Any, SchemaVersion] = {}
    for sv in table:
        k = key(sv)
        if k in seen:
            other = seen[k]
            raise SchemaDirError(
                f"{sv.subject} v{sv.version} and {other.subject} v{other.version} share a {what}"
            )
        seen[k] = sv


# --------------------------------------------------------------------------------------------
# Codec


class Codec:
    """Encode and decode hostgate records. Build with ``Codec.load``; immutable afterwards
    (apart from the registry-id cache when a registry is configured). Safe to share."""

    def __init__(
        self,
        table: list[SchemaVersion],
        *,
        framing: Framing = "single-object",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        registry: RegistryClient | None = None,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self._framing: Framing = framing
        self._max_body = max_body_bytes
        self._registry = registry
        self._by_fingerprint = {sv.fingerprint: sv for sv in table}
        self._by_id = {sv.schema_id: sv for sv in table}
        self._newest: dict[str, SchemaVersion] = {}
        for sv in table:
            if sv.subject not in self._newest or sv.version > self._newest[sv.subject].version:
                self._newest[sv.subject] = sv
        self._versions = tuple(sorted(table, key=lambda s: (s.subject, s.version)))

    @classmethod
    def load(
        cls,
        schema_dir: Path | None = None,
        *,
        also: Sequence[Path] = (),
        registry_url: str | None = None,
        framing: Framing | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        registry_timeout_s: float = 5.0,
    ) -> Codec:
        """Load every schema under ``schema_dir`` (default: the repository's ``schemas/``) and
        under each directory of ``also`` (each with its own ``registry.json``: a test's own
        records; subjects, ids and fingerprints must stay unique across all of them).

        ``registry_url`` (a Confluent-compatible Schema Registry) switches ``encode`` to the
        Confluent wire format with ids the registry assigns; without it, ``framing="confluent"``
        uses the ids in ``registry.json``. ``decode`` always accepts both framings.
        """
        table = _load_table(schema_dir if schema_dir is not None else default_schema_dir())
        for extra in also:
            table += _load_table(extra)
        _check_unique(table, lambda s: s.schema_id, "schema id")
        _check_unique(table, lambda s: (s.subject, s.version), "subject version")
        _check_unique(table, lambda s: s.fingerprint, "fingerprint (canonical form)")
        registry = None
        if registry_url is not None:
            from services.runtime.schema_registry import RegistryClient

            registry = RegistryClient(registry_url, timeout_s=registry_timeout_s)
        chosen: Framing = framing or ("confluent" if registry_url else "single-object")
        return cls(table, framing=chosen, max_body_bytes=max_body_bytes, registry=registry)

    # -- introspection ----------------------------------------------------------------------

    @property
    def framing(self) -> Framing:
        return self._framing

    @property
    def subjects(self) -> frozenset[str]:
        """Every subject this codec knows."""
        return frozenset(self._newest)

    @property
    def versions(self) -> tuple[SchemaVersion, ...]:
        """Every (subject, version), sorted."""
        return self._versions

    def newest(self, subject: str) -> SchemaVersion:
        """The newest version of ``subject``; ``UnknownSchema`` if there is none."""
        try:
            return self._newest[subject]
        except KeyError:
            raise UnknownSchema(f"no schema for subject {subject!r} in schemas/") from None

    # -- encode -----------------------------------------------------------------------------

    def encode(self, subject: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the newest version of ``subject``, framed as configured."""
        sv = self.newest(subject)
        # The yes/no check first: with raise_errors, fastavro builds a ValidationError for
        # every union branch a value does not take, about half the cost of a valid record.
        if not validate(record, sv.parsed, raise_errors=False, strict=True):
            raise self._misfit(sv, record)
        buf = io.BytesIO()
        if self._framing == "confluent":
            buf.write(CONFLUENT_MAGIC + struct.pack(">I", self._confluent_id(sv)))
        else:
            buf.write(SINGLE_OBJECT_MARKER + sv.fingerprint)
        header_len = buf.tell()
        try:
            schemaless_writer(buf, sv.parsed, dict(record), strict=True)
        except (ValueError, TypeError, OverflowError, struct.error) as exc:
            raise InvalidRecord(f"{subject} v{sv.version}: cannot encode: {exc}") from exc
        if buf.tell() - header_len > self._max_body:
            raise InvalidRecord(
                f"{subject} v{sv.version}: encoded body of {buf.tell() - header_len} bytes "
                f"exceeds the limit of {self._max_body}"
            )
        return buf.getvalue()

    @staticmethod
    def _misfit(sv: SchemaVersion, record: Mapping[str, Any]) -> InvalidRecord:
        """The error for a record that does not validate, naming every field that fails."""
        try:
            validate(record, sv.parsed, raise_errors=True, strict=True)
        except ValidationError as exc:
            detail = "; ".join(str(e) for e in exc.errors) or str(exc)
            return InvalidRecord(f"{sv.subject} v{sv.version}: record does not fit: {detail}")
        return InvalidRecord(f"{sv.subject} v{sv.version}: record does not fit")

    def _confluent_id(self, sv: SchemaVersion) -> int:
        if self._registry is None:
            return sv.schema_id
        return self._registry.register(sv.subject, sv.source)

    # -- decode -----------------------------------------------------------------------------

    def decode(self, data: bytes, *, expected: Collection[str] | None = None) -> Decoded:
        """Decode one framed value. ``expected``: the subjects allowed here; anything else
        raises ``UnexpectedRecordType`` before the body is read."""
        writer, header_len = self._writer_of(data)
        if expected is not None and writer.subject not in expected:
            raise UnexpectedRecordType(writer.subject, expected)
        body_len = len(data) - header_len
        if body_len > self._max_body:
            raise MalformedRecord(
                f"{writer.subject} body of {body_len} bytes exceeds the limit of {self._max_body}",
                offset=header_len + self._max_body,
            )
        reader = self._newest[writer.subject]
        record = _read_body(data, header_len, writer, reader)
        return Decoded(
            subject=writer.subject,
            version=reader.version,
            record=record,
            writer_version=writer.version,
        )

    def _writer_of(self, data: bytes) -> tuple[SchemaVersion, int]:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedRecord(f"value is {type(data).__name__}, not bytes", offset=0)
        data = bytes(data)
        if not data:
            raise MalformedRecord("empty value", offset=0)
        first = data[:1]
        if first == SINGLE_OBJECT_MARKER[:1]:
            if data[:2] != SINGLE_OBJECT_MARKER:
                raise MalformedRecord(
                    f"single-object marker is {data[:2].hex()}, want c301", offset=1
                )
            if len(data) < SINGLE_OBJECT_HEADER_LEN:
                raise MalformedRecord(
                    f"single-object header truncated ({len(data)} of 10 bytes)", offset=len(data)
                )
            fp = data[2:SINGLE_OBJECT_HEADER_LEN]
            sv = self._by_fingerprint.get(fp)
            if sv is None:
                raise UnknownSchema(f"fingerprint {fp.hex()} is not in schemas/")
            return sv, SINGLE_OBJECT_HEADER_LEN
        if first == CONFLUENT_MAGIC:
            if len(data) < CONFLUENT_HEADER_LEN:
                raise MalformedRecord(
                    f"Confluent header truncated ({len(data)} of 5 bytes)", offset=len(data)
                )
            (schema_id,) = struct.unpack(">I", data[1:CONFLUENT_HEADER_LEN])
            return self._by_confluent_id(schema_id), CONFLUENT_HEADER_LEN
        raise MalformedRecord(
            f"first byte 0x{data[0]:02x} is neither single-object (c3 01) nor Confluent (00)",
            offset=0,
        )

    def _by_confluent_id(self, schema_id: int) -> SchemaVersion:
        if self._registry is None:
            sv = self._by_id.get(schema_id)
            if sv is None:
                raise UnknownSchema(f"schema id {schema_id} is not in schemas/registry.json")
            return sv
        parsed = self._registry.schema_by_id(schema_id)
        sv = self._by_fingerprint.get(schema_fingerprint(parsed))
        if sv is None:
            raise UnknownSchema(
                f"schema id {schema_id} from the registry is not any version in schemas/"
            )
        return sv


# Everything fastavro's reader has been seen to raise on garbage (EOFError for short reads,
# UnicodeDecodeError for bad strings, IndexError for runaway varints, ValueError/OverflowError
# for out-of-range logical values and union indexes...). Translated here, and only here.
_DECODER_FAILURES: Final = (
    EOFError,
    ValueError,  # includes UnicodeDecodeError
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    struct.error,
    MemoryError,
    RecursionError,
    SchemaResolutionError,  # a writer value the reader cannot take (should not happen)
)


def _read_body(
    data: bytes, header_len: int, writer: SchemaVersion, reader: SchemaVersion
) -> dict[str, Any]:
    fo = io.BytesIO(data)
    fo.seek(header_len)
    reader_schema = None if reader is writer else reader.parsed
    where = f"{writer.subject} v{writer.version}"
    try:
        record = schemaless_reader(fo, writer.parsed, reader_schema)
    except _DECODER_FAILURES as exc:
        reason = str(exc) or type(exc).__name__
        raise MalformedRecord(
            f"{where} body does not decode: {type(exc).__name__}: {reason}"[:300],
            offset=min(fo.tell(), len(data)),
        ) from exc
    if fo.tell() != len(data):
        raise MalformedRecord(
            f"{where}: {len(data) - fo.tell()} trailing bytes after the record", offset=fo.tell()
        )
    if not isinstance(record, dict):
        raise MalformedRecord(f"{where} decoded to {type(record).__name__}", offset=header_len)
    return record
