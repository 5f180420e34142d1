"""Hand-built logs, annotated field by field, each broken in one place.

Provenance: synthesised here from PFP spec 1.05 section 10.2 layouts; no real log involved.
"""

from __future__ import annotations

import hashlib
import struct

import pytest

from services.tpm import Limits, parse_event_log, replay, startup_locality, verify_replay
from services.tpm.errors import LimitExceeded, MalformedLog, ReplayMismatch, Unsupported

SHA1, SHA256 = 0x0004, 0x000B
EV_NO_ACTION, EV_SEPARATOR, EV_EFI_ACTION = 3, 4, 0x80000007


def u8(v: int) -> bytes:
    return struct.pack("<B", v)


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def spec_id(algs: list[tuple[int, int]], vendor: bytes = b"", *, count: int | None = None) -> bytes:
    """TCG_EfiSpecIDEventStruct."""
    body = (
        b"Spec ID Event03\x00"  # signature[16]          @+0
        + u32(0)  # platformClass                          @+16
        + u8(0) + u8(2) + u8(0) + u8(2)  # minor, major, errata, uintnSize  @+20
        + u32(len(algs) if count is None else count)  # numberOfAlgorithms  @+24
        + b"".join(u16(a) + u16(s) for a, s in algs)  # digestSizes[]       @+28
        + u8(len(vendor)) + vendor  # vendorInfoSize, vendorInfo
    )
    return body


def header_event(body: bytes, pcr: int = 0) -> bytes:
    """First event, TCG_PCR_EVENT: pcrIndex@0 eventType@4 digest[20]@8 eventSize@28 event@32."""
    return u32(pcr) + u32(EV_NO_ACTION) + bytes(20) + u32(len(body)) + body


def event2(pcr: int, etype: int, digests: list[tuple[int, bytes]], data: bytes) -> bytes:
    """TCG_PCR_EVENT2: pcrIndex@0 eventType@4 count@8 {hashAlg u16, digest}... eventSize, event."""
    return (
        u32(pcr) + u32(etype) + u32(len(digests))
        + b"".join(u16(a) + d for a, d in digests)
        + u32(len(data)) + data
    )


def good_event(pcr: int = 4, data: bytes = b"hello", etype: int = EV_EFI_ACTION) -> bytes:
    return event2(pcr, etype, [(SHA1, hashlib.sha1(data).digest()),
                               (SHA256, hashlib.sha256(data).digest())], data)


HEADER = header_event(spec_id([(SHA1, 20), (SHA256, 32)]))  # 32 + 33 = 65 bytes
FIRST = len(HEADER)  # offset of the first TCG_PCR_EVENT2


def sha1_event(pcr: int, etype: int, data: bytes) -> bytes:
    """TCG_PCR_EVENT (SHA1 format)."""
    return u32(pcr) + u32(etype) + hashlib.sha1(data).digest() + u32(len(data)) + data


def expect(data: bytes, offset: int, field: str | None, seq: int | None = None,
           cls: type[MalformedLog] = MalformedLog, limits: Limits | None = None) -> None:
    with pytest.raises(cls) as info:
        parse_event_log(data, limits=limits or Limits())
    assert info.value.offset == offset
    assert info.value.field == field
    if seq is not None:
        assert info.value.seq == seq
    assert f"at byte offset {offset}" in str(info.value)


def test_well_formed_reference_log_parses() -> None:
    log = parse_event_log(HEADER + good_event() + good_event(pcr=5))
    assert log.format == "crypto-agile" and log.banks == ("sha1", "sha256")
    assert [e.offset for e in log.events] == [0, FIRST, FIRST + len(good_event())]
    assert log.events[1].data_offset == FIRST + 12 + 22 + 34 + 4


def test_empty() -> None:
    expect(b"", 0, None)


def test_truncated_first_header() -> None:
    expect(HEADER[:20], 0, "TCG_PCR_EVENT")


def test_spec_id_without_algorithms() -> None:
    expect(header_event(spec_id([])), 32 + 24, "numberOfAlgorithms", seq=0)


