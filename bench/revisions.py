"""Benchmark: this checkout against an earlier revision, both in this process, in turn.

    .venv/bin/python bench/revisions.py [--against HEAD~1] [--rounds 20] [--slice 0.1] [--json]

The machine this project runs on shares its cores and swings between a fast and a slow phase
within seconds, so two runs of a benchmark minutes apart can differ by 1.6x. Here the earlier
revision's ``services`` package is extracted from git (``git archive``) under another name and
imported next to this checkout's, and the same work is timed on both in short slices taken in
turn (order alternating), so both see the same phases. The figure to quote is the median of
the per-slice-pair ratios (earlier time / this time; above 1 = this checkout is faster), with
its interquartile range.

Work compared, per item on one core:

* event logs (every TCG boot log of ../shared/corpus that is not malformed on purpose, as
  ``bench/eventlog.py``'s fleet variant: memo warm): ``parse_event_log``, ``verify_replay``
  against the log's own replay, ``extract_claims``, the three in a row, and the canonical
  claims JSON a verdict carries (real key databases: 56 entries per log on average);
* the verifier core (``--verifier``): ``appraise`` of the simulated fleet's evidence records
  (real swtpm hosts, ``bench/verifier.py``'s mix) under the policy derived from its clean
  hosts, each revision loading the same published policy record.

Memoisation, as each revision's verifier does it: a revision with ``services.verifier.memo``
gets one ``VerifierMemo`` per workload set, passed (``memo=``) to every call that takes one,
the way ``services.verifier.core.decide`` hands its memo to ``appraise``; an older revision keeps its
module-level caches, warmed the same way.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

BASELINE_PACKAGE = "hostgate_baseline"
_IMPORTS = re.compile(r"\bservices(?=\.|\s+import\b)")


def extract_revision(rev: str, into: Path) -> None:
    """``services/`` of ``rev`` as the package :data:`BASELINE_PACKAGE` under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "services"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "services").rename(into / BASELINE_PACKAGE)
    for path in (into / BASELINE_PACKAGE).rglob("*.py"):
        text = path.read_text()
        path.write_text(_IMPORTS.sub(BASELINE_PACKAGE, text))


def module(package: str, name: str) -> ModuleType:
    return __import__(f"{package}.{name}", fromlist=["_"])


