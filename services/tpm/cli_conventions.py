"""What the evidence commands (``hostgate log``, ``hostgate ima``, ``hostgate policy``) share:
a command group that prints its help when no sub-command is given, the ``--json`` flag and how
JSON is printed. Their input flags live with the readers in :mod:`services.tpm.cli_inputs`.

The other commands' conventions are in ``services.runtime.cli_conventions``; this package
imports nothing of hostgate but ``services.errors``, so it keeps its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from services.errors import ExitCode

__all__ = ["EXIT_USAGE", "add_json_flag", "command_group", "print_json"]

EXIT_USAGE = ExitCode.USAGE
"""Exit status of a command group called without a sub-command (argparse's usage status)."""


def command_group(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *,
                  help: str, description: str
                  ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``hostgate <name>`` with sub-commands (dest ``<name>_command``); without one it
    prints its help and exits with :data:`EXIT_USAGE`."""
    parser = subparsers.add_parser(name, help=help, description=description)
    sub = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")

    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USAGE

    parser.set_defaults(func=show_help)
    return sub


def add_json_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """``--json``: print the command's result as JSON (``help`` says which result)."""
    parser.add_argument("--json", action="store_true", help=help)


def print_json(doc: Any, *, indent: int = 1) -> None:
    """``doc`` as JSON on stdout (keys in the order the command built them), then a newline."""
    json.dump(doc, sys.stdout, indent=indent)
    print()
