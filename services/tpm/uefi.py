"""UEFI event data: variables, signature lists, load options, image loads, tables, blobs.

References (section numbers of the documents named):

* TCG PC Client Platform Firmware Profile (PFP) 1.05 rev 23, section 10.4.1 (event types),
  10.4.4 ``UEFI_VARIABLE_DATA`` / ``UEFI_IMAGE_LOAD_EVENT`` / ``UEFI_HANDOFF_TABLE_POINTERS(2)``
  / ``UEFI_PLATFORM_FIRMWARE_BLOB(2)``, 3.3.4.8 (EV_SEPARATOR value 0, error value 1).
* UEFI Specification 2.10, 32.4.1 ``EFI_SIGNATURE_LIST`` / ``EFI_SIGNATURE_DATA`` and the
  ``EFI_CERT_*`` GUIDs; 3.1.3 ``EFI_LOAD_OPTION``; 3.3 global variables.

Every decoder takes the event's bytes plus ``base`` (the event's ``data_offset`` in the log)
and ``seq``, and raises :class:`~services.tpm.errors.MalformedEventData` (or
``LimitExceeded``) naming the absolute byte offset and field. Decoded values are *untrusted*:
they are only meaningful for events whose replay matched a quote.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from services.tpm._datareader import DataReader, decode_utf16, format_guid
from services.tpm.devicepath import DevicePath, decode_device_path
from services.tpm.memo import Memo

__all__ = [
    "EFI_CERT_SHA256_GUID",
    "EFI_CERT_X509_GUID",
    "EFI_GLOBAL_VARIABLE_GUID",
    "EFI_IMAGE_SECURITY_DATABASE_GUID",
    "KEY_DATABASES",
    "MAX_SIGNATURE_ENTRIES",
    "SHIM_LOCK_GUID",
    "WELL_KNOWN_GUIDS",
    "FirmwareBlob",
    "HandoffTables",
    "ImageLoadEvent",
    "LoadOption",
    "SignatureEntry",
    "SignatureList",
    "UefiVariableData",
    "decode_boot_order",
    "decode_firmware_blob",
    "decode_firmware_blob2",
    "decode_handoff_tables",
    "decode_handoff_tables2",
    "decode_image_load_event",
    "decode_load_option",
    "decode_signature_data",
    "decode_signature_lists",
    "decode_uefi_variable_data",
    "decode_utf16_string",
    "guid_name",
]

# --- well-known GUIDs (UEFI 2.10 3.3, 32.4.1, 32.6.3; shim's SHIM_LOCK_GUID) -------------
EFI_GLOBAL_VARIABLE_GUID: Final = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DATABASE_GUID: Final = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
SHIM_LOCK_GUID: Final = "605dab50-e046-4300-abb6-3dd810dd8b23"
EFI_CERT_X509_GUID: Final = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
EFI_CERT_SHA256_GUID: Final = "c1c41626-504c-4092-aca9-41f936934328"

WELL_KNOWN_GUIDS: Final[dict[str, str]] = {
    EFI_GLOBAL_VARIABLE_GUID: "EFI_GLOBAL_VARIABLE",
    EFI_IMAGE_SECURITY_DATABASE_GUID: "EFI_IMAGE_SECURITY_DATABASE_GUID",
    SHIM_LOCK_GUID: "SHIM_LOCK_GUID",
    EFI_CERT_X509_GUID: "EFI_CERT_X509_GUID",
    EFI_CERT_SHA256_GUID: "EFI_CERT_SHA256_GUID",
    "826ca512-cf10-4ac9-b187-be01496631bd": "EFI_CERT_SHA1_GUID",
    "ff3e5307-9fd0-48c9-85f1-8ad56c701e01": "EFI_CERT_SHA384_GUID",
    "093e0fae-a6c4-4f50-9f1b-d41e2b89c19a": "EFI_CERT_SHA512_GUID",
    "3c5766e8-269c-4e34-aa14-ed776e85b3b6": "EFI_CERT_RSA2048_GUID",
    "3bd2a492-96c0-4079-b420-fcf98ef103ed": "EFI_CERT_X509_SHA256_GUID",
    "7076876e-80c2-4ee6-aad2-28b349a6865b": "EFI_CERT_X509_SHA384_GUID",
    "446dbf63-2502-4cda-bcfa-2465d2b0fe9d": "EFI_CERT_X509_SHA512_GUID",
    "4aafd29d-68df-49ee-8aa9-347d375665a7": "EFI_CERT_TYPE_PKCS7_GUID",
    "77fa9abd-0359-4d32-bd60-28f4e78f784b": "MICROSOFT_OWNER_GUID",
    "eb9d2d30-2d88-11d3-9a16-0090273fc14d": "ACPI_TABLE_GUID",
    "8868e871-e4f1-11d3-bc22-0080c73c8881": "ACPI_20_TABLE_GUID",
    "eb9d2d31-2d88-11d3-9a16-0090273fc14d": "SMBIOS_TABLE_GUID",
    "f2fd1544-9794-4a2c-992e-e5bbcf20e394": "SMBIOS3_TABLE_GUID",
}

#: Authenticated variables holding EFI_SIGNATURE_LISTs, and shim's MOK lists.
KEY_DATABASES: Final = frozenset(
    {"PK", "KEK", "db", "dbx", "dbt", "dbr", "MokList", "MokListX", "MokListTrusted"}
)

#: Bound on entries decoded from one variable (a real dbx has ~400 SHA-256 entries).
MAX_SIGNATURE_ENTRIES: Final = 8192
#: Bound on tables in one EV_EFI_HANDOFF_TABLES event (real logs have 1-3).
MAX_HANDOFF_TABLES: Final = 256

_HASH_CERT_SIZES: Final = {
    EFI_CERT_SHA256_GUID: ("sha256", 32),
    "826ca512-cf10-4ac9-b187-be01496631bd": ("sha1", 20),
    "ff3e5307-9fd0-48c9-85f1-8ad56c701e01": ("sha384", 48),
    "093e0fae-a6c4-4f50-9f1b-d41e2b89c19a": ("sha512", 64),
}


def guid_name(guid: str) -> str:
    """The spec name of a well-known GUID, or the GUID itself."""
    return WELL_KNOWN_GUIDS.get(guid, guid)


def decode_utf16_string(data: bytes, *, base: int = 0, seq: int | None = None) -> str:
    """A NUL-terminated UTF-16LE string (EV_S_CRTM_VERSION, PFP 10.4.1)."""
    r = DataReader(data, base=base, seq=seq)
    return decode_utf16(data, r, "string", at=0)


# --- UEFI_VARIABLE_DATA ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UefiVariableData:
    """``UEFI_VARIABLE_DATA`` (PFP 10.4.4.1): ``VariableName`` GUID, ``UnicodeName``, data.

    ``trailing`` counts bytes after ``VariableData`` that the declared lengths do not cover
    (the ``shim-authority-extra-byte`` quirk leaves some); ``data_offset`` is the absolute
    offset of ``variable_data`` in the log.
    """

    variable_guid: str
    name: str
    variable_data: bytes
    data_offset: int
    trailing: int = 0


def decode_uefi_variable_data(
    data: bytes, *, base: int = 0, seq: int | None = None, allow_trailing: bool = False
) -> UefiVariableData:
    """Decode ``UEFI_VARIABLE_DATA``.

    Layout: ``VariableName`` EFI_GUID (16), ``UnicodeNameLength`` u64 (in CHAR16),
    ``VariableDataLength`` u64, ``UnicodeName`` CHAR16[n] (no NUL), ``VariableData``.
    Trailing bytes are an error unless ``allow_trailing``.
    """
    n = len(data)
    if n >= _VARIABLE_HEADER.size:  # well-formed data: one unpack and slices, no reader
        d1, d2, d3, tail, name_len, data_len = _VARIABLE_HEADER.unpack_from(data)
        name_end = _VARIABLE_HEADER.size + 2 * name_len
        if name_len <= (n - _VARIABLE_HEADER.size) // 2 and data_len <= n - name_end:
            value_end = name_end + data_len
            trailing = n - value_end
            if not trailing or allow_trailing:
                try:
                    name = data[_VARIABLE_HEADER.size : name_end].decode("utf-16-le")
                except UnicodeDecodeError:
                    pass
                else:
                    guid = f"{d1:08x}-{d2:04x}-{d3:04x}-{tail[:2].hex()}-{tail[2:].hex()}"
                    return UefiVariableData(
                        guid, name.rstrip("\x00"), data[name_end:value_end], base + name_end,
                        trailing,
                    )
    # malformed (or too short): the bounded reader raises, naming the field and offset
    return _decode_uefi_variable_data_read(data, base, seq, allow_trailing)


#: ``VariableName`` (EFI_GUID as u32, u16, u16, 8 bytes), ``UnicodeNameLength``,
#: ``VariableDataLength``.
_VARIABLE_HEADER: Final = struct.Struct("<IHH8sQQ")


def _decode_uefi_variable_data_read(
    data: bytes, base: int, seq: int | None, allow_trailing: bool
) -> UefiVariableData:
    """:func:`decode_uefi_variable_data` field by field (the path that reports errors)."""
    r = DataReader(data, base=base, seq=seq)
    guid = r.guid("VariableName")
    name_len = r.u64("UnicodeNameLength")
    data_len = r.u64("VariableDataLength")
    if name_len > r.remaining // 2:
        raise r.error(
            f"UnicodeNameLength {name_len} exceeds the {r.remaining} bytes left", "UnicodeNameLength",
            at=16,
        )
    at = r.pos
    name = decode_utf16(r.take(2 * name_len, "UnicodeName"), r, "UnicodeName", at=at)
    if data_len > r.remaining:
        raise r.error(
            f"VariableDataLength {data_len} exceeds the {r.remaining} bytes left",
            "VariableDataLength",
            at=24,
        )
    var_offset = r.offset
    value = r.take(data_len, "VariableData")
    trailing = r.remaining
    if trailing and not allow_trailing:
        r.expect_end("VariableData")
    return UefiVariableData(guid, name, value, var_offset, trailing)


# --- EFI_SIGNATURE_LIST -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SignatureEntry:
    """One ``EFI_SIGNATURE_DATA``: owner GUID plus a certificate or a hash.

    ``kind`` is ``"x509"``, a hash bank name (``"sha256"``...) or ``"other"``. For X.509,
    ``sha256`` is the SHA-256 of the DER and ``subject`` its RFC 4514 subject (``None`` when the
    DER does not parse, which ``parse_error`` then explains); for hashes, ``sha256`` is ``None``
    and ``value`` holds the hash.
    """

    owner: str
    kind: str
    value: bytes
    sha256: bytes | None = None
    subject: str | None = None
    parse_error: str | None = None

    @property
    def digest(self) -> bytes:
        """What identifies the entry: SHA-256 of a certificate's DER, or the hash itself."""
        return self.sha256 if self.sha256 is not None else self.value


