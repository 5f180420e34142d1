"""Verifier core benchmark: evidences/s on one core, quote + replay + claims + policy, no Kafka.

Run: .venv/bin/python bench/verifier.py [--seconds S] [--rounds R] [--profile]

Evidence: simulator evidence only (real swtpm quotes over synthesised golden-image boots): 3
clean hosts of each of the 3 images plus one host per tamper profile that reaches the verifier
(11), i.e. 20 EvidenceCollected records, appraised round-robin. The policy is derived with
``hostgate policy from-log`` from one clean host per image. Baselines in the same run, same records:
``verify_quote`` alone (the floor every variant pays) and the agent's local selfcheck (quote +
replay + golden-PCR compare, no claims, no policy). Variants are timed in turn, in ``--rounds``
slices each, and each figure is the median of its slices. ``--profile`` prints the top of a
cProfile of the full appraisal.

Memoisation as in the verifier stage: one :class:`~services.verifier.memo.VerifierMemo`, made
once, is passed (``memo=``) to ``appraise`` and to the quote, parse and replay calls of the
partial variants, the way ``VerifierConfig.from_env`` makes the stage's memo and
``services.verifier.core.decide`` hands it to every appraisal; the agent's selfcheck takes none (the agent keeps no memo).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.agent import selfcheck
from services.agent.fleet import Evidence
from services.tpm.eventlog import parse_event_log
from services.tpm.quote import verify_quote
from services.tpm.replay import verify_replay
from services.verifier.core import appraise
from services.verifier.memo import VerifierMemo
from services.wire.banks import BANK_OF_SYMBOL
from tests.unit.verifier_support import (
    VERIFIER_PROFILES,
    collected_for,
    nonce_for,
    sim_fleet,
)


def _rate(fn: Callable[[Any], object], items: list[Any], seconds: float) -> tuple[float, float]:
    """(ops per wall second, ops per CPU second) running ``fn`` round-robin for ``seconds``."""
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        for item in items:
            fn(item)
        n += len(items)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return n / wall, n / max(cpu, 1e-9)


def _interleaved(variants: list[tuple[Callable[[Any], object], list[Any]]], seconds: float,
                 rounds: int) -> list[tuple[float, float]]:
    """Median (wall, CPU) rate of each variant, measured in ``rounds`` slices of
    ``seconds / rounds`` taken in turn, so a load change on a shared machine hits every
    variant alike instead of whichever happened to run then."""
    samples: list[list[tuple[float, float]]] = [[] for _ in variants]
    for _ in range(rounds):
        for i, (fn, items) in enumerate(variants):
            samples[i].append(_rate(fn, items, seconds / rounds))
    return [(statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
            for s in samples]


def _pcrs(col: dict[str, Any]) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    for item in col["evidence"]["pcr_values"]:
        out.setdefault(BANK_OF_SYMBOL[item["bank"]], {})[item["pcr"]] = item["value"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per variant")
    ap.add_argument("--rounds", type=int, default=5,
                    help="slices each variant's time is cut into, taken in turn (median kept)")
    ap.add_argument("--profile", action="store_true", help="cProfile the full appraisal")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostgate-bench-verifier-") as tmp, \
            sim_fleet(Path(tmp), clean_per_image=3) as sim:
        hosts = list(sim.fleet)
        cols = [collected_for(h, offset=i) for i, h in enumerate(hosts)]
        quotes = [(c, _pcrs(c)) for c in cols]
        selfchecks = []
        for h in hosts:
            ev: Evidence = h.quote(nonce_for(h.host_id, 9))
            selfchecks.append((ev, nonce_for(h.host_id, 9), h.ak_public,
                               selfcheck.golden_pcrs(h.image, h.spec.seed)))
        memo = VerifierMemo()
        passed = sum(appraise(c, sim.policy, memo=memo).passed for c in cols)
        print(f"{len(cols)} evidences ({passed} pass, {len(VERIFIER_PROFILES)} tamper profiles)")

        def quote_only(item: tuple[dict[str, Any], dict[str, dict[int, bytes]]]) -> object:
            c, pcrs = item
            e = c["evidence"]
            return verify_quote(c["ak_public"], e["quote_attest"], e["quote_signature"],
                                nonce=e["nonce"], pcr_values=pcrs, memo=memo)

        def quote_replay(item: tuple[dict[str, Any], dict[str, dict[int, bytes]]]) -> object:
            q = quote_only(item)
            assert hasattr(q, "pcr_values")
            log = parse_event_log(item[0]["evidence"]["boot_log"], memo=memo)
            try:
                return verify_replay(log, q.pcr_values, memo=memo)
            except Exception:  # forged_log: the mismatch is the expected outcome
                return None

        def full(c: dict[str, Any]) -> object:
            return appraise(c, sim.policy, memo=memo)

        def local(item: tuple[Evidence, bytes, bytes, Any]) -> object:
            return selfcheck.check(*item)

        names = ["verify_quote only (floor)", "quote + parse + verify_replay",
                 "agent selfcheck (quote + replay + golden PCRs)",
                 "**appraise: quote + counters + banks + replay + claims + policy + EAR**"]
        rates = _interleaved([(quote_only, quotes), (quote_replay, quotes), (local, selfchecks),
                              (full, cols)], args.seconds, args.rounds)
        rows = list(zip(names, rates, strict=True))
        base = rows[2][1][1]
        print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
              f"load={os.getloadavg()[0]:.1f} python={platform.python_version()}")
        print("| variant (one core) | evidences/s (wall) | per CPU-s | x selfcheck (CPU) |")
        print("|---|---:|---:|---:|")
        for name, (wall, cpu) in rows:
            print(f"| {name} | {wall:.0f} | {cpu:.0f} | {cpu / base:.2f} |")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(20):
                for c in cols:
                    appraise(c, sim.policy, memo=memo)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
