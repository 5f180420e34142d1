"""Hostile values: each kind of poison raises the right ``CodecError`` with a clear message."""

from __future__ import annotations

import datetime as dt
import struct
import tracemalloc
from pathlib import Path

import pytest

from services.runtime.codec import (
    InvalidRecord,
    MalformedRecord,
    UnexpectedRecordType,
    UnknownSchema,
)
from tests.support.eostest import eostest_codec

CODEC = eostest_codec()
T0 = dt.datetime(2025, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
POLICY = {
    "policy_id": "baseline",
    "version": 3,
    "digest": bytes(range(32)),
    "document": "rules:\n  - secure_boot: on\n",
    "media_type": "application/yaml",
    "published_at": T0,
    "author": "ops@example.org",
}
SUBJECT = "hostgate.PolicyPublished"


def _zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte, z = z & 0x7F, z >> 7
        out.append(byte | (0x80 if z else 0))
        if not z:
            return bytes(out)


def _header(subject: str) -> bytes:
    return b"\xc3\x01" + CODEC.newest(subject).fingerprint


def test_empty_value() -> None:
    with pytest.raises(MalformedRecord, match=r"empty value \(at byte offset 0\)"):
        CODEC.decode(b"")


@pytest.mark.parametrize("first", [0x01, 0x7B, 0xC2, 0xFF])
def test_unknown_first_byte(first: int) -> None:
    with pytest.raises(MalformedRecord, match=f"first byte 0x{first:02x} is neither") as info:
        CODEC.decode(bytes([first]) + b"payload")
    assert info.value.offset == 0


def test_bad_single_object_second_byte() -> None:
    with pytest.raises(MalformedRecord, match="marker is c302, want c301") as info:
        CODEC.decode(b"\xc3\x02" + bytes(20))
    assert info.value.offset == 1


@pytest.mark.parametrize("length", [2, 5, 9])
def test_truncated_single_object_header(length: int) -> None:
    value = CODEC.encode(SUBJECT, POLICY)[:length]
    with pytest.raises(MalformedRecord, match=f"header truncated \\({length} of 10") as info:
        CODEC.decode(value)
    assert info.value.offset == length


def test_lone_single_object_marker_byte() -> None:
    with pytest.raises(MalformedRecord, match="marker is c3, want c301"):
        CODEC.decode(b"\xc3")


@pytest.mark.parametrize("length", [1, 3, 4])
def test_truncated_confluent_header(length: int) -> None:
    with pytest.raises(MalformedRecord, match=f"Confluent header truncated \\({length} of 5"):
        CODEC.decode((b"\x00" + struct.pack(">I", 101))[:length])


def test_unknown_fingerprint() -> None:
    value = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x00"
    with pytest.raises(UnknownSchema, match="fingerprint 0123456789abcdef is not in schemas/"):
        CODEC.decode(value)


def test_unknown_confluent_schema_id() -> None:
    with pytest.raises(UnknownSchema, match=r"schema id 999999 is not in schemas/registry\.json"):
        CODEC.decode(b"\x00" + struct.pack(">I", 999999) + b"\x00")


def test_every_truncation_of_a_valid_body_is_malformed() -> None:
    value = CODEC.encode(SUBJECT, POLICY)
    assert CODEC.decode(value).record == POLICY
    for cut in range(10, len(value)):
        with pytest.raises(MalformedRecord, match="body does not decode") as info:
            CODEC.decode(value[:cut])
        assert 10 <= info.value.offset <= cut, cut


def test_trailing_bytes_are_malformed() -> None:
    value = CODEC.encode(SUBJECT, POLICY)
    with pytest.raises(MalformedRecord, match="3 trailing bytes after the record") as info:
        CODEC.decode(value + b"abc")
    assert info.value.offset == len(value)


def test_valid_record_of_the_wrong_type() -> None:
    value = CODEC.encode(SUBJECT, POLICY)
    expected = {"hostgate.EvidenceSubmitted"}
    with pytest.raises(UnexpectedRecordType, match=r"'hostgate.PolicyPublished' where only "
                                                   r"hostgate.EvidenceSubmitted expected"):  # fmt: skip
        CODEC.decode(value, expected=expected)
    assert CODEC.decode(value, expected={SUBJECT, "hostgate.Verdict"}).subject == SUBJECT


def test_invalid_utf8_string() -> None:
    # test.TestInput is (key: string, seq: long).
    body = _zigzag_varint(2) + b"\xff\xfe" + _zigzag_varint(1)
    with pytest.raises(MalformedRecord, match="UnicodeDecodeError") as info:
        CODEC.decode(_header("hostgate.test.TestInput") + body)
    assert info.value.offset >= 10


def test_runaway_varint() -> None:
    body = _zigzag_varint(0) + b"\xff" * 30
    with pytest.raises(MalformedRecord, match="body does not decode"):
        CODEC.decode(_header("hostgate.test.TestInput") + body)


@pytest.mark.parametrize("declared", [2**62, 2**40, -5])
def test_absurd_string_length_allocates_nothing_absurd(declared: int) -> None:
    value = _header("hostgate.test.TestInput") + _zigzag_varint(declared) + b"abc"
    tracemalloc.start()
    try:
        with pytest.raises(MalformedRecord, match="EOFError"):
            CODEC.decode(value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_absurd_array_count_stops_at_the_end_of_input() -> None:
    # PendingChallenge: challenge_id, host_id, nonce, pcr_selection (array of records), ...
    body = _zigzag_varint(1) + b"c" + _zigzag_varint(1) + b"h" + _zigzag_varint(0)
    body += _zigzag_varint(2**60) + b"\x02"  # 2**60 PcrSelection items declared, 1 byte given
    tracemalloc.start()
    try:
        with pytest.raises(MalformedRecord, match="body does not decode"):
            CODEC.decode(_header("hostgate.PendingChallenge") + body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_out_of_range_enum_and_union_indexes() -> None:
    # TestOutput has no enum; HostState: host_id, state (enum index), cert_serial (union) ...
    header = _header("hostgate.HostState")
    bad_enum = _zigzag_varint(1) + b"h" + _zigzag_varint(77)
    with pytest.raises(MalformedRecord, match="body does not decode"):
        CODEC.decode(header + bad_enum)
    bad_union = _zigzag_varint(1) + b"h" + _zigzag_varint(1) + _zigzag_varint(9)
    with pytest.raises(MalformedRecord, match="body does not decode"):
        CODEC.decode(header + bad_union)


def test_body_over_the_limit_is_refused_before_reading() -> None:
    small = eostest_codec(max_body_bytes=64)
    value = CODEC.encode(SUBJECT, {**POLICY, "document": "x" * 100})
    with pytest.raises(MalformedRecord, match="exceeds the limit of 64") as info:
        small.decode(value)
    assert info.value.offset == 10 + 64
    with pytest.raises(InvalidRecord, match="exceeds the limit of 64"):
        small.encode(SUBJECT, {**POLICY, "document": "x" * 100})


def test_non_bytes_value() -> None:
    with pytest.raises(MalformedRecord, match="value is str, not bytes"):
        CODEC.decode("c301")  # type: ignore[arg-type]


def test_encode_rejects_unknown_subject_and_bad_records() -> None:
    with pytest.raises(UnknownSchema, match=r"no schema for subject 'hostgate\.Nope'"):
        CODEC.encode("hostgate.Nope", {})
    with pytest.raises(InvalidRecord, match=r"PolicyPublished\.version"):
        CODEC.encode(SUBJECT, {**POLICY, "version": "three"})
    with pytest.raises(InvalidRecord, match="extra"):
        CODEC.encode(SUBJECT, {**POLICY, "extra": 1})
    missing = {k: v for k, v in POLICY.items() if k != "author"}
    with pytest.raises(InvalidRecord, match="author"):
        CODEC.encode(SUBJECT, missing)


def test_an_extra_schema_directory_cannot_reuse_a_product_id(tmp_path: Path) -> None:
    """``Codec.load(also=...)``: a test's schemas join the product's only with ids of their
    own (an id names one schema forever, across every directory)."""
    import json
    import shutil

    from services.runtime.codec import Codec, SchemaDirError
    from tests.support.eostest import SCHEMAS

    clash = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, clash)
    registry = json.loads((clash / "registry.json").read_text())
    registry["schemas"][0]["id"] = 101  # hostgate.ActivationChallenge's
    (clash / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(SchemaDirError, match="share a schema id"):
        Codec.load(also=(clash,))
    assert "hostgate.test.TestInput" not in Codec.load().subjects
