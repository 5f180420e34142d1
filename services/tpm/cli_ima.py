"""``hostgate ima show|verify``: inspect Linux IMA measurement lists, check them against PCRs.

Registered by ``services/tpm/cli.py`` (it calls :func:`register`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from services.tpm import ima, ima_replay
from services.tpm.algorithms import SHA_BANKS
from services.tpm.cli_conventions import add_json_flag, command_group, print_json
from services.tpm.cli_inputs import add_pcrs_argument, load_quoted_pcrs, parse_ima_file

__all__ = ["register", "register_ima"]

_BANKS = SHA_BANKS


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hostgate ima show`` and ``hostgate ima verify``."""
    sub = command_group(
        subparsers, "ima",
        help="inspect and verify Linux IMA measurement lists",
        description="Parse Linux IMA runtime measurement lists (ascii_runtime_measurements or "
        "binary_runtime_measurements; templates ima, ima-ng, ima-sig, ima-buf, ima-modsig) "
        "and replay them into PCR 10.",
    )

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("file", type=Path, metavar="FILE", help="IMA list, ASCII or binary")
    common.add_argument(
        "--truncated-tail",
        action="store_true",
        help=f"accept a binary list that ends inside an entry (quirk {ima.QUIRK_TRUNCATED_TAIL}; "
        "the partial entry is dropped)",
    )
    show = sub.add_parser(
        "show",
        parents=[common],
        help="list the entries and the replayed PCR values",
        description="List every entry (template, file hash, path, signature key id) and the "
        "PCR values a replay gives. Nothing is verified: a host can write any list.",
    )
    show.add_argument(
        "--bank",
        action="append",
        choices=_BANKS,
        help="replay bank (repeatable; default sha1, sha256)",
    )
    add_json_flag(show, "print JSON instead of text")
    show.set_defaults(func=_cmd_show)

    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="check the list against quoted PCR values (and its boot_aggregate)",
        description="Check every template hash, replay the list and compare with PCR values "
        "(e.g. from a verified quote). With --boot-aggregate the first entry must equal the "
        "hash of PCRs 0-7 (SHA-1) or 0-9 (other banks). Exit 0 when everything matches.",
    )
    add_pcrs_argument(
        verify, 'PCR values, e.g. \'{"sha256": {"10": "ab12..."}}\' or a JSON/YAML file',
        required=True)
    verify.add_argument(
        "--allow-unquoted-tail",
        action="store_true",
        help="accept entries measured after the quote (the longest matching prefix is verified)",
    )
    verify.add_argument(
        "--boot-aggregate", action="store_true", help="also check the boot_aggregate entry"
    )
    add_json_flag(verify, "print JSON instead of text")
    verify.set_defaults(func=_cmd_verify)


register_ima = register


def _load(args: argparse.Namespace) -> ima.ImaList:
    quirks = [ima.QUIRK_TRUNCATED_TAIL] if args.truncated_tail else []
    return parse_ima_file(args.file, quirks=quirks)


def _entry_json(e: ima.ImaEntry) -> dict[str, Any]:
    sig = e.signature
    return {
        "seq": e.seq,
        "offset": e.offset,
        "line": e.line,
        "pcr": e.pcr,
        "template": e.template_name,
        "template_hash": e.template_hash.hex(),
        "violation": e.violation,
        "file_hash_alg": e.file_hash_alg,
        "file_hash": e.file_hash.hex() if e.file_hash is not None else None,
        "path": e.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if e.path is not None
        else None,
        "signature": None
        if sig is None
        else {
            "version": sig.version,
            "hash_alg": sig.hash_alg,
            "key_id": f"{sig.key_id:08x}",
            "size": len(sig.signature),
        },
        "buf": e.buf.hex() if e.buf is not None else None,
        "modsig": len(e.modsig) if e.modsig is not None else None,
    }


def _cmd_show(args: argparse.Namespace) -> int:
    lst = _load(args)
    banks = tuple(args.bank or ("sha1", "sha256"))
    pcrs = ima_replay.replay(lst, banks)
    if args.json:
        doc = {
            "format": lst.format,
            "entries": [_entry_json(e) for e in lst.entries],
            "truncated_tail_bytes": lst.truncated_tail,
            "quirks_applied": sorted(lst.quirks_applied),
            "replayed_pcrs": {
                b: {str(p): v.hex() for p, v in sorted(m.items())} for b, m in pcrs.items()
            },
        }
        print_json(doc, indent=2)
        return 0
    for e in lst.entries:
        j = _entry_json(e)
        digest = f"{j['file_hash_alg']}:{j['file_hash']}" if j["file_hash"] else "-"
        extra = f" sig={j['signature']['key_id']}" if j["signature"] else ""
        flag = " VIOLATION" if e.violation else ""
        print(f"{e.seq:6d} pcr{e.pcr:<2d} {e.template_name:<10s} {digest} {j['path']}{extra}{flag}")
    print(
        f"{len(lst.entries)} entries ({lst.format}), {sum(e.violation for e in lst.entries)} violations"
    )
    for bank, values in pcrs.items():
        for pcr, value in sorted(values.items()):
            print(f"  {bank}: {pcr:2d}: {value.hex()}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    lst = _load(args)
    quoted = load_quoted_pcrs(args.pcrs)
    verified = ima_replay.verify_replay(lst, quoted, allow_unquoted_tail=args.allow_unquoted_tail)
    bank = ima_replay.verify_boot_aggregate(lst, quoted) if args.boot_aggregate else None
    result = {
        "verified_entries": len(verified.entries),
        "unquoted_tail": verified.unquoted_tail,
        "banks": list(verified.banks),
        "boot_aggregate_bank": bank,
    }
    if args.json:
        print_json(result, indent=2)
    else:
        tail = (
            f", {verified.unquoted_tail} unquoted entries after the quote"
            if verified.unquoted_tail
            else ""
        )
        ba = f"; boot_aggregate matches {bank} PCRs" if bank else ""
        print(
            f"OK: {len(verified.entries)} entries replay to the given PCRs ({', '.join(verified.banks)}){tail}{ba}"
        )
    return 0