@dataclass(frozen=True, slots=True)
class SignatureList:
    """One ``EFI_SIGNATURE_LIST`` (UEFI 32.4.1): its type GUID and entries."""

    signature_type: str
    entries: tuple[SignatureEntry, ...]




def _x509_subject(der: bytes) -> tuple[str | None, str | None]:
    """(RFC 4514 subject, None) or (None, why the DER does not parse)."""
    try:
        # Real db/KEK certificates break RFC 5280 in small ways (negative serials, odd
        # attribute lengths); cryptography warns about them. They are data, not our problem.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert = x509.load_der_x509_certificate(der)
            return cert.subject.rfc4514_string(), None
    except ValueError as exc:
        return None, f"unparseable DER: {exc}"


def _certificate_entry(owner: str, der: bytes, memo: Memo | None) -> SignatureEntry:
    digest = hashlib.sha256(der).digest()
    # the subject is a function of the DER alone: ``memo.x509_subjects`` by its SHA-256 (db/KEK
    # certificates are the same on every host of a fleet); an unparseable DER is an outcome
    # that names no offset, so it is remembered too
    found = memo.x509_subjects.get(digest) if memo is not None else None
    if found is None:
        found = _x509_subject(der)
        if memo is not None:
            memo.x509_subjects.put(digest, found, len(der))
    subject, error = found
    return SignatureEntry(owner, "x509", der, digest, subject, error)


