"""The real Google Cloud quotes in ``corpus/quotes/*.pb`` verify, and match the log A36.

Each file is a go-tpm-tools ``attest.Attestation`` protobuf (proto/attest.proto):
``ak_pub = 1`` (marshalled TPMT_PUBLIC), ``quotes = 2`` (repeated ``Quote{quote = 1
(TPMS_ATTEST), raw_sig = 2 (TPMT_SIGNATURE), pcrs = 3}``), ``event_log = 3``, ``ak_cert = 6``;
``tpm.PCRs{hash = 1 (TPM_ALG_ID), pcrs = 2 (map<uint32, bytes>)}`` (proto/tpm.proto).
The nonces are the ones go-tpm-tools' own test uses (server/verify_test.go
``TestVerifyAttestationWithCerts``): none for ``no-nonce``, ``0x90 0x09`` for ``nonce9009``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.tpm import quote as q
from services.tpm.algorithms import bank_name
from services.tpm.errors import InvalidQuoteSignature, NonceMismatch, PcrDigestMismatch
from tests.unit.test_ima_corpus import corpus_dir, load, manifest

NONCES = {"gce-cos-85-no-nonce.pb": b"", "gce-cos-85-nonce9009.pb": b"\x90\x09"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError(f"bad varint at {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def pb_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Minimal protobuf wire reader: (field number, value) for varint and length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield key >> 3, value
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError(f"field {key >> 3} overruns at {pos}")
            yield key >> 3, buf[pos : pos + n]
            pos += n
        else:
            raise ValueError(f"wire type {wire} at {pos}")


@dataclass(frozen=True)
class GceQuote:
    attest: bytes
    signature: bytes
    bank: str
    pcrs: dict[int, bytes]


@dataclass(frozen=True)
class GceAttestation:
    ak_public: bytes  # as TPM2B_PUBLIC
    quotes: tuple[GceQuote, ...]
    event_log: bytes


def decode_attestation(data: bytes) -> GceAttestation:
    ak = b""
    log = b""
    quotes: list[GceQuote] = []
    for num, val in pb_fields(data):
        if num == 1 and isinstance(val, bytes):
            ak = len(val).to_bytes(2, "big") + val
        elif num == 3 and isinstance(val, bytes):
            log = val
        elif num == 2 and isinstance(val, bytes):
            parts = {n: v for n, v in pb_fields(val) if isinstance(v, bytes)}
            bank, pcrs = "", {}
            for n, v in pb_fields(parts[3]):
                if n == 1 and isinstance(v, int):
                    bank = bank_name(v)
                elif n == 2 and isinstance(v, bytes):
                    kv = dict(pb_fields(v))
                    key, value = kv.get(1, 0), kv.get(2, b"")
                    assert isinstance(key, int) and isinstance(value, bytes)
                    pcrs[key] = value
            quotes.append(GceQuote(parts[1], parts[2], bank, pcrs))
    return GceAttestation(ak, tuple(quotes), log)


def pb_files() -> list[Path]:
    return sorted((corpus_dir() / "quotes").glob("*.pb"))


def _nonce(path: Path) -> bytes:
    return next(v for k, v in NONCES.items() if path.name.endswith(k))


def test_corpus_has_the_two_gce_attestations() -> None:
    assert {p.name.rsplit("__", 1)[-1] for p in pb_files()} == set(NONCES)


@pytest.mark.parametrize("path", pb_files(), ids=lambda p: p.name.rsplit("__", 1)[-1])
def test_gce_quotes_verify_in_all_three_banks(path: Path) -> None:
    att = decode_attestation(path.read_bytes())
    assert hashlib.sha256(att.event_log).hexdigest() == manifest()["A36"]["sha256"]
    assert att.event_log == load("A36")
    quoted = manifest()["A36"]["quoted_pcrs"]["pcrs"]
    banks = set()
    for gq in att.quotes:
        vq = q.verify_quote(
            att.ak_public,
            gq.attest,
            gq.signature,
            nonce=_nonce(path),
            pcr_values={gq.bank: gq.pcrs},
        )
        banks.add(gq.bank)
        assert vq.selection == ((gq.bank, tuple(range(24))),)
        assert {k: v.hex() for k, v in vq.pcr_values[gq.bank].items()} == {
            int(k): v for k, v in quoted[gq.bank].items()
        }
        assert vq.hash_alg == "sha256" and vq.clock_info.reset_count >= 0
        assert vq.firmware_version != 0
    assert banks == {"sha1", "sha256", "sha384"}


@pytest.mark.parametrize("path", pb_files(), ids=lambda p: p.name.rsplit("__", 1)[-1])
def test_gce_quote_rejects_the_other_files_nonce(path: Path) -> None:
    att = decode_attestation(path.read_bytes())
    gq = att.quotes[0]
    other = b"\x90\x09" if _nonce(path) == b"" else b""
    with pytest.raises(NonceMismatch):
        q.verify_quote(
            att.ak_public, gq.attest, gq.signature, nonce=other, pcr_values={gq.bank: gq.pcrs}
        )


def test_gce_quote_rejects_a_changed_pcr_and_a_flipped_attest_bit() -> None:
    att = decode_attestation(pb_files()[0].read_bytes())
    gq = att.quotes[1]
    nonce = _nonce(pb_files()[0])
    pcrs = dict(gq.pcrs) | {10: bytes(len(gq.pcrs[10]))}
    with pytest.raises(PcrDigestMismatch):
        q.verify_quote(
            att.ak_public, gq.attest, gq.signature, nonce=nonce, pcr_values={gq.bank: pcrs}
        )
    tampered = bytearray(gq.attest)
    tampered[-1] ^= 1
    with pytest.raises(InvalidQuoteSignature):
        q.verify_quote(
            att.ak_public, bytes(tampered), gq.signature, nonce=nonce, pcr_values={gq.bank: gq.pcrs}
        )


def test_gce_quoted_pcrs_replay_from_log_a36() -> None:
    import importlib

    from services.tpm import eventlog

    # the module (the package re-exports a function of the same name)
    replay_mod = importlib.import_module("services.tpm.replay")
    att = decode_attestation(pb_files()[0].read_bytes())
    replayed = replay_mod.replay(eventlog.parse_event_log(att.event_log))
    for gq in att.quotes:
        vq = q.verify_quote(
            att.ak_public, gq.attest, gq.signature, nonce=b"", pcr_values={gq.bank: gq.pcrs}
        )
        for pcr in range(10):  # PCR 10 holds IMA, not in the firmware log
            assert replayed[gq.bank][pcr] == vq.pcr_values[gq.bank][pcr], (gq.bank, pcr)
