"""Hand-built IMA entries, annotated field by field (provenance: written for these tests after
the kernel's ``ima_fs.c`` / ``ima_template_lib.c`` formats): templates, signatures, errors."""

from __future__ import annotations

import hashlib
import struct

import pytest

from services.tpm import ima, ima_replay
from services.tpm.errors import LimitExceeded, MalformedImaList, ReplayMismatch


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def field(value: bytes) -> bytes:
    return u32(len(value)) + value


def binary_entry(
    template: str, fields: list[bytes], *, pcr: int = 10, violation: bool = False
) -> bytes:
    data = b"".join(field(f) for f in fields)
    thash = bytes(20) if violation else hashlib.sha1(data).digest()
    return (
        u32(pcr)  # PCR index
        + thash  # SHA-1 template hash
        + field(template.encode())  # template name (length-prefixed, no NUL)
        + field(data)  # template data: its fields, each u32 len | value
    )


def dng(alg: str, digest: bytes) -> bytes:
    return alg.encode() + b":\x00" + digest


SIG = (
    bytes([0x03, 0x02, 0x04])  # EVM_IMA_XATTR_DIGSIG, version 2, hash algo 4 = sha256
    + bytes.fromhex("a1b2c3d4")  # key id (big-endian)
    + struct.pack(">H", 8)  # signature size
    + b"S" * 8  # signature bytes
)


def test_ima_sig_signature_header_is_exposed() -> None:
    digest = hashlib.sha256(b"file").digest()
    data = binary_entry("ima-sig", [dng("sha256", digest), b"/usr/bin/x\x00", SIG])
    (e,) = ima.parse_binary(data).entries
    assert (e.file_hash_alg, e.file_hash, e.path) == ("sha256", digest, "/usr/bin/x")
    assert e.signature is not None
    assert (e.signature.version, e.signature.hash_alg, e.signature.key_id) == (
        2,
        "sha256",
        0xA1B2C3D4,
    )
    assert e.signature.signature == b"S" * 8
    ima_replay.check_template_hashes(ima.parse_binary(data))


def test_ima_sig_ascii_round_trip_matches_binary_template_data() -> None:
    digest = hashlib.sha256(b"file").digest()
    data = binary_entry("ima-sig", [dng("sha256", digest), b"/a path/with spaces\x00", SIG])
    b = ima.parse_binary(data).entries[0]
    line = f"10 {b.template_hash.hex()} ima-sig sha256:{digest.hex()} /a path/with spaces {SIG.hex()}\n"
    a = ima.parse_ascii(line.encode()).entries[0]
    assert a.template_data == b.template_data and a.path == "/a path/with spaces"
    assert a.signature == b.signature
    ima_replay.check_template_hashes(ima.parse_ascii(line.encode()))


def test_ima_sig_without_signature_has_trailing_space_in_ascii() -> None:
    digest = hashlib.sha1(b"x").digest()
    data = binary_entry("ima-sig", [dng("sha1", digest), b"/init\x00", b""])
    b = ima.parse_binary(data).entries[0]
    a = ima.parse_ascii(f"10 {b.template_hash.hex()} ima-sig sha1:{digest.hex()} /init \n".encode())
    assert a.entries[0].template_data == b.template_data and a.entries[0].signature is None


def test_ima_buf_and_modsig_templates() -> None:
    buf = b"kexec cmdline"
    e = ima.parse_binary(
        binary_entry(
            "ima-buf", [dng("sha256", hashlib.sha256(buf).digest()), b"kexec-cmdline\x00", buf]
        )
    ).entries[0]
    assert e.buf == buf and e.path == "kexec-cmdline"
    modsig = b"\x30\x82PKCS7"
    e2 = ima.parse_binary(
        binary_entry(
            "ima-modsig",
            [dng("sha256", bytes(32)), b"/m.ko\x00", b"", dng("sha256", bytes(range(32))), modsig],
        )
    ).entries[0]
    assert e2.modsig == modsig and e2.signature is None


def test_legacy_ima_binary_has_no_template_data_length() -> None:
    digest = hashlib.sha1(b"f").digest()
    data = (
        u32(10)
        + hashlib.sha1(digest + b"/init".ljust(256, b"\x00")).digest()  # hash over d | n padded
        + field(b"ima")
        + digest  # 'd': 20 bytes, no length
        + field(b"/init")  # 'n': u32 len | name, no NUL
    )
    lst = ima.parse_binary(data)
    assert lst.entries[0].path == "/init" and lst.entries[0].file_hash == digest
    ima_replay.check_template_hashes(lst)