def _entry(sig_type: str, owner: str, value: bytes, memo: Memo | None) -> SignatureEntry:
    if sig_type == EFI_CERT_X509_GUID:
        return _certificate_entry(owner, value, memo)
    hashed = _HASH_CERT_SIZES.get(sig_type)
    return SignatureEntry(owner, hashed[0] if hashed else "other", value)


def decode_signature_lists(
    data: bytes, *, base: int = 0, seq: int | None = None, memo: Memo | None = None
) -> tuple[SignatureList, ...]:
    """Decode a variable value made of ``EFI_SIGNATURE_LIST``s (PK, KEK, db, dbx, MokList...).

    Each list: ``SignatureType`` GUID, ``SignatureListSize`` u32, ``SignatureHeaderSize`` u32,
    ``SignatureSize`` u32, header bytes, then ``EFI_SIGNATURE_DATA`` entries of
    ``SignatureSize`` bytes (``SignatureOwner`` GUID + data). Hash-typed lists must have the
    hash's size. At most ``MAX_SIGNATURE_ENTRIES`` entries in all.

    ``memo``: certificate subjects are looked up and remembered in ``memo.x509_subjects`` by
    the SHA-256 of the DER (the whole value's decoding is remembered by its caller,
    ``services.tpm.readings``, as key entries).
    """
    r = DataReader(data, base=base, seq=seq)
    lists: list[SignatureList] = []
    total = 0
    while r.remaining:
        start = r.pos
        sig_type = r.guid("SignatureType")
        list_size = r.u32("SignatureListSize")
        header_size = r.u32("SignatureHeaderSize")
        sig_size = r.u32("SignatureSize")
        if list_size < 28 or list_size - 28 > r.remaining:
            raise r.error(
                f"SignatureListSize {list_size} does not fit the data", "SignatureListSize",
                at=start + 16,
            )
        body = r.sub(list_size - 28, "EFI_SIGNATURE_LIST")
        body.take(header_size, "SignatureHeader")
        if sig_size < 16 or body.remaining % sig_size:
            raise r.error(
                f"SignatureSize {sig_size} does not divide the {body.remaining} entry bytes",
                "SignatureSize",
                at=start + 24,
            )
        hashed = _HASH_CERT_SIZES.get(sig_type)
        if hashed is not None and sig_size != 16 + hashed[1]:
            raise r.error(
                f"SignatureSize {sig_size} wrong for {guid_name(sig_type)}", "SignatureSize",
                at=start + 24,
            )
        count = body.remaining // sig_size
        total += count
        if total > MAX_SIGNATURE_ENTRIES:
            raise r.limit(f"more than {MAX_SIGNATURE_ENTRIES} signature entries", "entries")
        # hot path (dbx has hundreds of entries): slice directly, sizes were checked above
        raw, owners = body.data, dict[bytes, str]()
        entries = []
        for i in range(0, count * sig_size, sig_size):
            owner_raw = raw[i : i + 16]
            owner = owners.get(owner_raw) or owners.setdefault(owner_raw, format_guid(owner_raw))
            entries.append(_entry(sig_type, owner, raw[i + 16 : i + sig_size], memo))
        lists.append(SignatureList(sig_type, tuple(entries)))
    return tuple(lists)


