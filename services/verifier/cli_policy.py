"""``hostgate policy from-log|check|show|lint``: write, try and inspect attestation policies.

``from-log`` and ``check`` read boot logs *log-only*: the log is replayed against itself (or
against ``--pcrs`` when given), so they judge what a log says, not whether a TPM vouched for it.
The verifier stage judges quoted evidence with the same engine.

``publish`` (``services.verifier.publish``) writes a policy version to the compacted
``attest.policies.v1`` topic, where every verifier worker picks it up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from services.errors import ConfigError
from services.runtime.cli_conventions import print_json
from services.runtime.cli_parser import RemovedFlag
from services.tpm.claims import extract_claims
from services.tpm.cli_conventions import add_json_flag, command_group
from services.tpm.cli_inputs import (
    add_allow_quirk_argument,
    add_pcrs_argument,
    load_quoted_pcrs,
    parse_boot_log_file,
    read_log_file,
)
from services.tpm.replay import verify_replay
from services.verifier.policy.derive import Golden, derive_policy, golden_from_log
from services.verifier.policy.evaluate import evaluate, prepare, subject
from services.verifier.policy.lint import findings
from services.verifier.policy.loader import load_policy_file
from services.verifier.policy.results import Outcome, Verdict
from services.verifier.policy.yamlout import dump

__all__ = ["register"]

EXIT_FAIL = 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hostgate policy`` and its sub-commands."""
    sub = command_group(
        subparsers, "policy",
        help="write, check and show attestation policies",
        description="Attestation policies (apiVersion hostgate/v1, kind AttestationPolicy): "
        "derive one from golden boot logs, check a log against one rule by rule, print "
        "one normalised with its digest, or publish one to the verifiers.",
    )

    p = sub.add_parser(
        "from-log",
        help="derive a policy from one or more golden boot logs (YAML on stdout)",
        description="Derive a reviewable policy that every given golden log passes: key "
        "databases, boot images and command lines as any-of sets across the logs, dbx as "
        "their common revocations, flags where all logs agree, one reference group per "
        "firmware build. YAML comments name the file and event each value came from. A log "
        "whose claims fail closed (e.g. a duplicate separator) is refused; where the refusal "
        "names a firmware quirk, --allow-quirk ID reads the logs with it and the policy "
        "accepts it (evidence.allowedQuirks).",
    )
    p.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="golden binary event log")
    p.add_argument("--id", default="derived", help="metadata.id of the policy (default derived)")
    p.add_argument("--policy-version", dest="version", default="1", metavar="VERSION",
                   help="metadata.version (default 1)")
    p.add_argument("--version", action=RemovedFlag,
                   instead="is now --policy-version here (--version is hostgate's own)")
    p.add_argument("--description", default=None, help="metadata.description")
    p.add_argument("--ccel", action="store_true", help="the logs are Intel TDX CCEL logs "
                   "(detected automatically when the Spec ID event is in MR 1)")
    add_allow_quirk_argument(p, "accept this named firmware quirk (repeatable): the logs are "
                             "read with it and the policy lists it in evidence.allowedQuirks")
    p.set_defaults(func=_cmd_from_log)

    c = sub.add_parser(
        "check",
        help="judge a boot log by a policy, rule by rule (exit 1 on fail)",
        description="Evaluate POLICY against the claims of LOG and explain every rule: "
        "pass, fail or not applicable, with the event that decided it. Without --pcrs the "
        "log is replayed against itself (a log-only check).",
        epilog="Exit status: 0 pass, 1 fail, 2 error.",
    )
    c.add_argument("policy", type=Path, metavar="POLICY", help="policy YAML file")
    c.add_argument("log", type=Path, metavar="LOG", help="binary event log")
    add_pcrs_argument(c, 'quoted PCR values ({"sha256": {"0": "hex"}}) the log must replay to')
    add_allow_quirk_argument(c)
    c.add_argument("--ccel", action="store_true", help="the log is an Intel TDX CCEL log")
    add_json_flag(c, "print the verdict as JSON")
    c.set_defaults(func=_cmd_check)

    s = sub.add_parser(
        "show",
        help="print a policy normalised, with its digest",
        description="Load and validate POLICY, then print its normalised form (sets sorted, "
        "defaults filled, comments dropped) and its digest: SHA-256 over canonical JSON.",
    )
    s.add_argument("policy", type=Path, metavar="POLICY", help="policy YAML file")
    add_json_flag(s, "print canonical JSON and the digest")
    s.set_defaults(func=_cmd_show)

    lint = sub.add_parser(
        "lint",
        help="explain what a policy leaves open (exit 1 if it admits any host unasked)",
        description="Load POLICY and list what it does not check, section by section: Secure "
        "Boot, key databases, boot chain, command line, Windows debug controls, reference "
        "groups (and so which platforms are proven), banks, accepted anomalies, and the PCRs "
        "every quote must cover because its rules read them. A policy that would admit any "
        "host is an error unless it declares spec.permissive: true.",
        epilog="Exit status: 0 no error, 1 an error finding, 2 the policy does not load.",
    )
    lint.add_argument("policy", type=Path, metavar="POLICY", help="policy YAML file")
    add_json_flag(lint, "print the findings as JSON")
    lint.set_defaults(func=_cmd_lint)

    from services.verifier.publish import add_publish_parser

    add_publish_parser(sub)


