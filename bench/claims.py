"""Benchmark: claims extraction over the real corpus, against parsing alone (same run).

Run: ``.venv/bin/python bench/claims.py [--seconds N]``. One core, in-process. Figures go to
``bench/RESULTS.md`` under "Event-data decoders and claims".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from services.tpm.claims import extract_claims
from services.tpm.eventlog import parse_event_log

REPO = Path(__file__).resolve().parents[1]
CORPUS = (REPO / os.environ.get("HOSTGATE_CORPUS", "../shared/corpus")).resolve()


def _logs() -> list[tuple[bytes, str]]:
    manifest = json.loads((CORPUS / "manifest.json").read_text())["entries"]
    return [
        ((CORPUS / e["file"]).read_bytes(), "ccel" if e["category"] == "ccel-tdx" else "tpm")
        for e in manifest
        if e.get("independent_features") and not e["malformed_on_purpose"]
    ]


def _rate(fn: Callable[[], None], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    logs = _logs()

    def parse_only() -> None:
        for raw, _ in logs:
            parse_event_log(raw)

    def parse_and_claims() -> None:
        for raw, regs in logs:
            log = parse_event_log(raw)
            if regs == "ccel":
                extract_claims(log.events, banks=log.banks, measurement_registers="ccel")
            else:
                extract_claims(log.events, banks=log.banks)

    base = _rate(parse_only, args.seconds) * len(logs)
    full = _rate(parse_and_claims, args.seconds) * len(logs)
    print(f"{len(logs)} logs; parse only: {base:.0f} logs/s; parse + claims: {full:.0f} logs/s; "
          f"claims cost {base / full:.1f}x parse time")


if __name__ == "__main__":
    main()
