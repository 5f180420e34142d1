"""``hostgate log ...``: inspect and verify TCG boot event logs.

Two neighbours add their own commands through this module's ``register``:

* ``services/tpm/cli_claims.py`` adds ``hostgate log claims FILE`` under ``hostgate log``;
* ``services/tpm/cli_ima.py`` adds ``hostgate ima show|verify FILE``.

Each sub-parser calls ``set_defaults(func=...)`` with ``func(args) -> int``, and raises
``HostgateError`` subclasses for user errors (the root CLI prints one line, no traceback).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape

from services.terminal import print_table
from services.tpm import cli_claims, cli_ima
from services.tpm.cli_conventions import add_json_flag, command_group, print_json
from services.tpm.cli_inputs import (
    add_allow_quirk_argument,
    add_pcrs_argument,
    load_quoted_pcrs,
    parse_boot_log_file,
    read_log_file,
)
from services.tpm.eventlog import Event, EventLog
from services.tpm.quirks import Layer, of_layer
from services.tpm.replay import replay, startup_locality, verify_replay

__all__ = ["load_quoted_pcrs", "read_log_file", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hostgate log show|verify|claims`` and ``hostgate ima``."""
    log_sub = command_group(
        subparsers, "log",
        help="inspect and verify TCG boot event logs",
        description="Parse, replay and verify TCG PC Client boot event logs "
        "(SHA1 and crypto-agile formats, TDX CCEL).",
    )

    show = log_sub.add_parser(
        "show",
        help="list the events and the replayed PCR values",
        description="List every event of a boot event log and the PCR values a replay gives "
        "(like tpm2_eventlog). The values are what the log claims: nothing is verified.",
    )
    show.add_argument("file", type=Path, metavar="FILE", help="binary event log "
                      "(e.g. /sys/kernel/security/tpm0/binary_bios_measurements)")
    show.add_argument("--bank", metavar="BANK", help="only this bank (sha1, sha256, sha384, ...)")
    add_json_flag(show, "print JSON instead of tables")
    show.set_defaults(func=_cmd_show)

    verify = log_sub.add_parser(
        "verify",
        help="check that the log replays to given PCR values",
        description="Replay the log and compare with PCR values (e.g. from a verified quote). "
        "Exit status 0 if they match, non-zero with the first differing PCR otherwise.",
        epilog="Known replay quirks: " + "; ".join(
            f"{q.id} (PCRs {sorted(q.affected_pcrs)})" for q in of_layer(Layer.REPLAY)),
    )
    verify.add_argument("file", type=Path, metavar="FILE", help="binary event log")
    add_pcrs_argument(
        verify, 'PCR values: a JSON/YAML file or inline JSON, {"sha256": {"0": "hex", ...}}; '
        "tpm2_pcrread YAML output works too", required=True)
    add_allow_quirk_argument(
        verify, "allow this named firmware workaround if a plain replay fails (repeatable)")
    add_json_flag(verify, "print the result as JSON")
    verify.set_defaults(func=_cmd_verify)

    cli_claims.register_log_commands(log_sub)
    cli_ima.register(subparsers)


def _describe(ev: Event) -> str:
    data = ev.data
    text = data.rstrip(b"\x00")
    if text and len(text) <= 120 and all(32 <= c < 127 for c in text):
        return text.decode("ascii")
    return f"<{len(data)} bytes>"


def _event_json(ev: Event) -> dict[str, Any]:
    return {
        "seq": ev.seq,
        "offset": ev.offset,
        "pcr": ev.pcr,
        "type": ev.event_type,
        "type_name": ev.type_name,
        "extended": ev.extends,
        "digests": {b: d.hex() for b, d in ev.digests.items()},
        "data_offset": ev.data_offset,
        "data": ev.data.hex(),
    }


def _load(path: Path) -> EventLog:
    return parse_boot_log_file(path)


def _cmd_show(args: argparse.Namespace) -> int:
    log = _load(args.file)
    banks = None if args.bank is None else [args.bank]
    pcrs = replay(log, banks=banks)
    if args.json:
        doc = {
            "format": log.format,
            "banks": list(log.banks),
            "startup_locality": startup_locality(log),
            "trailing_padding": log.trailing_padding,
            "events": [_event_json(ev) for ev in log.events],
            "pcrs": {b: {str(p): v.hex() for p, v in vs.items()} for b, vs in pcrs.items()},
        }
        print_json(doc)
        return 0
    _print_tables(log, pcrs, args.bank)
    return 0


def _print_tables(log: EventLog, pcrs: dict[str, dict[int, bytes]], bank: str | None) -> None:
    shown = bank or ("sha256" if "sha256" in log.banks else log.banks[-1])
    print_table(f"{log.format} event log, banks {', '.join(log.banks)} (UNTRUSTED until verified)",
                ("#", "offset", "PCR", "type", shown, "data"),
                [_event_row(ev, shown) for ev in log.events], fold=(shown, "data"))
    print_table(f"replayed PCRs (StartupLocality {startup_locality(log)}, "
                f"{log.trailing_padding} bytes of padding)",
                ("bank", "PCR", "value"),
                [(b, str(p), v.hex()) for b, values in pcrs.items() for p, v in values.items()],
                fold=("value",))


def _event_row(ev: Event, bank: str) -> tuple[str, ...]:
    pcr = "-1" if ev.pcr == 0xFFFFFFFF else str(ev.pcr)
    return (str(ev.seq), str(ev.offset), pcr, ev.type_name, ev.digests.get(bank, b"").hex(),
            escape(_describe(ev)))


def _cmd_verify(args: argparse.Namespace) -> int:
    quoted = load_quoted_pcrs(args.pcrs)
    log = _load(args.file)
    result = verify_replay(log, quoted, allowed_quirks=args.allow_quirk)
    checked = sorted(result.checked_pcrs)
    if args.json:
        doc = {
            "ok": True,
            "banks": list(result.banks),
            "unverified_banks": list(result.unverified_banks),
            "checked_pcrs": checked,
            "applied_quirks": list(result.applied_quirks),
            "startup_locality": result.startup_locality,
            "verified_events": [ev.seq for ev in result.verified_events],
        }
        print_json(doc)
        return 0
    quirks = ", ".join(result.applied_quirks) or "none"
    print(f"OK: the log replays to the given PCRs {checked} in {', '.join(result.banks)} "
          f"(quirks applied: {quirks}; banks not in the log: "
          f"{', '.join(result.unverified_banks) or 'none'})")
    return 0
