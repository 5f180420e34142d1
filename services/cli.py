"""``hostgate``: the one command-line entry point.

Each area registers its own sub-commands from a ``cli`` module exposing
``register(subparsers)``; this file only assembles them and turns deliberate errors
(``HostgateError``) into one clear line and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from services.errors import HostgateError

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
    "services.demo.cli",
)

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="hostgate",
        description=(
            "hostgate: TPM-based host attestation on Apache Kafka. Hosts prove how they "
            "booted; hostgate issues a TPM-sealed credential or quarantines the host."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hostgate`` with ``argv`` and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(func(args) or 0)
    except HostgateError as exc:
        print(f"hostgate: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("hostgate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