def _registers(ccel: bool) -> Literal["tpm", "ccel"] | None:
    return "ccel" if ccel else None


def _golden(path: Path, ccel: bool, quirks: Sequence[str] = ()) -> Golden:
    return golden_from_log(read_log_file(path), path.name, registers=_registers(ccel),
                           allowed_quirks=quirks)


def _cmd_from_log(args: argparse.Namespace) -> int:
    golden = [_golden(path, args.ccel, args.allow_quirk) for path in args.logs]
    derived = derive_policy(golden, policy_id=args.id, version=args.version,
                            description=args.description)
    sys.stdout.write(derived.text)
    sys.stdout.write(f"# digest: {derived.policy.digest}\n")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    prepared = prepare(load_policy_file(args.policy))
    named = prepared.policy.spec.evidence.allowed_quirks  # read as the verifier reads it
    if args.pcrs:
        log = parse_boot_log_file(args.log)
        quoted = load_quoted_pcrs(args.pcrs)
        result = verify_replay(log, quoted, allowed_quirks=args.allow_quirk)
        registers: Literal["tpm", "ccel"] = "ccel" if args.ccel else "tpm"
        claims = extract_claims(result, measurement_registers=registers,
                                allowed_quirks=(*named, *args.allow_quirk))
        subj = subject(claims, result.verified_events, active_banks=log.banks,
                       quoted_pcrs={b: sorted(v) for b, v in quoted.items()})
        mode = "replayed to the given PCR values"
    else:
        if args.allow_quirk:
            raise ConfigError("--allow-quirk needs --pcrs")
        subj = _golden(args.log, args.ccel, named).subject()
        mode = "log-only: replayed against itself, not quoted"
    verdict = evaluate(prepared, subj)
    if args.json:
        doc = verdict.to_json()
        doc["evidence"] = {"log": args.log.name, "mode": mode}
        print_json(doc)
    else:
        _print_verdict(verdict, args.log.name, mode)
    return 0 if verdict.passed else EXIT_FAIL


def _print_verdict(v: Verdict, log_name: str, mode: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{log_name} vs policy {v.policy_id} v{v.policy_version}",
                  caption=f"{v.policy_digest} ({mode})")
    widest = max((len(r.rule_id) for r in v.results), default=10)
    table.add_column("rule", no_wrap=True, min_width=widest)
    table.add_column("result", no_wrap=True)
    table.add_column("why", overflow="fold")
    table.add_column("event", overflow="fold")
    styles = {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.NOT_APPLICABLE: "dim"}
    for r in v.results:
        ev = "" if r.event is None else f"#{r.event.seq} PCR {r.event.pcr} {r.event.type}"
        table.add_row(r.rule_id, f"[{styles[r.outcome]}]{r.outcome.value}[/]", r.message, ev)
    console.print(table)
    if v.passed:
        console.print("[green]PASS[/]")
    else:
        console.print(f"[bold red]FAIL[/]: {len(v.failed)} rule(s) failed")


def _cmd_lint(args: argparse.Namespace) -> int:
    policy = load_policy_file(args.policy, require_asks=False)
    found = findings(policy)
    errors = [f for f in found if f.severity == "error"]
    if args.json:
        print_json({"policy": policy.metadata.id, "version": policy.metadata.version,
                    "digest": policy.digest, "findings": [f.to_json() for f in found]})
    else:
        print(f"policy {policy.metadata.id} v{policy.metadata.version} ({policy.digest})")
        for f in found:
            print(f"  {f.severity:<7} {f.field}: {f.message}")
        print(f"{len(errors)} error(s), {sum(f.severity == 'warning' for f in found)} "
              "warning(s)")
    return EXIT_FAIL if errors else 0


def _cmd_show(args: argparse.Namespace) -> int:
    policy = load_policy_file(args.policy)
    if args.json:
        print_json({"digest": policy.digest, "policy": policy.to_json()})
        return 0
    sys.stdout.write(dump(policy.to_json(), [f"digest: {policy.digest}"]))
    return 0
