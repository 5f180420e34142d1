"""The primitives every stage spells the same way (``services.wire``): bank symbols, timestamps,
coordinates, deterministic ids and record digests.

The pinned ids and digest were recorded from the stages' own helpers before they were moved
onto ``services.wire`` (c67e1a7 + the issue 15 refactor): they are wire values (ids in records,
serials in certificates, digests a reader recomputes), so they must never change.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.collector.rejections import output_id, short_id
from services.incidents.core import event_id_for, incident_id_for
from services.issuer.certificates import serial_for_verdict
from services.issuer.core import AVRO_BANKS, _output_id, credential_id_for
from services.runtime.stage import Coordinates, InputRecord
from services.tpm.algorithms import SHA_BANKS, alg_by_name
from services.wire.banks import (
    BANK_OF_SYMBOL,
    BANK_PREFERENCE,
    SHA_BANK_OF_SIZE,
    STRONG_BANKS,
    SYMBOL_OF_BANK,
    SYMBOLS,
    UNKNOWN_SYMBOL,
    WIRE_BANKS,
)
from services.wire.coords import coordinates_key, coordinates_record
from services.wire.ids import (
    CanonicalEncodingError,
    coordinate_parts,
    derived_id,
    record_digest,
    record_id,
    text_digest,
)
from services.wire.time import EPOCH, epoch_ms, to_datetime

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
AT = Coordinates("attest.requests.v1", 3, 42)
INP = InputRecord("host-a", "hostgate.X", {}, AT, 0)


# -- banks ---------------------------------------------------------------------------------

def _hash_alg_enums(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == "enum" and node.get("name") == "hostgate.HashAlg":
            yield node
        for value in node.values():
            yield from _hash_alg_enums(value)
    elif isinstance(node, list):
        for value in node:
            yield from _hash_alg_enums(value)


def test_symbols_are_the_schemas_hash_alg_symbols() -> None:
    enums = [e for path in sorted(SCHEMAS.glob("*/v*.avsc"))
             for e in _hash_alg_enums(json.loads(path.read_text()))]
    assert enums, "no schema defines hostgate.HashAlg"
    for enum in enums:
        assert enum["symbols"] == [UNKNOWN_SYMBOL, *SYMBOLS]
        assert enum["default"] == UNKNOWN_SYMBOL


def test_bank_symbol_round_trip() -> None:
    assert SYMBOLS == ("SHA1", "SHA256", "SHA384", "SHA512", "SM3_256")
    for bank in WIRE_BANKS:
        assert alg_by_name(bank) is not None, bank  # every wire bank is a known algorithm
        assert SYMBOL_OF_BANK[bank] == bank.upper()
        assert BANK_OF_SYMBOL[SYMBOL_OF_BANK[bank]] == bank
    for symbol in SYMBOLS:
        assert SYMBOL_OF_BANK[BANK_OF_SYMBOL[symbol]] == symbol
    assert UNKNOWN_SYMBOL not in BANK_OF_SYMBOL
    assert "sha3_256" not in SYMBOL_OF_BANK  # known to services.tpm, not to the schema


def test_derived_bank_tables() -> None:
    assert SHA_BANK_OF_SIZE == {20: "sha1", 32: "sha256", 48: "sha384", 64: "sha512"}
    assert BANK_PREFERENCE == ("sha256", "sha384", "sha512", "sm3_256", "sha1")
    assert {"sha256", "sha384", "sha512", "sm3_256"} == STRONG_BANKS
    assert AVRO_BANKS == {"SHA1": "sha1", "SHA256": "sha256", "SHA384": "sha384",
                          "SHA512": "sha512"}
    assert tuple(AVRO_BANKS.values()) == SHA_BANKS


# -- time ----------------------------------------------------------------------------------

@pytest.mark.parametrize("ms", [0, 1, -1, 1_700_000_000_123, 2**53, -62_135_596_800_000])
def test_epoch_ms_int_passes_through(ms: int) -> None:
    assert epoch_ms(ms) == ms


def test_epoch_ms_datetime() -> None:
    when = dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)
    assert epoch_ms(when) == 1_700_000_000_123
    assert epoch_ms(when.replace(tzinfo=None)) == 1_700_000_000_123  # naive: read as UTC
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert epoch_ms(when.astimezone(plus_two)) == 1_700_000_000_123
    assert epoch_ms(EPOCH) == 0


def test_epoch_ms_floors_sub_millisecond_times() -> None:
    assert epoch_ms(dt.datetime(2023, 11, 14, 22, 13, 20, 123999, tzinfo=dt.UTC)) \
        == 1_700_000_000_123
    # before the epoch, flooring goes down, not towards zero
    assert epoch_ms(dt.datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=dt.UTC)) == -1


def test_issue_15_epoch_ms_is_exact_where_float_seconds_are_not() -> None:
    """The collector's converter went through float seconds: 1972-02-22T12:02:41.945 came out
    one millisecond early. Integer arithmetic does not."""
    when = EPOCH + dt.timedelta(milliseconds=67_608_161_945)
    assert int(when.timestamp() * 1000) == 67_608_161_944  # the old way
    assert epoch_ms(when) == 67_608_161_945


@pytest.mark.parametrize("value", [True, False, 1.5, "1700000000123", None, b"\x00"])
def test_epoch_ms_refuses_what_is_not_a_timestamp(value: object) -> None:
    with pytest.raises(TypeError, match=f"not a timestamp: {type(value).__name__}"):
        epoch_ms(value)


@pytest.mark.parametrize("ms", [0, 1_700_000_000_123, 67_608_161_945, 4_102_444_800_000])
def test_to_datetime_round_trip(ms: int) -> None:
    when = to_datetime(ms)
    assert when.tzinfo is dt.UTC
    assert epoch_ms(when) == ms


# -- coordinates ---------------------------------------------------------------------------

def test_coordinates_record_round_trip() -> None:
    rec = coordinates_record(AT)
    assert rec == {"topic": "attest.requests.v1", "partition": 3, "offset": 42}
    assert coordinates_key(rec) == ("attest.requests.v1", 3, 42)
    assert Coordinates(*coordinates_key(rec)) == AT


# -- ids -----------------------------------------------------------------------------------

def test_stage_ids_are_pinned() -> None:
    assert output_id(INP, "rejected") == "collector:rejected:attest.requests.v1:3:42"
    assert short_id(INP, "nonce") == "nonce-59648b1b65df39d5930795a0032d4d12"
    assert _output_id("hs", INP) == "hs-45c84c04988503e25b52344e81b64ddf"
    assert credential_id_for("v-1") == "cred-27e310af65a9ef2d46bb43b887b27fce"
    assert event_id_for(INP) == "ie-9a34f7337140ea1cae55503f"
    assert incident_id_for("host-a", "v-host-a-1") == "inc-1c22ec1c8f212b7cbdf728cd"
    assert serial_for_verdict("v-1") == 419388812690909983346620877467244520160881190868


def test_ids_are_deterministic_and_distinct() -> None:
    same = InputRecord("host-b", "hostgate.Y", {"x": 1}, Coordinates("attest.requests.v1", 3, 42),
                       99)
    assert short_id(same, "nonce") == short_id(INP, "nonce")  # only the coordinates count
    other = InputRecord("host-a", "hostgate.X", {}, Coordinates("attest.requests.v1", 3, 43), 0)
    assert short_id(other, "nonce") != short_id(INP, "nonce")
    assert short_id(INP, "act") != short_id(INP, "nonce")
    assert incident_id_for("host-a", "v-1") != incident_id_for("host-b", "v-1")
    assert record_id("collector", "k", AT) == "collector:k:attest.requests.v1:3:42"
    assert coordinate_parts(AT) == ("attest.requests.v1", "3", "42")


def test_text_digest_framing() -> None:
    assert text_digest("a", "b") != text_digest("a", "b", terminated=True)
    assert text_digest("a", "b", terminated=True) == text_digest("a", "b", "")
    assert text_digest("ab") != text_digest("a", "b")  # the NUL separates
    assert derived_id("p", "a") == "p-" + text_digest("a").hex()[:32]
    assert len(derived_id("p", "a", hex_chars=24)) == len("p-") + 24


SAMPLE: dict[str, Any] = {
    "b": b"\x00\x01", "a": "text", "n": None, "t": True, "f": False, "i": -7,
    "l": [1, "x", {"k": 2}], "when": dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC),
}


def test_record_digest_is_pinned() -> None:
    assert record_digest("hostgate.Sample", SAMPLE).hex() == \
        "43575114163da704bd645e16eb88fabcca6eb81ff69733baa3b19a41a2ed3091"


def test_record_digest_ignores_key_order_and_datetime_form() -> None:
    reordered = dict(reversed(list(SAMPLE.items())))
    as_int = {**SAMPLE, "when": epoch_ms(SAMPLE["when"])}
    want = record_digest("hostgate.Sample", SAMPLE)
    assert record_digest("hostgate.Sample", reordered) == want
    assert record_digest("hostgate.Sample", as_int) == want
    assert record_digest("hostgate.Other", SAMPLE) != want
    assert record_digest("hostgate.Sample", {**SAMPLE, "t": 1}) != want  # a bool is not an int


def test_record_digest_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(CanonicalEncodingError, match="float"):
        record_digest("s", {"x": 1.5})
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(20):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(CanonicalEncodingError, match="deeper than 16"):
        record_digest("s", deep)


def test_subjects_name_exactly_the_product_schemas() -> None:
    from services.wire.subjects import PRODUCT_SUBJECTS

    schemas = Path(__file__).parents[2] / "schemas"
    on_disk = {p.name for p in schemas.iterdir() if p.is_dir()}
    assert on_disk == PRODUCT_SUBJECTS  # the test stage's records live in tests/support/schemas


def test_no_module_spells_a_subject_outside_the_subjects_list() -> None:
    """A subject is named once (``services.wire.subjects``); a literal elsewhere is a second
    spelling that a rename would miss."""
    import ast

    from services.wire.subjects import PRODUCT_SUBJECTS

    services = Path(__file__).parents[2] / "services"
    spelled = []
    for path in sorted(services.rglob("*.py")):
        if path.relative_to(services).as_posix() == "wire/subjects.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in PRODUCT_SUBJECTS:
                spelled.append(f"{path.relative_to(services)}:{node.lineno} {node.value}")
    assert not spelled