def with_memo(package: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Binds one new ``VerifierMemo`` (``memo=``) to a function of a revision that has
    ``services.verifier.memo``; a revision without it (module-level caches) is called as is."""
    try:
        memo = module(package, "verifier.memo").VerifierMemo()
    except ImportError:
        return lambda fn: fn
    return lambda fn: functools.partial(fn, memo=memo)


def corpus_logs() -> list[bytes]:
    root = Path(os.environ.get("HOSTGATE_CORPUS", REPO_ROOT / ".." / "shared" / "corpus"))
    root = root if root.is_absolute() else REPO_ROOT / root
    entries = json.loads((root / "manifest.json").read_text())["entries"]
    return [(root / e["file"]).read_bytes() for e in entries
            if not (e["category"].startswith(("ima", "malformed")) or e["malformed_on_purpose"])]


def eventlog_work(package: str, logs: list[bytes]) -> dict[str, Callable[[], None]]:
    """The four event-log workloads of one revision, each over every log (caches warmed)."""
    memo = with_memo(package)
    parse = memo(module(package, "tpm.eventlog").parse_event_log)
    replay_mod = module(package, "tpm.replay")
    extract = memo(module(package, "tpm.claims").extract_claims)
    verify = memo(replay_mod.verify_replay)
    quoted = []
    for data in logs:
        log = parse(data)
        ccel = log.events[0].pcr == 1 and log.banks == ("sha384",)
        quoted.append((data, replay_mod.replay(log), "ccel" if ccel else "tpm"))
    parsed = [(parse(d), q, r) for d, q, r in quoted]
    verified = [(verify(log, q), r) for log, q, r in parsed]

    def parse_all() -> None:
        for data in logs:
            parse(data)

    def replay_all() -> None:
        for log, q, _ in parsed:
            verify(log, q)

    def claims_all() -> None:
        for result, registers in verified:
            extract(result, measurement_registers=registers)

    def pipeline() -> None:
        for data, q, registers in quoted:
            extract(verify(parse(data), q), measurement_registers=registers)

    try:
        claims_text = memo(module(package, "verifier.claims_json").claims_json)
    except ImportError:  # before the verdict wrote entry lists once
        ear = module(package, "verifier.ear")

        def claims_text(claims: Any) -> str:
            return str(ear.canonical_float_free(claims.to_json_dict()))

    claims = [extract(result, measurement_registers=registers) for result, registers in verified]

    def verdict_claims_all() -> None:
        for c in claims:
            claims_text(c)

    work = {"parse": parse_all, "verify_replay": replay_all, "claims": claims_all,
            "parse+verify_replay+claims": pipeline, "verdict claims JSON": verdict_claims_all}
    for fn in work.values():
        fn()
    return work


def verifier_work(package: str, cols: list[dict[str, Any]],
                  record: dict[str, Any]) -> dict[str, Callable[[], None]]:
    appraise = with_memo(package)(module(package, "verifier.core").appraise)
    policy = module(package, "verifier.policy_in_force").load_in_force(record)

    def appraise_all() -> None:
        for c in cols:
            appraise(c, policy)

    appraise_all()
    return {"appraise": appraise_all}


def compare(work: dict[str, dict[str, Callable[[], None]]], items: dict[str, int],
            rounds: int, slice_s: float) -> dict[str, dict[str, float]]:
    """Time each workload of both revisions in turn; per item µs and ratio statistics."""
    samples: dict[tuple[str, str], list[float]] = {}
    names = list(work["this"])
    for r in range(rounds):
        for name in names:
            for side in (("baseline", "this") if r % 2 else ("this", "baseline")):
                fn = work[side][name]
                start, n = time.perf_counter(), 0
                while time.perf_counter() - start < slice_s:
                    fn()
                    n += 1
                per_item = (time.perf_counter() - start) / n / items[name] * 1e6
                samples.setdefault((name, side), []).append(per_item)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        base, this = samples[(name, "baseline")], samples[(name, "this")]
        ratios = sorted(b / t for b, t in zip(base, this, strict=True))
        out[name] = {"baseline_us": statistics.median(base), "this_us": statistics.median(this),
                     "speedup": statistics.median(ratios),
                     "speedup_q1": ratios[len(ratios) // 4],
                     "speedup_q3": ratios[(3 * len(ratios)) // 4]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="HEAD~1", help="git revision to compare with")
    ap.add_argument("--rounds", type=int, default=20, help="slice pairs per workload")
    ap.add_argument("--slice", type=float, default=0.1, help="seconds per slice")
    ap.add_argument("--verifier", action="store_true",
                    help="also compare appraise on the simulated fleet (starts swtpm hosts)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", args.against],
                         capture_output=True, text=True, check=True).stdout.strip()
    here = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="hostgate-bench-rev-") as tmp:
        extract_revision(args.against, Path(tmp))
        sys.path.insert(0, tmp)
        logs = corpus_logs()
        work = {"this": eventlog_work("services", logs),
                "baseline": eventlog_work(BASELINE_PACKAGE, logs)}
        items = dict.fromkeys(work["this"], len(logs))
        results = compare(work, items, args.rounds, args.slice)
        if args.verifier:
            from services.verifier.policy_in_force import published_record
            from tests.unit.verifier_support import RECEIVED_AT_MS, collected_for, sim_fleet
            with tempfile.TemporaryDirectory(prefix="hostgate-bench-rev-fleet-") as fleet_dir, \
                    sim_fleet(Path(fleet_dir), clean_per_image=3) as sim:
                cols = [collected_for(h, offset=i) for i, h in enumerate(sim.fleet)]
                record = published_record(sim.policy_text, version=1,
                                          published_at_ms=RECEIVED_AT_MS, author="bench")
                vwork = {"this": verifier_work("services", cols, record),
                         "baseline": verifier_work(BASELINE_PACKAGE, cols, record)}
                results.update(compare(vwork, {"appraise": len(cols)}, args.rounds, args.slice))
    meta = {"date": time.strftime("%Y-%m-%d"), "this": here, "baseline": rev,
            "logs": len(logs), "command": "python bench/revisions.py " + " ".join(sys.argv[1:])}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=1))
        return 0
    print(f"{meta['date']}  this checkout {here} vs {rev}; {len(logs)} corpus logs; "
          f"{args.rounds} slice pairs of {args.slice} s")
    print(f"{'work (per item)':28} {'baseline µs':>12} {'this µs':>9} {'speedup':>8} {'IQR':>11}")
    for name, r in results.items():
        print(f"{name:28} {r['baseline_us']:12.1f} {r['this_us']:9.1f} {r['speedup']:8.2f} "
              f"{r['speedup_q1']:5.2f}-{r['speedup_q3']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