def decode_signature_data(
    data: bytes, *, base: int = 0, seq: int | None = None, memo: Memo | None = None
) -> SignatureEntry:
    """Decode the value of an EV_EFI_VARIABLE_AUTHORITY event (PFP 3.3.4.8).

    Normally one ``EFI_SIGNATURE_DATA`` (owner GUID + X.509 DER, or + a SHA-256 hash). Some shim
    versions log the bare DER with no owner (``shim-authority-extra-byte`` quirk); that case is
    recognised by the DER SEQUENCE tag ``0x30 0x82`` at offset 0 and gets the owner ``""``.
    A 48-byte value is owner + SHA-256 (an image authorised by hash). ``memo``: for the
    certificate's subject, as in :func:`decode_signature_lists`.
    """
    r = DataReader(data, base=base, seq=seq)
    if data[:2] == b"\x30\x82":
        return _certificate_entry("", data, memo)
    owner = r.guid("SignatureOwner")
    value = r.rest()
    if not value:
        raise r.error("EFI_SIGNATURE_DATA has no SignatureData", "SignatureData")
    if len(value) == 32:
        return SignatureEntry(owner, "sha256", value)
    return _certificate_entry(owner, value, memo)


# --- EFI_LOAD_OPTION / BootOrder -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoadOption:
    """``EFI_LOAD_OPTION`` (UEFI 3.1.3): a Boot#### variable's value."""

    attributes: int
    description: str
    device_path: DevicePath
    optional_data: bytes

    @property
    def active(self) -> bool:
        """``LOAD_OPTION_ACTIVE`` (bit 0)."""
        return bool(self.attributes & 0x1)


