"""Benchmark: hostgate's in-process event-log pipeline vs ``tpm2_eventlog`` as a subprocess.

    .venv/bin/python bench/eventlog.py [--seconds 3] [--json]

Corpus: every TCG boot log of ../shared/corpus (``HOSTGATE_CORPUS``) that is not malformed on
purpose (IMA lists excluded). Steps run per log, on one core, in this process:

1. ``parse_event_log``; 2. ``replay`` (every bank); 3. ``verify_replay`` against the replayed
values plus ``extract_claims`` from ``services.tpm.claims`` when that module exists (the output
says which steps ran).

Baseline in the same run: ``tpm2_eventlog FILE`` started once per log (Keylime's approach),
output discarded, then again with ``yaml.safe_load`` of its output (what Keylime does next).
Ratios are against the plain subprocess figure, by wall time and by CPU time (this process plus
its children: steadier when the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402

from services.tpm import parse_event_log, replay, verify_replay  # noqa: E402
from services.tpm.errors import TpmError  # noqa: E402

try:
    from services.tpm.claims import extract_claims
except ImportError:  # a checkout without the claims step
    extract_claims = None  # type: ignore[assignment]


def corpus_dir() -> Path:
    path = Path(os.environ.get("HOSTGATE_CORPUS", REPO_ROOT / ".." / "shared" / "corpus"))
    return path if path.is_absolute() else REPO_ROOT / path


def load_logs() -> list[tuple[str, Path, bytes]]:
    root = corpus_dir()
    entries = json.loads((root / "manifest.json").read_text())["entries"]
    out = []
    for e in entries:
        if e["category"].startswith(("ima", "malformed")) or e["malformed_on_purpose"]:
            continue
        path = root / e["file"]
        out.append((e["id"], path, path.read_bytes()))
    return out


def pipeline(with_claims: bool) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        log = parse_event_log(data)
        pcrs = replay(log)
        if with_claims and extract_claims is not None and pcrs:
            result = verify_replay(log, pcrs)
            ccel = log.events[0].pcr == 1 and log.banks == ("sha384",)
            extract_claims(result, measurement_registers="ccel" if ccel else "tpm")
    return run


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (robust on a shared machine)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_rounds(func: Callable[[], None], min_seconds: float) -> tuple[int, float, float]:
    """Run ``func`` until ``min_seconds`` of wall time passed: (rounds, wall s, CPU s)."""
    rounds, start, cpu0 = 0, time.perf_counter(), _cpu()
    while True:
        func()
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return rounds, elapsed, _cpu() - cpu0


def figures(rounds: int, wall: float, cpu: float, n_logs: int, n_bytes: int) -> dict[str, Any]:
    return {"rounds": rounds, "seconds": wall, "cpu_seconds": cpu,
            "logs_per_s": rounds * n_logs / wall, "mb_per_s": rounds * n_bytes / wall / 1e6,
            "logs_per_cpu_s": rounds * n_logs / cpu if cpu > 0 else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per variant")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    logs = load_logs()
    n_logs = len(logs)
    total_bytes = sum(len(d) for _, _, d in logs)
    results: dict[str, dict[str, Any]] = {}

    steps = {"parse": lambda d: parse_event_log(d),
             "parse+replay": lambda d: replay(parse_event_log(d))}
    if extract_claims is not None:
        steps["parse+replay+verify+claims"] = pipeline(True)
    for name, step in steps.items():
        failures = 0
        for _, _, data in logs:  # warm-up, and check every log goes through
            try:
                step(data)
            except TpmError:
                failures += 1

        def one_round(step: Callable[[bytes], Any] = step) -> None:
            for _, _, data in logs:
                step(data)

        results[name] = figures(*time_rounds(one_round, args.seconds), n_logs, total_bytes)
        results[name]["failures"] = failures

    tool = shutil.which("tpm2_eventlog")
    exit_codes: dict[str, int] = {}
    if tool:
        def sub_round(parse_yaml: bool) -> None:
            for log_id, path, _ in logs:
                proc = subprocess.run([tool, str(path)], capture_output=True, check=False)
                exit_codes[log_id] = proc.returncode
                if parse_yaml and proc.returncode == 0:
                    yaml.load(proc.stdout, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))

        for name, flag in (("tpm2_eventlog subprocess", False),
                           ("tpm2_eventlog subprocess + YAML", True)):
            timing = time_rounds(lambda flag=flag: sub_round(flag), args.seconds)
            results[name] = figures(*timing, n_logs, total_bytes)
            results[name]["failures"] = sum(1 for c in exit_codes.values() if c != 0)
    base = results.get("tpm2_eventlog subprocess", {})
    for r in results.values():
        r["x_vs_subprocess"] = r["logs_per_s"] / base["logs_per_s"] if base else None
        r["x_vs_subprocess_cpu"] = (r["logs_per_cpu_s"] / base["logs_per_cpu_s"]
                                    if base else None)

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {_cpu_model()}, {os.cpu_count()} cores, "
                   f"load {os.getloadavg()[0]:.1f}",
        "python": platform.python_version(),
        "logs": n_logs,
        "corpus_mb": total_bytes / 1e6,
        "claims_step": extract_claims is not None,
        "command": "python bench/eventlog.py " + " ".join(sys.argv[1:]),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=1))
        return 0
    print(f"{meta['date']}  {meta['machine']}  Python {meta['python']}")
    print(f"{n_logs} logs, {meta['corpus_mb']:.2f} MB; claims step "
          f"{'ran' if meta['claims_step'] else 'skipped (services.tpm.claims missing)'}")
    print(f"{'variant':32} {'logs/s':>8} {'MB/s':>7} {'x subproc':>9} "
          f"{'logs/CPU-s':>10} {'x (CPU)':>8} {'failed':>6}")
    for name, r in results.items():
        ratio = f"{r['x_vs_subprocess']:.1f}" if r["x_vs_subprocess"] else "-"
        cpu_ratio = f"{r['x_vs_subprocess_cpu']:.1f}" if r["x_vs_subprocess_cpu"] else "-"
        print(f"{name:32} {r['logs_per_s']:8.0f} {r['mb_per_s']:7.2f} {ratio:>9} "
              f"{r['logs_per_cpu_s']:10.0f} {cpu_ratio:>8} {r['failures']:6d}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
