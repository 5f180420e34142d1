"""Every subject round-trips through the codec, in both framings, with random valid records
generated from the schema itself; headers are checked against independent implementations."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from fastavro import parse_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime.codec import (
    Codec,
    Decoded,
    SchemaDirError,
    UnknownSchema,
    schema_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
FIXTURE_V2 = Path(__file__).resolve().parent / "fixtures" / "codec" / "hostgate.HostState.v2.avsc"
REGISTRY = json.loads((SCHEMAS / "registry.json").read_text("utf-8"))["schemas"]
CODEC = Codec.load()
CONFLUENT = Codec.load(framing="confluent")
SUBJECTS = sorted(CODEC.subjects)

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def _timestamps() -> st.SearchStrategy[dt.datetime]:
    millis = st.integers(min_value=0, max_value=7_258_118_400_000)  # 1970 .. 2200
    return millis.map(lambda ms: _EPOCH + dt.timedelta(milliseconds=ms))


def strategy_for(schema: Any, names: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """A hypothesis strategy of valid values for a raw (JSON) Avro schema."""
    names = {} if names is None else names
    if isinstance(schema, list):
        return st.one_of(*(strategy_for(branch, names) for branch in schema))
    if isinstance(schema, str):
        if schema in names:
            return strategy_for(names[schema], names)
        schema = {"type": schema}
    kind = schema["type"]
    if isinstance(kind, dict | list):
        return strategy_for(kind, names)
    if kind == "record":
        names[schema["name"]] = schema
        return st.fixed_dictionaries(
            {f["name"]: strategy_for(f["type"], names) for f in schema["fields"]}
        )
    if kind == "enum":
        names[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(strategy_for(schema["items"], names), max_size=4)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=8), strategy_for(schema["values"], names), max_size=3
        )
    if kind == "long" and schema.get("logicalType") == "timestamp-millis":
        return _timestamps()
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "long": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "string": st.text(max_size=24),
        "bytes": st.binary(max_size=48),
    }
    return simple[kind]


def _record_strategy(subject: str) -> st.SearchStrategy[dict[str, Any]]:
    raw = json.loads(CODEC.newest(subject).source)
    return strategy_for(raw)


@pytest.mark.parametrize("subject", SUBJECTS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_subject_round_trips_in_both_framings(subject: str, data: st.DataObject) -> None:
    record = data.draw(_record_strategy(subject))
    for codec in (CODEC, CONFLUENT):
        encoded = codec.encode(subject, record)
        decoded = codec.decode(encoded, expected={subject})
        newest = CODEC.newest(subject).version
        assert decoded == Decoded(subject=subject, version=newest, record=record,
                                  writer_version=newest)
        # Either codec reads either framing.
        assert CODEC.decode(encoded) == decoded


def test_single_object_header_is_the_avro_specs() -> None:
    # CRC-64-AVRO of the canonical form of "null", from the Java implementation's test vectors
    # (SchemaNormalization.parsingFingerprint64), carried little-endian.
    assert schema_fingerprint(parse_schema("null")) == (7195948357588979594).to_bytes(8, "little")
    for sv in CODEC.versions:
        independent = avro.schema.parse(_avro_py_canonical_form(sv.source)).fingerprint()
        assert sv.fingerprint == independent, (sv.subject, sv.version)
        if sv.version == CODEC.newest(sv.subject).version:  # what encode writes with
            encoded = CODEC.encode(sv.subject, _minimal(sv.subject))
            assert encoded[:10] == b"\xc3\x01" + independent, sv.subject


def _avro_py_canonical_form(source: str) -> str:
    """The parsing canonical form per the spec, computed with the Apache ``avro`` package.

    Quirk ``avro-py-logical-primitive``: avro 1.12's ``canonical_form`` renders a primitive
    with a logicalType as ``{"type":"long"}``, but the spec's [PRIMITIVES] and [STRIP] rules
    (and Java, fastavro) give ``"long"`` (same divergence: apache/avro AVRO-4004 for Rust,
    linkedin/goavro#174). The schemas here only put logical types on ``long``.
    """
    canonical = avro.schema.parse(source).canonical_form
    return canonical.replace('{"type":"long"}', '"long"')


def test_confluent_header_uses_the_ids_from_registry_json() -> None:
    assert len(REGISTRY) == len(CODEC.versions)
    for entry in REGISTRY:
        if entry["version"] != CODEC.newest(entry["subject"]).version:
            continue  # encode writes with the newest version only
        encoded = CONFLUENT.encode(entry["subject"], _minimal(entry["subject"]))
        assert encoded[:5] == b"\x00" + struct.pack(">I", entry["id"]), entry["subject"]
        assert CONFLUENT.decode(encoded).subject == entry["subject"]


def _minimal(subject: str) -> dict[str, Any]:
    """A deterministic valid record: the first example of the schema-derived strategy."""
    found: list[dict[str, Any]] = []

    @settings(max_examples=1, database=None, derandomize=True)
    @given(_record_strategy(subject))
    def grab(record: dict[str, Any]) -> None:
        found.append(record)

    grab()
    return found[0]


# -- schema resolution: a v2 reader reading v1 bytes (fixture v2, not published) ------------


@pytest.fixture
def schemas_with_v2(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, target)
    shutil.copy(FIXTURE_V2, target / "hostgate.HostState" / "v2.avsc")
    registry = json.loads((target / "registry.json").read_text("utf-8"))
    next_id = max(e["id"] for e in registry["schemas"]) + 1
    registry["schemas"].append({"subject": "hostgate.HostState", "version": 2, "id": next_id})
    (target / "registry.json").write_text(json.dumps(registry), "utf-8")
    return target


HOST_V1 = {
    "host_id": "host-0007",
    "state": "QUARANTINED",
    "cert_serial": None,
    "cert_not_after": None,
    "incident_id": "inc-42",
    "verdict_id": "v-1",
    "since": dt.datetime(2025, 3, 1, 12, 0, 0, 250000, tzinfo=UTC),
    "reason": "PCR 7 replay mismatch",
}


def test_v2_reader_resolves_v1_bytes_filling_defaults(schemas_with_v2: Path) -> None:
    v2_codec = Codec.load(schemas_with_v2)
    v1_bytes = CODEC.encode("hostgate.HostState", HOST_V1)
    decoded = v2_codec.decode(v1_bytes)
    assert (decoded.version, decoded.writer_version) == (2, 1)
    assert decoded.record == {**HOST_V1, "attestations_passed": 0, "gatekeeper_note": None}
    # New data in v2 round-trips, with the symbol v1 does not know.
    v2_record = {**HOST_V1, "state": "SUSPENDED", "attestations_passed": 3, "gatekeeper_note": "x"}
    again = v2_codec.decode(v2_codec.encode("hostgate.HostState", v2_record))
    assert again.record == v2_record


def test_v1_only_reader_refuses_v2_bytes_as_unknown_schema(schemas_with_v2: Path) -> None:
    v2_codec = Codec.load(schemas_with_v2)
    v2_bytes = v2_codec.encode("hostgate.HostState", {**HOST_V1, "state": "SUSPENDED",
                                                      "attestations_passed": 1,
                                                      "gatekeeper_note": None})  # fmt: skip
    # Readers need every writer schema: deploy schemas/ to consumers before producers.
    with pytest.raises(UnknownSchema, match=r"fingerprint [0-9a-f]{16} is not in schemas/"):
        CODEC.decode(v2_bytes)


def test_v1_reader_maps_a_new_enum_symbol_to_the_default(schemas_with_v2: Path) -> None:
    # FORWARD direction at the fastavro level: v1 reader schema, v2 writer schema.
    from io import BytesIO

    from fastavro import schemaless_reader

    v2_codec = Codec.load(schemas_with_v2)
    v2 = v2_codec.newest("hostgate.HostState")
    record = {**HOST_V1, "state": "SUSPENDED", "attestations_passed": 1, "gatekeeper_note": None}
    body = v2_codec.encode("hostgate.HostState", record)[10:]
    old = schemaless_reader(BytesIO(body), v2.parsed, CODEC.newest("hostgate.HostState").parsed)
    assert old == {**HOST_V1, "state": "UNKNOWN"}


def test_load_refuses_an_unlisted_schema_file(schemas_with_v2: Path) -> None:
    shutil.copy(FIXTURE_V2, schemas_with_v2 / "hostgate.HostState" / "v3.avsc")
    with pytest.raises(SchemaDirError, match=r"does not list hostgate.HostState/v3.avsc"):
        Codec.load(schemas_with_v2)


def test_load_refuses_a_duplicate_id(schemas_with_v2: Path) -> None:
    registry = json.loads((schemas_with_v2 / "registry.json").read_text("utf-8"))
    registry["schemas"][-1]["id"] = registry["schemas"][0]["id"]
    (schemas_with_v2 / "registry.json").write_text(json.dumps(registry), "utf-8")
    with pytest.raises(SchemaDirError, match="share a schema id"):
        Codec.load(schemas_with_v2)


def test_load_refuses_a_version_identical_in_canonical_form(schemas_with_v2: Path) -> None:
    v1 = json.loads((SCHEMAS / "hostgate.HostState" / "v1.avsc").read_text("utf-8"))
    v1["doc"] = "Only the doc changed."
    (schemas_with_v2 / "hostgate.HostState" / "v2.avsc").write_text(json.dumps(v1), "utf-8")
    with pytest.raises(SchemaDirError, match="share a fingerprint"):
        Codec.load(schemas_with_v2)