def test_big_endian_binary_list() -> None:
    data = binary_entry("ima-ng", [dng("sha1", bytes(20)), b"boot_aggregate\x00"])
    be = (
        struct.pack(">I", 10)
        + data[4:24]
        + struct.pack(">I", 6)
        + b"ima-ng"
        + struct.pack(">I", 4 + 26 + 4 + 15)
        + struct.pack(">I", 26)
        + dng("sha1", bytes(20))
        + struct.pack(">I", 15)
        + b"boot_aggregate\x00"
    )
    e = ima.parse_binary(be, byteorder="big").entries[0]
    assert e.pcr == 10 and e.path == "boot_aggregate"


@pytest.mark.parametrize(
    ("data", "offset", "fld"),
    [
        (u32(10) + bytes(10), 4, "template_hash"),  # truncated template hash
        (u32(10) + bytes(20) + u32(0), 24, None),  # empty template name
        # d-ng declares 26 bytes inside template data of 8: overrun at the d-ng value (offset 38+4)
        (u32(10) + bytes(20) + field(b"ima-ng") + field(u32(26) + b"sha1"), 42, "d-ng"),
        # a d-ng value without 'alg:\0'
        (binary_entry("ima-ng", [b"sha1" + bytes(20), b"x\x00"]), 42, "d-ng"),
        # sha256 prefix with a 20-byte digest
        (binary_entry("ima-ng", [dng("sha256", bytes(20)), b"x\x00"]), 42, "d-ng"),
    ],
)
def test_malformed_binary_reports_offset(data: bytes, offset: int, fld: str | None) -> None:
    with pytest.raises(MalformedImaList) as info:
        ima.parse_binary(data)
    assert info.value.offset == offset and info.value.seq == 0 and info.value.field == fld


def test_bad_signature_header_reports_field() -> None:
    bad = SIG[:7] + struct.pack(">H", 99) + b"S" * 8  # size says 99, 8 follow
    with pytest.raises(MalformedImaList, match="signature size 99") as info:
        ima.parse_binary(binary_entry("ima-sig", [dng("sha1", bytes(20)), b"/x\x00", bad]))
    assert info.value.field == "sig"


@pytest.mark.parametrize(
    ("text", "match", "offset"),
    [
        (b"10 abc ima-ng sha1:00 /x\n", "template_hash", 3),
        (b"10 " + b"0" * 40 + b" ima-xx sha1:00 /x\n", "unknown template", 44),
        (b"1x " + b"0" * 40 + b" ima-ng sha1:" + b"0" * 40 + b" /x\n", "line 1, column 1", 0),
        (b"10 " + b"0" * 40 + b" ima-ng sha1:" + b"0" * 40 + b" /x", "not terminated", 0),
    ],
)
def test_malformed_ascii_reports_line_and_offset(text: bytes, match: str, offset: int) -> None:
    with pytest.raises(MalformedImaList, match=match) as info:
        ima.parse_ascii(text)
    assert info.value.offset == offset


def test_second_ascii_line_error_names_line_2() -> None:
    good = b"10 " + b"0" * 40 + b" ima-ng sha1:" + b"0" * 40 + b" /x\n"
    with pytest.raises(MalformedImaList, match="line 2") as info:
        ima.parse_ascii(good + b"10 zz\n")
    assert info.value.offset == len(good) and info.value.seq == 1


def test_limits_stop_early() -> None:
    one = binary_entry("ima-ng", [dng("sha1", bytes(20)), b"x\x00"])
    with pytest.raises(LimitExceeded) as info:
        ima.parse_binary(one * 3, limits=ima.Limits(max_entries=2))
    assert info.value.offset == 2 * len(one)
    big = binary_entry("ima-buf", [dng("sha1", bytes(20)), b"x\x00", b"B" * 5000])
    with pytest.raises(LimitExceeded):
        ima.parse_binary(big, limits=ima.Limits(max_template_data=4096))
    with pytest.raises(LimitExceeded):
        ima.parse_ascii(b"10 " * 100 + b"\n", limits=ima.Limits(max_line=100))


def test_unknown_binary_template_is_opaque_but_replays() -> None:
    data = binary_entry("my-tmpl", [b"opaque"])
    (e,) = ima.parse_binary(data).entries
    assert e.file_hash is None and e.path is None
    expected = hashlib.sha256(bytes(32) + hashlib.sha256(e.template_data).digest()).digest()
    assert ima_replay.replay(ima.parse_binary(data), ("sha256",))["sha256"][10] == expected


def test_entry_for_unquoted_pcr_fails_closed() -> None:
    data = binary_entry("ima-ng", [dng("sha1", bytes(20)), b"x\x00"], pcr=11)
    lst = ima.parse_binary(data)
    with pytest.raises(ReplayMismatch, match=r"PCR\(s\) \[11\] not quoted"):
        ima_replay.verify_replay(lst, {"sha1": {10: bytes(20)}})
