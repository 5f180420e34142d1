"""Encoders for the UEFI and Windows structures a synthesised measured boot carries.

Pure byte builders (no I/O) for the simulator. Each cites the structure it writes; the
verifier's decoders (``services.tpm``) read the same layouts. All integers little-endian.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Sequence

# UEFI 2.10, 3.3 (EFI_GLOBAL_VARIABLE) and 32.6.1 (EFI_IMAGE_SECURITY_DATABASE_GUID).
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
# shim's vendor variable namespace (shim: SHIM_LOCK_GUID).
SHIM_LOCK_GUID = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
# UEFI 2.10, 32.4.1 signature types.
EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")

# Windows SIPA (go-attestation attest/win_events.go; Windows WBCL): container and entries.
SIPA_TRUST_BOUNDARY = 0x40010001
SIPA_LOADED_MODULE_AGGREGATION = 0x40010003
SIPA_BOOT_COUNTER = 0x00020002
SIPA_TRANSFER_CONTROL = 0x00020003
SIPA_BOOT_DEBUGGING = 0x00040001
SIPA_OS_KERNEL_DEBUG = 0x00050001
SIPA_CODE_INTEGRITY = 0x00050002
SIPA_TEST_SIGNING = 0x00050003
SIPA_DATA_EXECUTION_PREVENTION = 0x00050004
SIPA_SAFE_MODE = 0x00050005
SIPA_WIN_PE = 0x00050006
SIPA_HYPERVISOR_LAUNCH_TYPE = 0x0005000A
SIPA_AUTHORITY_PUBKEY = 0x00060002
SIPA_FILE_PATH = 0x00070001
SIPA_IMAGE_SIZE = 0x00070002
SIPA_HASH_ALGORITHM_ID = 0x00070003
SIPA_AUTHENTICODE_HASH = 0x00070004
SIPA_IMAGE_BASE = 0x00070007
SIPA_IMAGE_VALIDATED = 0x0007000A
#: CALG_SHA_256 (wincrypt.h); SIPA readers mask the low byte (0x0c).
CALG_SHA_256 = 0x0000800C


def ucs2(text: str, *, nul: bool = True) -> bytes:
    """UTF-16LE text, NUL-terminated by default (UEFI CHAR16 strings)."""
    return (text + ("\x00" if nul else "")).encode("utf-16-le")


def uefi_variable_data(guid: uuid.UUID, name: str, data: bytes) -> bytes:
    """``UEFI_VARIABLE_DATA`` (TCG PFP 10.4.4): GUID, name length in CHAR16, data length, name
    (no NUL), data."""
    encoded = ucs2(name, nul=False)
    return guid.bytes_le + struct.pack("<QQ", len(name), len(data)) + encoded + data


def signature_list(sig_type: uuid.UUID, entries: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """One ``EFI_SIGNATURE_LIST`` (UEFI 32.4.1) of same-size ``EFI_SIGNATURE_DATA`` entries.

    Each entry is ``(SignatureOwner, SignatureData)``; ``SignatureHeaderSize`` is 0.
    """
    if not entries:
        raise ValueError("an EFI_SIGNATURE_LIST needs at least one entry")
    size = 16 + len(entries[0][1])
    if any(16 + len(d) != size for _, d in entries):
        raise ValueError("EFI_SIGNATURE_LIST entries must all have the same size")
    body = b"".join(owner.bytes_le + d for owner, d in entries)
    return sig_type.bytes_le + struct.pack("<III", 28 + len(body), 0, size) + body


def x509_signature_db(owner: uuid.UUID, certs_der: Iterable[bytes]) -> bytes:
    """A db/KEK/PK value: one ``EFI_SIGNATURE_LIST`` per X.509 certificate (sizes differ)."""
    return b"".join(signature_list(EFI_CERT_X509_GUID, [(owner, c)]) for c in certs_der)


def sha256_signature_db(owner: uuid.UUID, hashes: Sequence[bytes]) -> bytes:
    """A dbx value: one ``EFI_SIGNATURE_LIST`` of ``EFI_CERT_SHA256`` entries."""
    return signature_list(EFI_CERT_SHA256_GUID, [(owner, h) for h in hashes])


def signature_data(owner: uuid.UUID, data: bytes) -> bytes:
    """One ``EFI_SIGNATURE_DATA`` (owner GUID + data): an EV_EFI_VARIABLE_AUTHORITY payload."""
    return owner.bytes_le + data


def file_path_device_path(path: str) -> bytes:
    """A device path of one MEDIA_FILEPATH_DP node (type 4, subtype 4) and the end node."""
    node_path = ucs2(path)
    node = struct.pack("<BBH", 4, 4, 4 + len(node_path)) + node_path
    return node + struct.pack("<BBH", 0x7F, 0xFF, 4)


def load_option(description: str, path: str) -> bytes:
    """``EFI_LOAD_OPTION`` (UEFI 3.1.3) with LOAD_OPTION_ACTIVE, as in a Boot#### variable."""
    dp = file_path_device_path(path)
    return struct.pack("<IH", 0x00000001, len(dp)) + ucs2(description) + dp


def image_load_event(base: int, length: int, path: str) -> bytes:
    """``UEFI_IMAGE_LOAD_EVENT`` (TCG PFP 10.4.3) for an image loaded from ``path``."""
    dp = file_path_device_path(path)
    return struct.pack("<QQQQ", base, length, 0, len(dp)) + dp


def firmware_blob(base: int, length: int) -> bytes:
    """``UEFI_PLATFORM_FIRMWARE_BLOB`` (TCG PFP 10.4.2): base and length."""
    return struct.pack("<QQ", base, length)


def sipa(entry_type: int, payload: bytes) -> bytes:
    """One SIPA entry: ``type u32, size u32, payload``."""
    return struct.pack("<II", entry_type, len(payload)) + payload


def sipa_bool(entry_type: int, value: bool) -> bytes:
    """A one-byte boolean SIPA entry (boot debugging, kernel debug, CI, test signing...)."""
    return sipa(entry_type, b"\x01" if value else b"\x00")


def tagged_event(event_id: int, payload: bytes) -> bytes:
    """``TCG_PCClientTaggedEvent`` (TCG PFP 10.4.2.1): ``taggedEventID u32``, size, data."""
    return struct.pack("<II", event_id, len(payload)) + payload


def loaded_module(path: str, size: int, authenticode_sha256: bytes, base: int) -> bytes:
    """A SIPA loaded-module aggregation describing one image Windows' loader verified."""
    inner = b"".join((
        sipa(SIPA_FILE_PATH, ucs2(path)),
        sipa(SIPA_IMAGE_SIZE, struct.pack("<Q", size)),
        sipa(SIPA_HASH_ALGORITHM_ID, struct.pack("<I", CALG_SHA_256)),
        sipa(SIPA_IMAGE_VALIDATED, b"\x01"),
        sipa(SIPA_AUTHENTICODE_HASH, authenticode_sha256),
        sipa(SIPA_IMAGE_BASE, struct.pack("<Q", base)),
    ))
    return sipa(SIPA_LOADED_MODULE_AGGREGATION, inner)
