"""Bounded little-endian reader over one event's data, for the event-data decoders.

Every read checks the remaining length first and raises
:class:`~services.tpm.errors.MalformedEventData` naming the *absolute* byte offset in the log
(``base`` is the event's ``data_offset``), the event ``seq`` and the field being read. Nothing
here allocates more than the bytes already in hand.
"""

from __future__ import annotations

import struct

from services.tpm.errors import LimitExceeded, MalformedEventData

__all__ = ["DataReader", "format_guid"]

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def format_guid(raw: bytes) -> str:
    """Canonical lower-case text of a 16-byte EFI_GUID (mixed-endian, UEFI 2.10 appendix A)."""
    if len(raw) != 16:
        raise ValueError("an EFI_GUID is 16 bytes")
    d1, d2, d3 = struct.unpack_from("<IHH", raw, 0)
    tail = raw[8:].hex()
    return f"{d1:08x}-{d2:04x}-{d3:04x}-{tail[:4]}-{tail[4:]}"


class DataReader:
    """Cursor over ``data`` whose errors carry ``base + position`` and ``seq``."""

    __slots__ = ("base", "data", "pos", "seq")

    def __init__(self, data: bytes, *, base: int = 0, seq: int | None = None) -> None:
        self.data = data
        self.base = base
        self.seq = seq
        self.pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return len(self.data) - self.pos

    @property
    def offset(self) -> int:
        """Absolute offset (in the log) of the next byte to read."""
        return self.base + self.pos

    def error(self, message: str, field: str, *, at: int | None = None) -> MalformedEventData:
        """A ``MalformedEventData`` at the current position (or at local offset ``at``)."""
        where = self.base + (self.pos if at is None else at)
        return MalformedEventData(message, offset=where, seq=self.seq, field=field)

    def limit(self, message: str, field: str) -> LimitExceeded:
        """A ``LimitExceeded`` at the current position."""
        return LimitExceeded(message, offset=self.offset, seq=self.seq, field=field)

    def take(self, n: int, field: str) -> bytes:
        """The next ``n`` bytes; truncation raises with the field's name."""
        pos = self.pos
        end = pos + n
        if n < 0 or end > len(self.data):
            raise self.error(
                f"{field} needs {n} bytes but only {self.remaining} remain", field
            )
        self.pos = end
        return self.data[pos:end]

    def _unpack(self, fmt: struct.Struct, field: str) -> int:
        pos = self.pos
        if pos + fmt.size > len(self.data):
            raise self.error(
                f"{field} needs {fmt.size} bytes but only {self.remaining} remain", field
            )
        self.pos = pos + fmt.size
        value: int = fmt.unpack_from(self.data, pos)[0]
        return value

    def rest(self) -> bytes:
        """Everything not yet consumed."""
        return self.take(self.remaining, "rest")

    def u8(self, field: str) -> int:
        """One unsigned byte."""
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        """Little-endian UINT16."""
        return self._unpack(_U16, field)

    def u32(self, field: str) -> int:
        """Little-endian UINT32."""
        return self._unpack(_U32, field)

    def u64(self, field: str) -> int:
        """Little-endian UINT64."""
        return self._unpack(_U64, field)

    def guid(self, field: str) -> str:
        """An EFI_GUID as canonical text."""
        return format_guid(self.take(16, field))

    def sub(self, n: int, field: str) -> DataReader:
        """A reader over the next ``n`` bytes, keeping absolute offsets."""
        start = self.pos
        chunk = self.take(n, field)
        reader = DataReader.__new__(DataReader)
        reader.data, reader.base, reader.seq, reader.pos = chunk, self.base + start, self.seq, 0
        return reader

    def expect_end(self, field: str) -> None:
        """Raise if bytes remain after a structure that should fill the data exactly."""
        if self.remaining:
            raise self.error(f"{self.remaining} unexpected trailing bytes after {field}", field)


def decode_utf16(raw: bytes, reader: DataReader, field: str, *, at: int) -> str:
    """UTF-16LE text without its trailing NULs; undecodable text raises at ``at``."""
    if len(raw) % 2:
        raise reader.error(f"{field} has odd length {len(raw)} for UTF-16", field, at=at)
    try:
        text = raw.decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise reader.error(f"{field} is not valid UTF-16: {exc.reason}", field, at=at) from exc
    return text.rstrip("\x00")
