"""What a file that failed to parse as a TCG boot event log most likely is, so the CLI can say
"this is an IMA list" instead of "PCR index 824193073 out of range" (the ASCII ``10 1`` an IMA
list starts with, read as a little-endian PCR index).

Only a hint for a person: the guess is made after parsing has already failed, and nothing is
decided on it.
"""

from __future__ import annotations

import re
import struct

__all__ = ["guess_file_type"]

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


def _is_text(data: bytes) -> bool:
    return bool(data) and all(b in b"\t\n\r" or 32 <= b < 127 for b in data[:512])


def guess_file_type(data: bytes) -> str | None:
    """A phrase naming what ``data`` looks like (``"a Linux IMA measurement list (ASCII)"``),
    or None when nothing recognisable."""
    for magic, what in _MAGIC:
        if data.startswith(magic):
            return what
    if _IMA_ASCII.match(data[:512]):
        return "a Linux IMA measurement list (ASCII); read it with `hostgate ima show`"
    if _is_binary_ima(data):
        return "a Linux IMA measurement list (binary); read it with `hostgate ima show`"
    if not data:
        return "an empty file"
    head = data.lstrip()[:1]
    if _is_text(data) and head in (b"{", b"["):
        return "a JSON document"
    if _is_text(data):
        return "a text file (a boot log is binary: binary_bios_measurements)"
    return None
