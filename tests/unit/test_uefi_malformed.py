"""UEFI event-data decoders on hand-built bytes, annotated field by field.

Provenance: every byte string here is built by this file from the UEFI 2.10 / TCG PFP 1.05
layouts cited in ``services/tpm/uefi.py`` and ``devicepath.py``. ``BASE`` stands in for the
event's ``data_offset``: every error must name ``BASE + local offset`` and the event seq.
"""

from __future__ import annotations

import struct
import uuid

import pytest

from services.tpm.devicepath import MAX_DEVICE_PATH_NODES, decode_device_path
from services.tpm.errors import LimitExceeded, MalformedEventData
from services.tpm.uefi import (
    EFI_CERT_SHA256_GUID,
    EFI_GLOBAL_VARIABLE_GUID,
    decode_boot_order,
    decode_firmware_blob,
    decode_firmware_blob2,
    decode_handoff_tables,
    decode_image_load_event,
    decode_load_option,
    decode_signature_data,
    decode_signature_lists,
    decode_uefi_variable_data,
)

BASE = 1000
SEQ = 7


def guid(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def utf16(s: str) -> bytes:
    return s.encode("utf-16-le")


def variable(name: str, value: bytes, *, name_len: int | None = None,
             data_len: int | None = None) -> bytes:
    return (
        guid(EFI_GLOBAL_VARIABLE_GUID)  # VariableName GUID            @0
        + u64(len(name) if name_len is None else name_len)  # UnicodeNameLength @16
        + u64(len(value) if data_len is None else data_len)  # VariableDataLength @24
        + utf16(name)  # UnicodeName                                      @32
        + value  # VariableData
    )


def end_node() -> bytes:
    return bytes([0x7F, 0xFF]) + u16(4)


def file_node(path: str) -> bytes:
    body = utf16(path + "\x00")
    return bytes([0x04, 0x04]) + u16(4 + len(body)) + body


def assert_error(exc: pytest.ExceptionInfo[MalformedEventData], offset: int, field: str) -> None:
    assert exc.value.offset == offset, str(exc.value)
    assert exc.value.seq == SEQ
    assert exc.value.field == field


# --- UEFI_VARIABLE_DATA ------------------------------------------------------------------
def test_variable_roundtrip() -> None:
    v = decode_uefi_variable_data(variable("SecureBoot", b"\x01"), base=BASE, seq=SEQ)
    assert (v.variable_guid, v.name, v.variable_data) == (EFI_GLOBAL_VARIABLE_GUID, "SecureBoot", b"\x01")
    assert v.data_offset == BASE + 32 + 20


def test_variable_name_length_overruns() -> None:
    data = variable("db", b"", name_len=1 << 40)
    with pytest.raises(MalformedEventData) as exc:
        decode_uefi_variable_data(data, base=BASE, seq=SEQ)
    assert_error(exc, BASE + 16, "UnicodeNameLength")


def test_variable_data_length_overruns() -> None:
    data = variable("db", b"\x00" * 4, data_len=5)
    with pytest.raises(MalformedEventData) as exc:
        decode_uefi_variable_data(data, base=BASE, seq=SEQ)
    assert_error(exc, BASE + 24, "VariableDataLength")


def test_variable_truncated_header() -> None:
    with pytest.raises(MalformedEventData) as exc:
        decode_uefi_variable_data(guid(EFI_GLOBAL_VARIABLE_GUID) + b"\x01\x00", base=BASE, seq=SEQ)
    assert_error(exc, BASE + 16, "UnicodeNameLength")


def test_variable_trailing_bytes_rejected_unless_allowed() -> None:
    data = variable("Shim", b"\x30\x82") + b"\x00"
    with pytest.raises(MalformedEventData) as exc:
        decode_uefi_variable_data(data, base=BASE, seq=SEQ)
    assert exc.value.offset == BASE + len(data) - 1
    assert decode_uefi_variable_data(data, allow_trailing=True).trailing == 1


# --- EFI_SIGNATURE_LIST ------------------------------------------------------------------
def sha256_list(hashes: list[bytes], owner: str, *, sig_size: int | None = None) -> bytes:
    size = 16 + 32 if sig_size is None else sig_size
    body = b"".join(guid(owner) + h for h in hashes)
    return (
        guid(EFI_CERT_SHA256_GUID)  # SignatureType      @0
        + u32(28 + len(body))  # SignatureListSize        @16
        + u32(0)  # SignatureHeaderSize                   @20
        + u32(size)  # SignatureSize                      @24
        + body  # EFI_SIGNATURE_DATA[]                    @28
    )


OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"


def test_signature_list_of_hashes() -> None:
    (lst,) = decode_signature_lists(sha256_list([b"\xaa" * 32, b"\xbb" * 32], OWNER))
    assert [(e.kind, e.owner, e.digest) for e in lst.entries] == [
        ("sha256", OWNER, b"\xaa" * 32),
        ("sha256", OWNER, b"\xbb" * 32),
    ]


def test_signature_list_size_overruns() -> None:
    data = bytearray(sha256_list([b"\xaa" * 32], OWNER))
    data[16:20] = u32(10_000)
    with pytest.raises(MalformedEventData) as exc:
        decode_signature_lists(bytes(data), base=BASE, seq=SEQ)
    assert_error(exc, BASE + 16, "SignatureListSize")


def test_signature_size_wrong_for_hash_type() -> None:
    data = sha256_list([b"\xaa" * 33], OWNER, sig_size=16 + 33)
    with pytest.raises(MalformedEventData) as exc:
        decode_signature_lists(data, base=BASE, seq=SEQ)
    assert_error(exc, BASE + 24, "SignatureSize")


def test_second_list_error_offset_is_absolute() -> None:
    first = sha256_list([b"\xaa" * 32], OWNER)
    second = bytearray(sha256_list([b"\xbb" * 32], OWNER))
    second[24:28] = u32(7)  # SignatureSize smaller than an owner GUID
    with pytest.raises(MalformedEventData) as exc:
        decode_signature_lists(first + bytes(second), base=BASE, seq=SEQ)
    assert_error(exc, BASE + len(first) + 24, "SignatureSize")


def test_signature_data_without_value() -> None:
    with pytest.raises(MalformedEventData) as exc:
        decode_signature_data(guid(OWNER), base=BASE, seq=SEQ)
    assert_error(exc, BASE + 16, "SignatureData")


def test_signature_data_unparseable_certificate_is_kept_not_raised() -> None:
    entry = decode_signature_data(guid(OWNER) + b"\x30\x82\x00\x10" + b"\x00" * 40)
    assert entry.kind == "x509" and entry.subject is None and entry.parse_error


# --- device paths, load options, image loads -------------------------------------------------
def test_device_path_text() -> None:
    pci_root = bytes([0x02, 0x01]) + u16(12) + u32(0x0A0341D0) + u32(0)  # PciRoot(0x0)
    pci = bytes([0x01, 0x01]) + u16(6) + bytes([0x0, 0x1F])  # function 0, device 0x1f
    path = decode_device_path(pci_root + pci + file_node("\\EFI\\BOOT\\BOOTX64.EFI") + end_node())
    assert path.text == "PciRoot(0x0)/Pci(0x1f,0x0)/\\EFI\\BOOT\\BOOTX64.EFI"
    assert path.file_path == "\\EFI\\BOOT\\BOOTX64.EFI"


def test_device_path_node_shorter_than_header() -> None:
    data = file_node("\\a") + bytes([0x04, 0x04]) + u16(3)
    with pytest.raises(MalformedEventData) as exc:
        decode_device_path(data, base=BASE, seq=SEQ)
    assert_error(exc, BASE + len(file_node("\\a")) + 2, "node.length")


def test_device_path_node_overruns() -> None:
    data = bytes([0x04, 0x04]) + u16(200) + b"\x00" * 10
    with pytest.raises(MalformedEventData) as exc:
        decode_device_path(data, base=BASE, seq=SEQ)
    assert_error(exc, BASE + 4, "node.data")


def test_device_path_node_count_is_bounded() -> None:
    data = (bytes([0x01, 0x01]) + u16(6) + b"\x00\x00") * (MAX_DEVICE_PATH_NODES + 1)
    with pytest.raises(LimitExceeded):
        decode_device_path(data, base=BASE, seq=SEQ)


def test_device_path_bytes_after_end() -> None:
    data = end_node() + b"\x00"
    with pytest.raises(MalformedEventData) as exc:
        decode_device_path(data, base=BASE, seq=SEQ)
    assert exc.value.offset == BASE + 4


def load_option(desc: bytes, path: bytes) -> bytes:
    return u32(1) + u16(len(path)) + desc + path  # Attributes @0, FilePathListLength @4, Description @6


def test_load_option() -> None:
    opt = decode_load_option(load_option(utf16("ubuntu\x00"), file_node("\\shim.efi") + end_node()))
    assert (opt.description, opt.device_path.text, opt.active) == ("ubuntu", "\\shim.efi", True)


def test_load_option_description_unterminated() -> None:
    with pytest.raises(MalformedEventData) as exc:
        decode_load_option(load_option(utf16("ubuntu"), b""), base=BASE, seq=SEQ)
    assert_error(exc, BASE + 6, "Description")


def test_load_option_path_list_too_long() -> None:
    data = u32(1) + u16(50) + utf16("x\x00") + end_node()
    with pytest.raises(MalformedEventData) as exc:
        decode_load_option(data, base=BASE, seq=SEQ)
    assert_error(exc, BASE + 10, "FilePathList")


def test_boot_order_odd_length() -> None:
    assert decode_boot_order(u16(1) + u16(0x1A)) == (1, 0x1A)
    with pytest.raises(MalformedEventData) as exc:
        decode_boot_order(b"\x01\x00\x02", base=BASE, seq=SEQ)
    assert_error(exc, BASE, "BootOrder")


def image_load(path: bytes, *, path_len: int | None = None) -> bytes:
    return (
        u64(0x1000)  # ImageLocationInMemory @0
        + u64(0x2000)  # ImageLengthInMemory @8
        + u64(0)  # ImageLinkTimeAddress     @16
        + u64(len(path) if path_len is None else path_len)  # LengthOfDevicePath @24
        + path  # DevicePath @32
    )


def test_image_load_event() -> None:
    img = decode_image_load_event(image_load(file_node("\\grubx64.efi") + end_node()))
    assert (img.location, img.length, img.device_path.file_path) == (0x1000, 0x2000, "\\grubx64.efi")


def test_image_load_path_length_overruns() -> None:
    with pytest.raises(MalformedEventData) as exc:
        decode_image_load_event(image_load(end_node(), path_len=1 << 62), base=BASE, seq=SEQ)
    assert_error(exc, BASE + 24, "LengthOfDevicePath")


def test_image_load_device_path_error_is_absolute() -> None:
    bad_node = bytes([0x04, 0x04]) + u16(2)
    with pytest.raises(MalformedEventData) as exc:
        decode_image_load_event(image_load(bad_node), base=BASE, seq=SEQ)
    assert_error(exc, BASE + 32 + 2, "node.length")


# --- handoff tables and blobs -------------------------------------------------------------
def test_handoff_tables_count_mismatch() -> None:
    table = guid("eb9d2d31-2d88-11d3-9a16-0090273fc14d") + u64(0xFFFF0000)
    ok = decode_handoff_tables(u64(1) + table)
    assert ok.tables == (("eb9d2d31-2d88-11d3-9a16-0090273fc14d", 0xFFFF0000),)
    with pytest.raises(MalformedEventData) as exc:
        decode_handoff_tables(u64(2) + table, base=BASE, seq=SEQ)
    assert_error(exc, BASE + 8, "NumberOfTables")


def test_handoff_tables_count_bounded() -> None:
    with pytest.raises(LimitExceeded):
        decode_handoff_tables(u64(1 << 60), base=BASE, seq=SEQ)


def test_firmware_blobs() -> None:
    assert decode_firmware_blob(u64(0xFF000000) + u64(0x10000)).blob_length == 0x10000
    blob2 = decode_firmware_blob2(bytes([4]) + b"FVMA" + u64(1) + u64(2))
    assert (blob2.description, blob2.blob_base, blob2.blob_length) == ("FVMA", 1, 2)
    with pytest.raises(MalformedEventData) as exc:
        decode_firmware_blob(u64(0) + u64(0) + b"\x00", base=BASE, seq=SEQ)
    assert exc.value.offset == BASE + 16
    with pytest.raises(MalformedEventData) as exc:
        decode_firmware_blob2(bytes([200]) + b"FVMA", base=BASE, seq=SEQ)
    assert_error(exc, BASE + 1, "BlobDescription")
