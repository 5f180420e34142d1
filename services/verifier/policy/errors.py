"""Errors of the policy engine.

::

    HostgateError
     └── PolicyError        a policy document is malformed (line, column, field)
          └── CelError       a custom rule's expression is refused at compile time

Rule *failures* are not exceptions: they are results (see :mod:`.evaluate`).
"""

from __future__ import annotations

from services.errors import HostgateError


class PolicyError(HostgateError):
    """A policy document is refused. ``line``/``column`` are 1-based (None when unknown)."""

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.field = field
        where = []
        if line is not None:
            where.append(f"line {line}" + (f", column {column}" if column is not None else ""))
        if field:
            where.append(f"field {field}")
        super().__init__(f"policy: {message}" + (f" ({'; '.join(where)})" if where else ""))


class CelError(PolicyError):
    """A custom CEL rule cannot be compiled (syntax, size, nesting)."""
