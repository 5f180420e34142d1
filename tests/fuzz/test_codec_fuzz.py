"""Fuzz ``Codec.decode``: whatever the bytes, it returns a ``Decoded`` or raises a ``CodecError``.

Three generators: arbitrary bytes; a valid header of every subject followed by arbitrary bytes
(so the Avro body decoder itself is exercised, not only the framing checks); and mutations
(byte flips, insertions, deletions, truncations) of valid encodings of random records.
"""

from __future__ import annotations

import random
import struct

import pytest
from fastavro.utils import generate_many
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime.codec import Codec, CodecError, Decoded

CODEC = Codec.load(max_body_bytes=64 * 1024)
SUBJECTS = sorted(CODEC.subjects)
HEADERS = [b"\xc3\x01" + sv.fingerprint for sv in CODEC.versions] + [
    b"\x00" + struct.pack(">I", sv.schema_id) for sv in CODEC.versions
]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seeds() -> list[bytes]:
    random.seed(20260101)  # fastavro.utils.generate_many draws from the global random
    seeds = []
    for subject in SUBJECTS:
        for record in generate_many(CODEC.newest(subject).parsed, 3):
            seeds.append(CODEC.encode(subject, record))
    return seeds


SEEDS = _seeds()


def _decode_or_codec_error(data: bytes) -> None:
    try:
        result = CODEC.decode(data)
    except CodecError as exc:
        assert str(exc)
        return
    assert isinstance(result, Decoded)
    assert result.subject in CODEC.subjects


@FUZZ
@given(st.binary(max_size=256))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode_or_codec_error(data)


@FUZZ
@given(st.sampled_from(HEADERS), st.binary(max_size=512))
def test_valid_header_arbitrary_body(header: bytes, body: bytes) -> None:
    _decode_or_codec_error(header + body)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    value = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not value:
            break
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "varint"]))
        at = draw(st.integers(min_value=0, max_value=len(value) - 1))
        if kind == "flip":
            value[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif kind == "insert":
            value[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del value[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif kind == "truncate":
            del value[at:]
        else:  # a long varint (huge declared length or count) spliced in
            value[at:at] = b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f"
    return bytes(value)


@FUZZ
@given(_mutated())
def test_mutated_valid_records(data: bytes) -> None:
    _decode_or_codec_error(data)


@pytest.mark.parametrize("seed", range(0, len(SEEDS), 7))
def test_seeds_are_valid(seed: int) -> None:
    # The mutation corpus must start from values that do decode.
    assert isinstance(CODEC.decode(SEEDS[seed]), Decoded)
