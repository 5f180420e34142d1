"""``hostgate``: the one command-line entry point.

Each area registers its own sub-commands from a ``cli`` module exposing
``register(subparsers)``; this file only assembles them and turns how a command ends into an
exit status (the table is :class:`services.errors.ExitCode`): a deliberate error
(``HostgateError``) or a Kafka client failure becomes one line on stderr (and, with ``--json``,
a JSON document on stdout), a reader that closed the pipe ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from services.errors import EXIT_STATUS_MEANING, ExitCode, HostgateError, exit_code_for
from services.runtime.cli_errors import error_document, kafka_failure
from services.runtime.cli_parser import HostgateParser

# Modules that contribute sub-commands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "services.runtime.cli",
    "services.runtime.run_cli",
    "services.tpm.cli",
    "services.agent.cli",
    "services.verifier.cli_policy",
    "services.incidents.cli",
    "services.issuer.cli",
    "services.collector.cli_identity",
    "services.verifier.cli_audit_replay",
    "services.verifier.cli_ear",
    "services.demo.cli",
)


def package_version() -> str:
    """hostgate's version as installed (the package metadata), or ``unknown`` from a bare
    checkout."""
    try:
        return version("hostgate")
    except PackageNotFoundError:
        return "unknown"


def exit_status_epilog() -> str:
    """The exit-status table for ``--help``, from :class:`ExitCode` itself."""
    rows = [f"  {code.value:>3}  {EXIT_STATUS_MEANING[code]}" for code in ExitCode]
    return "Exit status:\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every registered sub-command."""
    parser = HostgateParser(
        prog="hostgate",
        description=(
            "hostgate: TPM-based host attestation on Apache Kafka. Hosts prove how they "
            "booted; hostgate issues a TPM-sealed credential or quarantines the host."
        ),
        epilog=exit_status_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hostgate {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None
           ) -> argparse.Namespace | int:
    """The parsed arguments, or the status argparse chose (usage error, --help, --version)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else ExitCode.USAGE


def _fail(args: argparse.Namespace, exc: HostgateError) -> int:
    """One line on stderr; with ``--json`` also the error as JSON on stdout."""
    code = exit_code_for(exc)
    if getattr(args, "json", False):
        import json

        print(json.dumps(error_document(exc, code)))
    print(f"hostgate: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return code


def _closed_pipe() -> int:
    # Whoever read stdout is gone: point stdout at /dev/null so the interpreter's last flush
    # at exit does not raise a second BrokenPipeError (Python docs, "Note on SIGPIPE").
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file descriptor (captured in tests): nothing will flush it
    return ExitCode.BROKEN_PIPE


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except HostgateError as exc:
        return _fail(args, exc)
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print("hostgate: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:
        translated = kafka_failure(exc, getattr(args, "bootstrap", None))
        if translated is None:
            raise  # anything else is a bug: keep its traceback
        return _fail(args, translated)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hostgate`` with ``argv`` and return the exit status."""
    # aiokafka logs a failed connection before raising; without a handler Python's last-resort
    # handler prints that line ahead of hostgate's own message. Records still reach any
    # handler a stage configures on the root logger.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    parser = build_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if getattr(args, "func", None) is None:
        parser.print_help()
        return ExitCode.USAGE
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
