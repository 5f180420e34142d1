"""A kernel command line as Linux parses it: the parameters ``policy.bootchain.kernel_cmdline``
judges.

The rule must see the parameters the kernel sees, not a split of its own: every place where
the two differ is a way to run a forbidden option past the rule, or to make a required one look
present. Linux reads its command line (``lib/cmdline.c`` ``next_arg``, ``kernel/params.c``
``parse_args``/``parameq``, ``lib/ctype.c``) as follows, and :func:`kernel_parameters` the same:

* the line is bytes: the UTF-8 the boot loader measured (GRUB) or the UTF-8 the EFI stub makes
  of UTF-16 load options (systemd-stub); it ends at the first NUL;
* whitespace is the bytes TAB, LF, VT, FF, CR, space and ``0xA0`` (``_S`` in ``lib/ctype.c``),
  nothing else (not ``0x1C``-``0x1F``, which Python's ``str.split`` also splits on);
* a parameter that begins with ``"`` loses it and starts quoted; inside quotes whitespace does
  not end the parameter; a value that begins with ``"`` loses it and a closing ``"``;
* the name runs to the first ``=`` after its first byte; ``-`` and ``_`` are the same in names;
* a bare ``--`` ends the kernel's parameters: everything after it goes to init;
* the kernel keeps only ``COMMAND_LINE_SIZE - 1`` bytes (2048 on x86 and arm64), so an option
  past them is not applied.

A line holding U+FFFD (bytes that were not UTF-8, decoded with replacement, or the character
itself: the two cannot be told apart) or a lone surrogate cannot be turned back into the bytes
the kernel got, so it is refused (:class:`UnreadableCommandLine`) and the rule fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "COMMAND_LINE_SIZE",
    "KernelParameter",
    "UnreadableCommandLine",
    "forbidden_hit",
    "kernel_parameters",
    "load_options_forms",
    "missing_required",
    "option_name",
]

COMMAND_LINE_SIZE: Final = 2048
"""``COMMAND_LINE_SIZE`` of x86-64 and arm64 (``arch/*/include/uapi/asm/setup.h``)."""
_KEPT: Final = COMMAND_LINE_SIZE - 1 - len(b"BOOT_IMAGE=")
"""Bytes of a measured line sure to reach the kernel: GRUB hands the kernel ``BOOT_IMAGE=``
followed by the line it measured, and the kernel keeps ``COMMAND_LINE_SIZE - 1`` bytes.
Counting the prefix for every line only ever makes a required option harder to meet."""
_WHITESPACE: Final = frozenset(b"\t\n\v\f\r \xa0")
_QUOTE: Final = 0x22
_EQUALS: Final = 0x3D


class UnreadableCommandLine(ValueError):
    """A measured command line whose bytes, as the kernel got them, cannot be rebuilt."""


@dataclass(frozen=True, slots=True)
class KernelParameter:
    """One parameter as the kernel parses it.

    ``name`` is normalised (``-`` read as ``_``); ``value`` is None for a bare word;
    ``written`` is the parameter as it stands in the line (for messages); ``for_init`` is True
    after a bare ``--``; ``kept`` is False for a parameter that ends past what the kernel
    keeps of the line."""

    name: str
    value: str | None
    written: str
    for_init: bool
    kept: bool


def option_name(name: str) -> str:
    """A parameter name as ``parameq`` compares it: ``-`` and ``_`` are the same."""
    return name.replace("-", "_")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def kernel_parameters(line: str) -> tuple[KernelParameter, ...]:
    """The parameters Linux reads from ``line`` (see the module docstring). Raises
    :class:`UnreadableCommandLine` for a line whose bytes cannot be rebuilt."""
    if "\ufffd" in line:
        raise UnreadableCommandLine("it holds bytes that are not UTF-8 (or U+FFFD), so the "
                                    "bytes the kernel got cannot be rebuilt")
    try:
        raw = line.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnreadableCommandLine(f"character {exc.start} is a lone surrogate") from None
    raw = raw.split(b"\x00", 1)[0]
    out: list[KernelParameter] = []
    for_init = False
    i, end = 0, len(raw)
    while True:
        while i < end and raw[i] in _WHITESPACE:
            i += 1
        if i >= end:
            break
        start = i
        quoted = raw[i] == _QUOTE
        if quoted:
            i += 1
        body = i
        in_quote = quoted
        equals = -1
        while i < end and not (raw[i] in _WHITESPACE and not in_quote):
            if equals < 0 and raw[i] == _EQUALS and i > body:
                equals = i
            if raw[i] == _QUOTE:
                in_quote = not in_quote
            i += 1
        stop = i  # the parameter is raw[body:stop]; at most one closing quote is dropped
        value_at = equals + 1
        closed = False
        if equals >= 0 and raw[value_at:value_at + 1] == b'"':
            value_at += 1
            if raw[stop - 1] == _QUOTE:
                stop, closed = stop - 1, True
        if quoted and not closed and stop > body and raw[stop - 1] == _QUOTE:
            stop -= 1
        if equals < 0:
            name, value = raw[body:stop], None
        else:
            name, value = raw[body:equals], _text(raw[value_at:stop])
        if not for_init and value is None and name == b"--":
            for_init = True
            continue
        out.append(KernelParameter(option_name(_text(name)), value, _text(raw[start:i]),
                                   for_init, i <= _KEPT))
    return tuple(out)


def _split(option: str) -> tuple[str, str | None]:
    name, eq, value = option.partition("=")
    return option_name(name), (value if eq else None)


def forbidden_hit(params: tuple[KernelParameter, ...],
                  forbidden: tuple[str, ...]) -> tuple[KernelParameter, str] | None:
    """The first parameter a ``forbidden`` entry matches, with the entry: ``name`` matches the
    parameter of that name whatever its value, ``name=value`` only with that value. Every
    parameter counts, also those for init and past the kernel's limit (refusing them is safe)."""
    wanted = [(_split(f), f) for f in forbidden]
    for p in params:
        for (name, value), entry in wanted:
            if p.name == name and (value is None or p.value == value):
                return p, entry
    return None


def missing_required(params: tuple[KernelParameter, ...],
                     required: tuple[str, ...]) -> str | None:
    """The first ``required`` entry the kernel does not apply: ``name`` needs a parameter of
    that name, ``name=value`` needs the *last* parameter of that name (the one that takes
    effect) to have that value. Only parameters the kernel keeps and reads itself (before a
    bare ``--``) count."""
    applied = [p for p in params if p.kept and not p.for_init]
    for entry in required:
        name, value = _split(entry)
        named = [p for p in applied if p.name == name]
        if not named or (value is not None and named[-1].value != value):
            return entry
    return None


def load_options_forms(line: str) -> tuple[bytes, ...]:
    """The UTF-16 load options through which a kernel may have got measured ``line``, each as
    the EFI stub hashes them into PCR 9 (with and without the terminating NUL): the line as
    systemd-stub measured it, ``BOOT_IMAGE=`` and the line (GRUB's EFI loader starting the
    kernel through ``LoadImage``), and the line without its first word (GRUB's
    ``chainloader FILE ARGS`` passes ``ARGS``; GRUB's line starts with ``FILE``)."""
    args = line.split(" ", 1)[1] if " " in line else ""
    out: list[bytes] = []
    for text in (line, "BOOT_IMAGE=" + line, args):
        try:
            encoded = text.encode("utf-16-le")
        except UnicodeEncodeError:
            continue
        out += (encoded, encoded + b"\x00\x00")
    return tuple(out)
