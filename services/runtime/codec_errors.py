"""The codec's errors, in a module of their own so the schema-registry client can raise them
without importing the codec (``services.runtime.codec`` re-exports every name)."""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

from services.errors import HostgateError


class CodecError(HostgateError):
    """Base of the codec's errors."""


class UnknownSchema(CodecError):
    """The value names a fingerprint or schema id that is not in ``schemas/`` (or the subject
    asked of ``encode`` does not exist)."""


class MalformedRecord(CodecError):
    """Bad framing or an Avro body that does not decode with its writer's schema.

    ``offset`` is the byte offset into the whole value (header included) where reading stopped.
    """

    def __init__(self, message: str, *, offset: int) -> None:
        self.message = message
        self.offset = offset
        super().__init__(f"{message} (at byte offset {offset})")


class UnexpectedRecordType(CodecError):
    """The value decodes but its subject is not one the caller expected on this topic."""

    def __init__(self, subject: str, expected: Collection[str]) -> None:
        self.subject = subject
        self.expected = tuple(sorted(expected))
        super().__init__(
            f"record of subject {subject!r} where only {', '.join(self.expected)} expected"
        )


class InvalidRecord(CodecError):
    """``encode`` was given a record that does not fit its subject's newest schema."""


class SchemaDirError(CodecError):
    """``schemas/`` itself is broken: unreadable file, bad schema, ids missing or duplicated."""


class RegistryUnavailable(CodecError):
    """The configured schema registry could not be reached or answered nonsense."""

    retriable: ClassVar[bool] = True


# Their public home is ``services.runtime.codec``: DLQ headers (exception class) and tracebacks
# name them there, so moving them here changed no record an operator filters on.
for _error in (CodecError, UnknownSchema, MalformedRecord, UnexpectedRecordType, InvalidRecord,
               SchemaDirError, RegistryUnavailable):
    _error.__module__ = "services.runtime.codec"
