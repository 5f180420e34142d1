"""What a file that failed to parse as a TCG boot event log (or as an IMA list) most likely is, so
the CLI can say "this is an IMA list" instead of "PCR index 824193073 out of range" (the ASCII
``10 1`` an IMA list starts with, read as a little-endian PCR index), and "this is a boot log"
where an IMA list was expected.

Only a hint for a person: the guess is made after parsing has already failed, and nothing is
decided on it.
"""

from __future__ import annotations

import re
import struct
from typing import Literal

__all__ = ["BOOT_LOG", "IMA_LIST", "Expected", "guess_file_type"]

Expected = Literal["boot log", "IMA list"]
"""What the command reads: a guess of that same kind is no hint (the file is one, a broken one)."""
BOOT_LOG: Expected = "boot log"
IMA_LIST: Expected = "IMA list"

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file (decompress it first)"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an ELF executable"),
    (b"\x30\x82", "a DER-encoded certificate or key"),
    (b"-----BEGIN", "a PEM file (certificate or key)"),
)

_IMA_ASCII = re.compile(rb"^\s*1?\d \s*[0-9a-f]{40,128} \s*(ima|ima-ng|ima-sig|ima-buf|ima-modsig)\b")
"""First line of ``ascii_runtime_measurements``: PCR, template hash, template name."""

_IMA_TEMPLATES = (b"ima", b"ima-ng", b"ima-sig", b"ima-buf", b"ima-modsig", b"evm-sig")


def _is_binary_ima(data: bytes) -> bool:
    # binary_runtime_measurements: u32 PCR (10), 20-byte SHA-1 template hash, u32 name length,
    # template name (IMA's own layout, little-endian on x86).
    if len(data) < 28:
        return False
    pcr, = struct.unpack_from("<I", data, 0)
    name_len, = struct.unpack_from("<I", data, 24)
    return pcr < 24 and 0 < name_len <= 16 and data[28:28 + name_len] in _IMA_TEMPLATES


# TCG PC Client Platform Firmware Profile 2.0 (r1.05), 10.2.1 TCG_PCClientPCREvent: the first
# event of either log format is in the SHA-1 layout: u32 PCRIndex, u32 EventType, 20-byte digest,
# u32 EventSize, event. A crypto-agile log's first event is EV_NO_ACTION "Spec ID Event03".
_SPEC_ID = b"Spec ID Event"
_EV_NO_ACTION = 0x3
_MAX_PC_EVENT = 0x12  # EV_PREBOOT_CERT .. EV_OMIT_BOOT_DEVICE_EVENTS
_EV_EFI_RANGE = range(0x80000000, 0x80000100)  # EV_EFI_EVENT_BASE ..


def _is_boot_log(data: bytes) -> bool:
    if len(data) < 32:
        return False
    pcr, event_type = struct.unpack_from("<II", data, 0)
    size, = struct.unpack_from("<I", data, 28)
    if pcr >= 24 or size > len(data) - 32:
        return False
    if event_type == _EV_NO_ACTION and data[32:32 + len(_SPEC_ID)] == _SPEC_ID:
        return True
    return event_type <= _MAX_PC_EVENT or event_type in _EV_EFI_RANGE


def _is_text(data: bytes) -> bool:
    return bool(data) and all(b in b"\t\n\r" or 32 <= b < 127 for b in data[:512])


def guess_file_type(data: bytes, *, expected: Expected = BOOT_LOG) -> str | None:
    """A phrase naming what ``data`` looks like (``"a Linux IMA measurement list (ASCII)"``),
    or None when nothing recognisable or when it looks like the ``expected`` kind itself (a
    malformed one: the parser's own error says more)."""
    for magic, what in _MAGIC:
        if data.startswith(magic):
            return what
    if _IMA_ASCII.match(data[:512]) or _is_binary_ima(data):
        if expected == IMA_LIST:
            return None
        form = "ASCII" if _IMA_ASCII.match(data[:512]) else "binary"
        return f"a Linux IMA measurement list ({form}); read it with `hostgate ima show`"
    if _is_boot_log(data):
        if expected == BOOT_LOG:
            return None
        return ("a TCG boot event log (binary_bios_measurements); read it with "
                "`hostgate log show`")
    if not data:
        return "an empty file"
    head = data.lstrip()[:1]
    if _is_text(data) and head in (b"{", b"["):
        return "a JSON document"
    if _is_text(data):
        # an ASCII IMA list is text too: where one is expected, the parser names the bad line
        return None if expected == IMA_LIST else \
            "a text file (a boot log is binary: binary_bios_measurements)"
    return None
