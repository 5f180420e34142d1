"""``hostgate log claims FILE``: the policy-relevant claims of a boot event log.

Registered by :mod:`services.tpm.cli` through :func:`register_log_commands`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from services.tpm.claims import Claims, extract_claims
from services.tpm.cli_conventions import add_json_flag, print_json
from services.tpm.cli_inputs import (
    add_allow_quirk_argument,
    add_pcrs_argument,
    load_quoted_pcrs,
    parse_boot_log_file,
)
from services.tpm.replay import verify_replay

__all__ = ["register_claims", "register_log_commands"]


def register_log_commands(log_subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``claims`` under ``hostgate log``."""
    p = log_subparsers.add_parser(
        "claims",
        help="extract policy claims (Secure Boot, keys, boot apps, cmdlines, Windows flags)",
        description="Decode the event data of a boot event log into the claims a policy "
        "reads: Secure Boot state, PK/KEK/db/dbx entries, authorities, boot applications, "
        "kernel command lines, Windows boot-configuration (SIPA) flags, quirks and anomalies. "
        "Without --pcrs nothing is verified: the output is marked replay_verified=false.",
        epilog="Exit status: 0 when no anomaly is fatal, 3 when the claims fail closed "
        "(a policy would reject them).",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="binary event log")
    add_pcrs_argument(
        p, 'verified PCR values ({"sha256": {"0": "hex"}}); the log must replay to them '
        "and only the replay-verified events are read")
    add_allow_quirk_argument(p, "allow this named firmware quirk (repeatable): a replay "
                             "quirk with --pcrs, a structure quirk such as "
                             "tdx-duplicate-separator in any case")
    p.add_argument("--ccel", action="store_true",
                   help="the log is an Intel TDX CCEL (MR indices instead of PCRs)")
    add_json_flag(p, "print the claims as JSON")
    p.set_defaults(func=_cmd_claims)


register_claims = register_log_commands
"""Alias under the name the task brief used."""


def _cmd_claims(args: argparse.Namespace) -> int:
    log = parse_boot_log_file(args.file)
    registers: Literal["tpm", "ccel"] = "ccel" if args.ccel else "tpm"
    if args.pcrs:
        result = verify_replay(log, load_quoted_pcrs(args.pcrs), allowed_quirks=args.allow_quirk)
        claims = extract_claims(result, measurement_registers=registers,
                                allowed_quirks=args.allow_quirk)
    else:
        claims = extract_claims(log.events, banks=log.banks, measurement_registers=registers,
                                allowed_quirks=args.allow_quirk)
    if args.json:
        print_json(claims.to_json_dict())
    else:
        _print_summary(claims)
    return 3 if claims.failed_closed else 0


def _print_summary(c: Claims) -> None:
    def flag(v: bool | None) -> str:
        return "unknown" if v is None else ("on" if v else "off")

    print(f"replay verified: {'yes' if c.replay_verified else 'NO (inspection only)'}")
    print(f"secure boot: {flag(c.secure_boot)}; UEFI debug mode: {flag(c.uefi_debug_mode)}")
    for db in c.key_databases:
        certs = [e.subject or e.digest.hex() for e in db.entries if e.kind == "x509"]
        print(f"{db.name}: {len(db.entries)} entries" + (f"; certs: {certs}" if certs else ""))
    for a in c.authorities:
        print(f"authority (event {a.seq}): {a.variable} {a.subject or a.digest.hex()}")
    for app in c.boot_applications:
        print(f"{app.kind} (event {app.seq}, PCR {app.pcr}): {app.file_path or app.device_path}")
    for line in c.kernel_cmdlines:
        print(f"kernel cmdline: {line}")
    if c.windows is not None:
        w = c.windows
        print(
            f"windows: boot debugging {flag(w.boot_debugging)}, kernel debugger "
            f"{flag(w.kernel_debugger)}, test signing {flag(w.test_signing)}, code integrity "
            f"{flag(w.code_integrity)}, DEP {flag(w.dep)}, "
            f"{len(w.loaded_modules)} modules"
        )
    by_quirk: dict[str, list[str]] = {}
    for q in c.quirks_applied:
        by_quirk.setdefault(q.quirk, []).append(str(q.seq) if q.seq >= 0 else "replay")
    for quirk, where in by_quirk.items():
        print(f"quirk: {quirk} (events {', '.join(where)})")
    for an in c.anomalies:
        print(f"{'FATAL' if an.fatal else 'anomaly'}: {an.reason} event {an.seq} "
              f"PCR {an.pcr} {an.event_type}: {an.detail}")
