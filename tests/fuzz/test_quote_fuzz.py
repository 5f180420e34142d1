"""Hypothesis fuzz of the quote / public / signature decoders and verify_quote.

Seeds are the real GCE AK, quote and signature; only ``services.tpm.errors`` may escape.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tpm import keys, quote
from services.tpm.errors import TpmError
from tests.unit.test_quote_gce import decode_attestation, pb_files

ATT = decode_attestation(pb_files()[0].read_bytes())
GQ = ATT.quotes[1]
SEEDS = {"ak": ATT.ak_public, "attest": GQ.attest, "sig": GQ.signature}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for pos, value in flips:
        out[pos % len(out)] = value
    return bytes(out[: cut % (len(out) + 1)])


def _decoders(data: bytes) -> None:
    with contextlib.suppress(TpmError):
        keys.decode_public(data).crypto_key()
    with contextlib.suppress(TpmError):
        quote.decode_attest(data)
    with contextlib.suppress(TpmError):
        quote.verify_attest_signature(keys.decode_public(ATT.ak_public), GQ.attest, data)


@FUZZ
@given(st.binary(max_size=1024))
def test_fuzz_decoders_random(data: bytes) -> None:
    _decoders(data)


_flips = st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6)


def test_rsa_exponent_one_is_a_tpm_error() -> None:
    # TPMT_PUBLIC of the GCE AK: the exponent (u32) sits right before the 2-byte modulus size.
    pub = keys.decode_public(ATT.ak_public)
    assert pub.rsa_bits == 2048
    data = bytearray(ATT.ak_public)
    at = len(data) - 256 - 2 - 4
    assert int.from_bytes(data[at : at + 4], "big") in (0, 65537)
    data[at : at + 4] = (1).to_bytes(4, "big")
    with pytest.raises(TpmError):
        keys.decode_public(bytes(data)).crypto_key()


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), _flips, st.integers(0, 4096))
def test_fuzz_verify_quote_mutated(which: str, flips: list[tuple[int, int]], cut: int) -> None:
    parts = dict(SEEDS)
    parts[which] = _mutate(parts[which], flips, cut if cut % 3 else len(parts[which]))
    _decoders(parts[which])
    with contextlib.suppress(TpmError):
        quote.verify_quote(
            parts["ak"], parts["attest"], parts["sig"], nonce=b"", pcr_values={GQ.bank: GQ.pcrs}
        )
