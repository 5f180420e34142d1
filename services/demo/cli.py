"""``hostgate demo``: start the pipeline and a simulated fleet, show the outcome, stop it all."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.errors import ConfigError
from services.runtime.cli_conventions import add_json_flag, print_json
from services.runtime.topics import add_namespace_argument, topics_from_args

if TYPE_CHECKING:
    from services.demo.report import DemoRun


def _cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from services.demo.live import LiveView
    from services.demo.orchestrator import DemoConfig, parse_tampers, run_demo
    from services.demo.report import render_html, to_json

    if not 1 <= args.hosts <= 200:
        raise ConfigError("--hosts must be 1..200")
    if not 2 <= args.nonce_ttl <= 600:
        raise ConfigError("--nonce-ttl must be 2..600 seconds")
    config = DemoConfig(hosts=args.hosts,
                        tampers=parse_tampers(args.tamper) if args.tamper else None,
                        seed=args.seed, out=args.out, follow=args.follow,
                        timeout_s=args.timeout, nonce_ttl_s=args.nonce_ttl,
                        topics=topics_from_args(args))
    console = Console(stderr=True)
    # library log lines (structlog prints to stdout) must not mix with --json output
    with contextlib.redirect_stdout(sys.stderr), LiveView(console) as view:
        run, st = run_demo(config, view.tick)
    doc = to_json(run)
    (st.run_dir / "report.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    (st.run_dir / "report.html").write_text(render_html(run))
    if args.json:
        print_json(doc)
    else:
        print_outcome(run, st.run_dir)
    return 0 if run.ok else 1


def print_outcome(run: DemoRun, run_dir: Path) -> None:
    """The run for a person: the final table (``services.terminal``: never cut when piped),
    the counts, where the reports are, the notes; plain lines, so no path or id is wrapped."""
    from services.demo.live import print_final_table

    print_final_table(run)
    counts = ", ".join(f"{k} {n}" for k, n in sorted(run.counts().items()))
    print(f"{len(run.hosts)} hosts: {counts}. Report: {run_dir / 'report.html'} "
          f"(JSON beside it); stage logs in {run_dir}.")
    for note in run.notes:
        print(f"note: {note}")


def default_mix_help() -> str:
    """The default tamper mix in words, from ``DEFAULT_TAMPERS`` itself (so the help cannot
    drift from what runs)."""
    from services.demo.orchestrator import DEFAULT_HOSTS, DEFAULT_TAMPERS

    names = [name for name, _ in DEFAULT_TAMPERS]
    first = names[: DEFAULT_HOSTS // 2]
    return (f"default mix: one host each of the first N/2 of {', '.join(names)} (with the "
            f"default {DEFAULT_HOSTS} hosts the first {len(first)}, up to {first[-1]}; the "
            "other hosts are clean)")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hostgate demo``."""
    from services.demo.orchestrator import DEFAULT_HOSTS

    p = subparsers.add_parser(
        "demo", help="run the whole pipeline with a simulated fleet and show the outcome",
        description="Ensure the topics, derive a policy from the simulator's golden images "
        "and publish it, start the four stages (collector, verifier, issuer, incidents) as "
        "separate `hostgate run` processes, start a fleet of simulated hosts (one swtpm each; "
        "half of them tampered: compromised boots, rooted hosts editing their logs or quoting "
        "less than asked, and protocol attacks - records on a foreign partition, another "
        "host's id, a flood of unsigned requests naming another host), let every host enrol "
        "and attest over Kafka, and show live progress and a final table: TRUSTED with "
        "certificate serial, QUARANTINED with incident id and the failed rules in plain words, "
        "or REJECTED at intake with the reason (an attacker's refused records are shown on "
        "its own row, and the host they name must still end TRUSTED). Every trusted host then "
        "fetches its "
        "credential from attest.credentials.v1 and opens it in its own swtpm (import under the "
        "EK, PolicyPCR over the attested PCRs, unseal); the table shows whether it opened. "
        "Writes report.json and a self-contained report.html. Everything started is stopped on "
        "exit or Ctrl-C. The exit status is 1 if the outcome does not match the tamper mix "
        "(including a trusted host whose credential did not open).",
        epilog="Needs a running broker (`hostgate kafka up`; `make demo` does it). "
        "Environment: HOSTGATE_BOOTSTRAP, HOSTGATE_TOPIC_NAMESPACE, HOSTGATE_HOME (run "
        "directories under $HOSTGATE_HOME/demo/<run-id>/).")
    p.add_argument("--hosts", type=int, default=DEFAULT_HOSTS, metavar="N",
                   help=f"number of simulated hosts (default {DEFAULT_HOSTS})")
    p.add_argument("--tamper", action="append", default=[], metavar="PROFILE=COUNT",
                   help="make COUNT hosts compromised as PROFILE (repeatable; "
                        f"{default_mix_help()}); see `hostgate fleet simulate "
                        "--list-profiles`")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for which hosts are tampered and their boot variations")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="run directory for reports, logs and trust material (default "
                        "$HOSTGATE_HOME/demo/<run-id>)")
    p.add_argument("--follow", action="store_true",
                   help="keep the pipeline running after the fleet is done, until Ctrl-C")
    p.add_argument("--timeout", type=float, default=150.0, metavar="SECONDS",
                   help="longest wait for every host's final state (default 150)")
    p.add_argument("--nonce-ttl", type=float, default=15.0, metavar="SECONDS",
                   help="the collector's nonce lifetime in this run (default 15: short, so "
                        "the stale_quote profile, which holds its evidence past the expiry, "
                        "costs seconds)")
    add_namespace_argument(p)
    add_json_flag(p, "print the run as JSON")
    p.set_defaults(func=_cmd_demo)