def test_spec_id_wrong_size_for_known_algorithm() -> None:
    expect(header_event(spec_id([(SHA256, 20)])), 32 + 28 + 2, "digestSizes[0].digestSize")


def test_spec_id_algorithm_table_past_event_size() -> None:
    body = spec_id([(SHA1, 20), (SHA256, 32)], count=5)  # claims 5 entries, has 2 (+vendor)
    expect(header_event(body), 32 + 28 + 8, "digestSizes[2]")


def test_spec_id_vendor_info_past_event_size() -> None:
    body = spec_id([(SHA1, 20)])[:-1] + u8(4)  # vendorInfoSize 4, no vendor bytes
    expect(header_event(body), 32 + 32, "vendorInfoSize")


def test_truncated_event2_header() -> None:
    expect(HEADER + good_event()[:10], FIRST, "TCG_PCR_EVENT2", seq=1)


def test_digest_count_too_high() -> None:
    ev = bytearray(good_event())
    ev[8:12] = u32(3)  # TPML_DIGEST_VALUES.count: 3 > 2 declared algorithms
    expect(HEADER + bytes(ev), FIRST + 8, "digests.count", seq=1)


def test_digest_count_over_limit() -> None:
    ev = bytearray(good_event())
    ev[8:12] = u32(0x10000000)
    expect(HEADER + bytes(ev), FIRST + 8, "digests.count", seq=1, cls=LimitExceeded)


def test_unknown_algorithm_in_digest() -> None:
    ev = bytearray(good_event())
    ev[12 + 22 : 12 + 24] = u16(0x0099)  # second digest's hashAlg: not declared
    expect(HEADER + bytes(ev), FIRST + 12 + 22, "digests[1].hashAlg", seq=1)


def test_same_algorithm_twice() -> None:
    ev = event2(4, EV_EFI_ACTION, [(SHA1, bytes(20)), (SHA1, bytes(20))], b"x")
    expect(HEADER + ev, FIRST + 12 + 22, "digests[1].hashAlg")


def test_truncated_digest() -> None:
    expect(HEADER + good_event()[:12 + 2 + 10], FIRST + 14, "digests[0].digest")


def test_event_size_past_end() -> None:
    ev = good_event(data=b"hello")
    size_at = FIRST + 12 + 22 + 34
    expect(HEADER + ev[:-2], size_at, "eventSize", seq=1)


def test_event_size_over_limit() -> None:
    ev = good_event(data=b"x" * 100)
    expect(HEADER + ev, FIRST + 68, "eventSize", cls=LimitExceeded,
           limits=Limits(max_event_data=99))


def test_pcr_index_out_of_range() -> None:
    expect(HEADER + good_event(pcr=40), FIRST, "pcrIndex", seq=1)


def test_too_many_events() -> None:
    log = HEADER + good_event() * 5
    expect(log, FIRST + 3 * len(good_event()), "log", seq=4, cls=LimitExceeded,
           limits=Limits(max_events=4))


def test_log_too_big() -> None:
    expect(HEADER + good_event(), 64, "log", cls=LimitExceeded, limits=Limits(max_log_bytes=64))


def test_only_padding() -> None:
    expect(b"\xff" * 64, 0, None)


def test_trailing_padding_is_counted_garbage_is_not() -> None:
    body = HEADER + good_event()
    assert parse_event_log(body + b"\xff" * 100).trailing_padding == 100
    assert parse_event_log(body + b"\x00" * 7).trailing_padding == 7
    # Three stray bytes that are not padding: a truncated header at their offset.
    expect(body + b"\x01\x02\x03", len(body), "TCG_PCR_EVENT2", seq=2)


def test_sha1_format_truncated_header() -> None:
    log = sha1_event(0, 8, b"crtm") + sha1_event(4, 5, b"x")[:31]
    expect(log, 36, "TCG_PCR_EVENT", seq=1)


