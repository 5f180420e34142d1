"""Benchmark the policy engine against the claims pipeline that feeds it (same run).

For each chosen corpus log: derive a policy from it, then time (a) the baseline — parse +
replay + verify_replay + extract_claims, i.e. what the verifier does anyway before policy —
and (b) policy evaluation of those claims with built-in rules only and (c) with two custom CEL
rules added. Figures are verdicts per CPU-second of this process (one core; a fresh
Subject per verdict, so per-evidence lookups are not cached across runs).

Usage: .venv/bin/python bench/policy.py [--seconds 2] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from services.verifier.policy.derive import Golden, derive_policy, golden_from_log
from services.verifier.policy.evaluate import PreparedPolicy, evaluate, prepare
from services.verifier.policy.loader import load_policy

REPO = Path(__file__).resolve().parents[1]
LOGS = ("A36", "A39", "W04")
CEL = """  customRules:
    - name: sb_on
      expression: 'claims.secure_boot == true || claims.secure_boot == false'
    - name: small_db
      expression: 'claims.key_databases.all(d, size(d.entries) < 100000)'
"""


def _rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.process_time()
    while True:
        fn()
        n += 1
        spent = time.process_time() - start
        if spent >= seconds:
            return n / spent


def _judge(prepared: PreparedPolicy, golden: Golden) -> object:
    return evaluate(prepared, golden.subject())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--corpus", default=os.environ.get("HOSTGATE_CORPUS", "../shared/corpus"))
    args = ap.parse_args()
    corpus = Path(args.corpus)
    corpus = corpus if corpus.is_absolute() else (REPO / corpus).resolve()
    manifest = {e["id"]: e for e in json.loads((corpus / "manifest.json").read_text())["entries"]}
    print("| log | baseline: parse+replay+claims /s | evaluate (built-in) /s | ratio "
          "| evaluate + 2 CEL rules /s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for entry_id in LOGS:
        data = (corpus / manifest[entry_id]["file"]).read_bytes()
        golden = golden_from_log(data, entry_id)
        derived = derive_policy([golden])
        builtin = prepare(derived.policy)
        with_cel = prepare(load_policy(derived.text.split("# digest")[0] + CEL))
        subj = golden.subject()
        assert evaluate(builtin, subj).passed and evaluate(with_cel, subj).passed
        base = _rate(partial(golden_from_log, data, "x"), args.seconds)
        b = _rate(partial(_judge, builtin, golden), args.seconds)
        c = _rate(partial(_judge, with_cel, golden), args.seconds)
        print(f"| {entry_id} | {base:.0f} | {b:.0f} | {b / base:.2f}x | {c:.1f} | "
              f"{c / base:.2f}x |")


if __name__ == "__main__":
    main()
