"""A small, deterministic YAML writer for policy documents, with end-of-line comments.

PyYAML cannot write comments, and derived policies must say where each value came from. The
writer handles exactly what a policy holds: mappings with string or int keys, lists, strings
(always double-quoted, JSON escapes, which YAML accepts), ints, bools. A value may be wrapped in
:class:`Commented` to put ``# comment`` after it (or after a mapping/list item's first line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Commented:
    """``value`` followed by ``# comment`` in the output."""

    value: Any
    comment: str


def _clean(comment: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in comment)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    if value is None:
        return "null"
    raise TypeError(f"cannot write {type(value).__name__} as a YAML scalar")


def quote(text: str) -> str:
    """``text`` as a YAML double-quoted scalar; anything not plainly printable is escaped
    (non-BMP characters as ``\\U`` escapes: PyYAML does not join JSON-style surrogate pairs)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F or (code > 0xFF and ch.isprintable()
                                     and not 0xD800 <= code <= 0xDFFF and code != 0xFEFF):
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _split(value: Any) -> tuple[Any, str]:
    if isinstance(value, Commented):
        return value.value, f"  # {_clean(value.comment)}"
    return value, ""


def _key(key: Any) -> str:
    return str(key) if isinstance(key, int) else _plain_key(str(key))


def _plain_key(key: str) -> str:
    if key and all(ch.isalnum() or ch in "_-" for ch in key) and not key[0].isdigit():
        return key
    return quote(key)


def _emit(value: Any, indent: int, lines: list[str], prefix: str) -> None:
    """Write ``value`` whose first line starts with ``prefix`` (``key:`` or ``- ``)."""
    value, comment = _split(value)
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            lines.append(f"{prefix} {{}}{comment}" if prefix.endswith(":") else f"{prefix}{{}}")
            return
        if prefix.endswith(":"):
            lines.append(prefix + comment)
            first_prefix = pad
        else:
            first_prefix = prefix
        start = len(lines)
        for i, (k, v) in enumerate(value.items()):
            line_prefix = (first_prefix if i == 0 else pad) + f"{_key(k)}:"
            _emit(v, indent + 2, lines, line_prefix)
        if comment and not prefix.endswith(":"):
            lines[start] += comment
        return
    if isinstance(value, list):
        if not value:
            lines.append(f"{prefix} []{comment}" if prefix.endswith(":") else f"{prefix}[]")
            return
        lines.append(prefix + comment)
        for item in value:
            _emit(item, indent + 2, lines, f"{pad}- ")
        return
    sep = " " if prefix.endswith(":") else ""
    lines.append(f"{prefix}{sep}{_scalar(value)}{comment}")


def dump(document: dict[str, Any], header: list[str] | None = None) -> str:
    """Write ``document`` as YAML text with the given header comment lines."""
    lines = [f"# {_clean(h)}" for h in header or []]
    for k, v in document.items():
        _emit(v, 2, lines, f"{_key(k)}:")
    return "\n".join(lines) + "\n"