def test_sha1_format_event_size_past_end() -> None:
    log = sha1_event(0, 8, b"crtm") + sha1_event(4, 5, b"abcdef")[:-1]
    expect(log, 36 + 28, "eventSize", seq=1)


def startup_locality_event(locality: int) -> bytes:
    data = b"StartupLocality\x00" + u8(locality)
    return event2(0, EV_NO_ACTION, [(SHA1, bytes(20)), (SHA256, bytes(32))], data)


def test_startup_locality_3_sets_pcr0_initial_value() -> None:
    log = parse_event_log(HEADER + startup_locality_event(3) + good_event(pcr=0, data=b"crtm"))
    assert startup_locality(log) == 3
    expected = hashlib.sha256(bytes(31) + b"\x03" + hashlib.sha256(b"crtm").digest()).digest()
    assert replay(log)["sha256"][0] == expected


def test_startup_locality_after_pcr0_measurement_is_rejected() -> None:
    log = parse_event_log(HEADER + good_event(pcr=0) + startup_locality_event(3))
    with pytest.raises(MalformedLog) as info:
        replay(log)
    assert info.value.seq == 2 and info.value.offset == FIRST + len(good_event(pcr=0))


def test_startup_locality_value_out_of_range() -> None:
    log = parse_event_log(HEADER + startup_locality_event(2) + good_event(pcr=0))
    with pytest.raises(MalformedLog) as info:
        replay(log)
    assert info.value.field == "StartupLocality"
    assert info.value.offset == FIRST + 12 + 22 + 34 + 4 + 16


def test_event_missing_a_bank_makes_that_bank_unverifiable() -> None:
    data = b"only-sha1"
    ev = event2(4, EV_EFI_ACTION, [(SHA1, hashlib.sha1(data).digest())], data)
    log = parse_event_log(HEADER + ev)
    assert set(replay(log)) == {"sha1"}
    sha256_pcr4 = hashlib.sha256(bytes(32) + hashlib.sha256(data).digest()).digest()
    with pytest.raises(ReplayMismatch) as info:
        verify_replay(log, {"sha256": {4: sha256_pcr4}})
    assert "no sha256 digest for event 1" in str(info.value)


def test_unknown_quirk_id_is_refused() -> None:
    log = parse_event_log(HEADER + good_event())
    with pytest.raises(Unsupported):
        verify_replay(log, {"sha1": {4: bytes(20)}}, allowed_quirks=["no-such-quirk"])


def test_untouched_pcrs_compare_with_reset_values() -> None:
    log = parse_event_log(HEADER + good_event())
    pcr4 = replay(log)["sha1"][4]
    quoted = {"sha1": {4: pcr4, 7: bytes(20), 17: b"\xff" * 20}}
    result = verify_replay(log, quoted, pcrs=[4, 7, 17])
    assert result.checked_pcrs == {4, 7, 17}
    with pytest.raises(ReplayMismatch) as info:
        verify_replay(log, {"sha1": {4: pcr4, 17: bytes(20)}}, pcrs=[4, 17])
    assert info.value.first == ("sha1", 17)


@pytest.mark.parametrize("pad", [b"\x00", b"\xff"])
@pytest.mark.parametrize("body_len", [0, 1, 63, 64, 65, 200])
@pytest.mark.parametrize("pad_len", [0, 1, 63, 64, 65, 127, 128, 129, 4095, 65536, 65537, 300_001])
def test_padding_start_equals_rstrip(pad: bytes, body_len: int, pad_len: int) -> None:
    # The chunked tail search must find exactly the offset a byte-by-byte rstrip finds, at every
    # boundary of its doubling and halving (chunk sizes 64 .. 64 KiB).
    from services.tpm.eventlog import _padding_start

    other = b"\x01" if pad == b"\x00" else b"\xfe"
    for body in (other * body_len, (pad + other) * (body_len // 2) + other * (body_len % 2)):
        data = body + pad * pad_len
        if not data:
            continue
        want = len(data.rstrip(pad)) if data[-1:] == pad else len(data)
        assert _padding_start(data) == want, (len(body), pad_len)
