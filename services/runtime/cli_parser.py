"""The argument parser every ``hostgate`` command is built with: a mistake is reported by the
command it was made in (its own usage line, not the top-level one), with the nearest valid
flag or sub-command as a suggestion, and exits with :attr:`ExitCode.USAGE`.

argparse reports an unknown flag from the root parser, whatever sub-command it was given to,
and Python 3.11 has no ``suggest_on_error``; so both are done here. Sub-parsers inherit the
class of their parent (``add_subparsers`` defaults ``parser_class`` to it), so building the root
with :class:`HostgateParser` is enough.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from services.errors import ExitCode

__all__ = ["BootstrapServers", "HostgateParser", "RemovedFlag", "suggestion", "valid_servers"]


def suggestion(word: str, known: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the entry of ``known`` nearest ``word``, or ``""``."""
    match = difflib.get_close_matches(word, sorted(set(known)), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


class HostgateParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors name the command, suggest, and exit with status 2."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, and refuse what is left over here: the sub-parser that got an unknown word
        reports it, so the user sees that command's usage (argparse would bubble it up)."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        return parsed, extras

    def _unrecognized(self, extras: list[str]) -> str:
        first = extras[0]
        words = " ".join(extras)
        if first.startswith("-"):
            options = [o for o in self._option_string_actions if o.startswith("--")]
            return f"unrecognized arguments: {words}{suggestion(first.split('=')[0], options)}"
        return f"unrecognized arguments: {words}"

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """A value outside ``choices`` (a sub-command name, too) with the nearest one."""
        choices = action.choices
        if choices is not None and value not in choices:
            names = [str(c) for c in choices]
            hint = suggestion(str(value), names)
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{hint} (choose from {', '.join(names)})")

    def error(self, message: str) -> NoReturn:
        """Usage of this command, then one line ``PROG: error: MESSAGE``; exit status 2."""
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


class RemovedFlag(argparse.Action):
    """A flag that no longer exists here: using it is a usage error that says what to write
    instead (``help``, hidden from ``--help``, carries that sentence)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, instead: str,
                 **kwargs: Any) -> None:
        self.instead = instead
        kwargs.setdefault("nargs", 0)
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.error(f"{option_string} {self.instead}")


def valid_servers(value: str) -> bool:
    """Whether ``value`` reads as Kafka bootstrap servers: ``HOST:PORT[,HOST:PORT...]``."""
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not (host and sep and port.isdigit() and 0 < int(port) < 65536):
            return False
    return True


class BootstrapServers(argparse.Action):
    """``--bootstrap HOST:PORT[,HOST:PORT...]``: the one meaning of that flag in every command.
    A malformed value is a usage error with ``hint`` appended (where the flag once
    meant something else, the hint says what it is now called)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, hint: str = "",
                 **kwargs: Any) -> None:
        self.hint = hint
        super().__init__(option_strings, dest, metavar="HOST:PORT", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if not valid_servers(str(values)):
            parser.error(f"{option_string} takes Kafka bootstrap servers "
                         f"HOST:PORT[,HOST:PORT...], not {values!r}{self.hint}")
        setattr(namespace, self.dest, str(values))