def decode_load_option(
    data: bytes, *, base: int = 0, seq: int | None = None, memo: Memo | None = None
) -> LoadOption:
    """Decode ``EFI_LOAD_OPTION``: ``Attributes`` u32, ``FilePathListLength`` u16,
    ``Description`` NUL-terminated CHAR16, ``FilePathList``, ``OptionalData`` (``memo``: for
    the device path)."""
    r = DataReader(data, base=base, seq=seq)
    attributes = r.u32("Attributes")
    fpl_len = r.u16("FilePathListLength")
    desc_start = r.pos
    end = desc_start
    while True:  # the first CHAR16-aligned NUL at or after desc_start
        end = data.find(b"\x00\x00", end)
        if end < 0:
            raise r.error("Description has no CHAR16 NUL terminator", "Description", at=desc_start)
        if not (end - desc_start) % 2:
            break
        end += 1
    description = decode_utf16(r.take(end - desc_start, "Description"), r, "Description",
                                at=desc_start)
    r.take(2, "Description.NUL")
    path_reader = r.sub(fpl_len, "FilePathList")
    path = decode_device_path(path_reader.data, base=path_reader.base, seq=seq, multiple=True,
                              memo=memo)
    return LoadOption(attributes, description, path, r.rest())


def decode_boot_order(data: bytes, *, base: int = 0, seq: int | None = None) -> tuple[int, ...]:
    """Decode ``BootOrder`` (UEFI 3.3): an array of UINT16 option numbers."""
    r = DataReader(data, base=base, seq=seq)
    if len(data) % 2:
        raise r.error(f"BootOrder length {len(data)} is odd", "BootOrder")
    return tuple(r.u16("BootOrder") for _ in range(len(data) // 2))


# --- UEFI_IMAGE_LOAD_EVENT ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImageLoadEvent:
    """``UEFI_IMAGE_LOAD_EVENT`` (PFP 10.4.4.2), for EV_EFI_BOOT_SERVICES_APPLICATION/DRIVER
    and EV_EFI_RUNTIME_SERVICES_DRIVER. The event digest is the image's Authenticode hash, so
    the data itself is not digest-bound. ``trailing`` counts bytes after the device path
    (common in real logs: many firmwares and shim pad the structure)."""

    location: int
    length: int
    link_time_address: int
    device_path: DevicePath
    trailing: int = 0


def decode_image_load_event(
    data: bytes, *, base: int = 0, seq: int | None = None, memo: Memo | None = None
) -> ImageLoadEvent:
    """Decode ``ImageLocationInMemory`` u64, ``ImageLengthInMemory`` u64,
    ``ImageLinkTimeAddress`` u64, ``LengthOfDevicePath`` u64, ``DevicePath`` (``memo``: for
    the device path)."""
    r = DataReader(data, base=base, seq=seq)
    location = r.u64("ImageLocationInMemory")
    length = r.u64("ImageLengthInMemory")
    link = r.u64("ImageLinkTimeAddress")
    dp_len = r.u64("LengthOfDevicePath")
    if dp_len > r.remaining:
        raise r.error(
            f"LengthOfDevicePath {dp_len} exceeds the {r.remaining} bytes left",
            "LengthOfDevicePath",
            at=24,
        )
    sub = r.sub(dp_len, "DevicePath")
    path = decode_device_path(sub.data, base=sub.base, seq=seq, memo=memo)
    return ImageLoadEvent(location, length, link, path, r.remaining)


# --- handoff tables and firmware blobs -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HandoffTables:
    """``UEFI_HANDOFF_TABLE_POINTERS(2)`` (PFP 10.4.4.3): description (v2 only) and
    ``(VendorGuid, VendorTable address)`` pairs."""

    description: str | None
    tables: tuple[tuple[str, int], ...]


def _tables(r: DataReader, description: str | None) -> HandoffTables:
    count = r.u64("NumberOfTables")
    if count > MAX_HANDOFF_TABLES:
        raise r.limit(f"NumberOfTables {count} exceeds {MAX_HANDOFF_TABLES}", "NumberOfTables")
    if count * 24 != r.remaining:
        raise r.error(
            f"NumberOfTables {count} needs {count * 24} bytes, {r.remaining} present",
            "NumberOfTables",
        )
    tables = tuple((r.guid("VendorGuid"), r.u64("VendorTable")) for _ in range(count))
    return HandoffTables(description, tables)


def decode_handoff_tables(data: bytes, *, base: int = 0, seq: int | None = None) -> HandoffTables:
    """Decode EV_EFI_HANDOFF_TABLES: ``NumberOfTables`` u64 then ``EFI_CONFIGURATION_TABLE``s."""
    return _tables(DataReader(data, base=base, seq=seq), None)


def _description(r: DataReader, field: str) -> str:
    size = r.u8(f"{field}Size")
    return r.take(size, field).split(b"\x00", 1)[0].decode("ascii", "replace")


def decode_handoff_tables2(data: bytes, *, base: int = 0, seq: int | None = None) -> HandoffTables:
    """Decode EV_EFI_HANDOFF_TABLES2: ``TableDescriptionSize`` u8, description, then as v1."""
    r = DataReader(data, base=base, seq=seq)
    return _tables(r, _description(r, "TableDescription"))


@dataclass(frozen=True, slots=True)
class FirmwareBlob:
    """``UEFI_PLATFORM_FIRMWARE_BLOB(2)`` (PFP 10.4.4.4): base address and length, plus a
    description for the v2 form. Also the layout of EV_POST_CODE / EV_S_CRTM_CONTENTS when
    firmware logs a blob there."""

    description: str | None
    blob_base: int
    blob_length: int


def decode_firmware_blob(data: bytes, *, base: int = 0, seq: int | None = None) -> FirmwareBlob:
    """Decode ``BlobBase`` u64, ``BlobLength`` u64 (exactly 16 bytes)."""
    r = DataReader(data, base=base, seq=seq)
    blob = FirmwareBlob(None, r.u64("BlobBase"), r.u64("BlobLength"))
    r.expect_end("UEFI_PLATFORM_FIRMWARE_BLOB")
    return blob


def decode_firmware_blob2(data: bytes, *, base: int = 0, seq: int | None = None) -> FirmwareBlob:
    """Decode ``BlobDescriptionSize`` u8, description, ``BlobBase`` u64, ``BlobLength`` u64."""
    r = DataReader(data, base=base, seq=seq)
    desc = _description(r, "BlobDescription")
    blob = FirmwareBlob(desc, r.u64("BlobBase"), r.u64("BlobLength"))
    r.expect_end("UEFI_PLATFORM_FIRMWARE_BLOB2")
    return blob


def guid_text(raw: bytes) -> str:
    """Canonical text of a 16-byte GUID (re-exported for callers outside the decoders)."""
    return format_guid(raw)
