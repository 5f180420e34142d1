"""Benchmark: hostgate's in-process event-log pipeline vs ``tpm2_eventlog`` as a subprocess.

    .venv/bin/python bench/eventlog.py [--seconds 3] [--rounds 5] [--json]

Corpus: every TCG boot log of ../shared/corpus (``HOSTGATE_CORPUS``) that is not malformed on
purpose (IMA lists excluded). Steps run per log, on one core, in this process:

1. ``parse_event_log``; 2. ``replay`` (every bank); 3. what a verifier runs on evidence:
``parse_event_log`` + ``verify_replay`` against quoted values (every bank; the log's own replay,
computed before timing, stands in for the quote) + ``extract_claims``. Every step is given one
:class:`~services.verifier.memo.VerifierMemo` (``memo=``), the way the verifier's shell hands
its memo to ``appraise``. Step 3 runs three ways:

* *fleet*: the memo stays warm (per-event readings, and the decoder tables under them), as in
  a verifier whose hosts share firmware and images: every log was seen before, so each event is
  read from memory instead of decoded and hashed again;
* *per-host events new*: as *fleet*, but events that differ between hosts installed from one
  image (:data:`HOST_SPECIFIC`: GPT, boot variables and image loads carry disk and partition
  GUIDs; GRUB commands and kernel command lines naming a UUID or root) are never found in the
  memo's readings, and neither is the PCR extend of such an event nor any later extend of its
  PCR in its remembered extends (each log's entries are dropped from both just before it is
  read, inside the timing; the decoder tables stay warm);
* *first sight*: the memo is emptied before each round, so each log is read as the first of
  its kind (events shared between different logs of the round, such as separators or the
  Microsoft db certificates, still hit after their first occurrence).

Baseline in the same run: ``tpm2_eventlog FILE`` started once per log (Keylime's approach),
output discarded, then again with ``yaml.safe_load`` of its output (what Keylime does next).
Ratios are against the plain subprocess figure, by wall time and by CPU time (this process plus
its children: steadier when the machine is shared). Variants run in turn, ``--rounds`` times
each; figures are medians, ratios medians of same-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402

from services.tpm import (  # noqa: E402
    parse_event_log,
    readings,
    replay,
    verify_replay,
)
from services.tpm.errors import TpmError  # noqa: E402
from services.tpm.eventlog import Event, EventType  # noqa: E402
from services.tpm.replay import initial_pcr_value, startup_locality  # noqa: E402
from services.verifier.memo import VerifierMemo  # noqa: E402

MEMO: Final = VerifierMemo()
"""The one memo every variant is given, as the verifier's shell gives its memo to appraise."""

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


#: Events that carry per-host values on otherwise identical machines: disk and partition GUIDs
#: (GPT, Boot#### device paths, image device paths) ...
HOST_SPECIFIC: Final = frozenset({
    EventType.EV_EFI_GPT_EVENT, EventType.EV_EFI_VARIABLE_BOOT, EventType.EV_EFI_VARIABLE_BOOT2,
    EventType.EV_EFI_BOOT_SERVICES_APPLICATION,
})
#: ... and EV_IPL strings that name a file system or disk (GRUB ``search --fs-uuid``, kernel
#: ``root=UUID=...``); other GRUB commands are the image's own. 22 % of the corpus' events.
HOST_SPECIFIC_IPL_MARKERS: Final = (b"UUID", b"uuid", b"root=", b"u\x00u\x00i\x00d")


def host_specific(etype: int, data: bytes) -> bool:
    """Whether an event of this type and data differs between hosts of one image."""
    return etype in HOST_SPECIFIC or (etype == EventType.EV_IPL and any(
        m in data for m in HOST_SPECIFIC_IPL_MARKERS))


def _registers(log: Any) -> str:
    return "ccel" if log.events[0].pcr == 1 and log.banks == ("sha384",) else "tpm"


def host_specific_entries(
    data: bytes,
) -> tuple[list[tuple[Any, ...]], dict[str, set[tuple[bytes, bytes]]]]:
    """What a host of its own would not find remembered when a fleet of its image was seen
    before: the readings keys of its host-specific events, and per bank the (previous value,
    digest) extend steps of those events and of every later one in the same PCR (its previous
    value differs)."""
    import hashlib

    log = parse_event_log(data)
    registers = _registers(log)
    locality = startup_locality(log)
    events: list[Event] = [ev for ev in log.events if ev.extends]
    keys = [readings.reading_key(ev, registers) for ev in events  # type: ignore[arg-type]
            if host_specific(ev.event_type, ev.data)]
    steps: dict[str, set[tuple[bytes, bytes]]] = {}
    for bank in log.banks:
        if bank not in hashlib.algorithms_available:
            continue
        state: dict[int, bytes] = {}
        tainted: set[int] = set()
        for ev in events:
            digest = ev.digests.get(bank)
            if digest is None:
                continue
            prev = state.get(ev.pcr)
            if prev is None:
                prev = initial_pcr_value(ev.pcr, len(digest), locality)
            if host_specific(ev.event_type, ev.data):
                tainted.add(ev.pcr)
            if ev.pcr in tainted:
                steps.setdefault(bank, set()).add((prev, digest))
            state[ev.pcr] = hashlib.new(bank, prev + digest).digest()
    return keys, steps


def forget_host_specific(keys: list[tuple[Any, ...]],
                         steps: dict[str, set[tuple[bytes, bytes]]]) -> None:
    """Drop one log's :func:`host_specific_entries` from :data:`MEMO`, as if its host were new."""
    for key in keys:
        MEMO.readings.discard(key)
    for bank, bank_steps in steps.items():
        table = MEMO.extends(bank)
        for step in bank_steps:
            table.discard(step)


def verifier_step(logs: list[tuple[str, Path, bytes]]) -> Callable[[bytes], None]:
    """parse + verify_replay + claims, with each log's quoted values computed beforehand."""
    quoted: dict[bytes, tuple[dict[str, dict[int, bytes]], str]] = {}
    for _, _, data in logs:
        log = parse_event_log(data)
        quoted[data] = (replay(log), _registers(log))

    def run(data: bytes) -> None:
        pcrs, registers = quoted[data]
        result = verify_replay(parse_event_log(data, memo=MEMO), pcrs, memo=MEMO)
        extract_claims(result, measurement_registers=registers,  # type: ignore[arg-type]
                       memo=MEMO)
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
    parser.add_argument("--rounds", type=int, default=5,
                        help="slices each variant's time is cut into, taken in turn (medians)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    logs = load_logs()
    n_logs = len(logs)
    total_bytes = sum(len(d) for _, _, d in logs)
    results: dict[str, dict[str, Any]] = {}

    steps: dict[str, tuple[Callable[[bytes], Any], str]] = {
        "parse": (lambda d: parse_event_log(d, memo=MEMO), "warm"),
        "parse+replay": (lambda d: replay(parse_event_log(d, memo=MEMO), memo=MEMO), "warm"),
    }
    if extract_claims is not None:
        verify = verifier_step(logs)
        host_entries = [host_specific_entries(data) for _, _, data in logs]
        parsed = [parse_event_log(data) for _, _, data in logs]
        extending = [sum(1 for ev in log.events if ev.extends) for log in parsed]
        host_share = (sum(len(keys) for keys, _ in host_entries) / sum(extending),
                      sum(len(v) for _, st in host_entries for v in st.values())
                      / sum(n * len(log.banks) for n, log in zip(extending, parsed, strict=True)))
        steps["parse+verify_replay+claims (fleet)"] = (verify, "warm")
        steps["parse+verify_replay+claims (per-host events new)"] = (verify, "per-host")
        steps["parse+verify_replay+claims (first sight)"] = (verify, "cold")
    variants: dict[str, Callable[[], None]] = {}
    failures: dict[str, int] = {}
    for name, (step, mode) in steps.items():
        failures[name] = 0
        for _, _, data in logs:  # warm-up, and check every log goes through
            try:
                step(data)
            except TpmError:
                failures[name] += 1

        def one_round(step: Callable[[bytes], Any] = step, mode: str = mode) -> None:
            if mode == "cold":
                MEMO.clear()
            if mode == "per-host":
                for (_, _, data), (keys, steps_) in zip(logs, host_entries, strict=True):
                    forget_host_specific(keys, steps_)
                    step(data)
                return
            for _, _, data in logs:
                step(data)

        variants[name] = one_round

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
            variants[name] = lambda flag=flag: sub_round(flag)
    # Every variant runs in turn, --rounds times: load changes on a shared machine hit all of
    # them alike. Figures are medians over the rounds; ratios are medians of the ratios to
    # the subprocess baseline measured in the same round.
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            samples[name].append(figures(*time_rounds(fn, args.seconds / args.rounds), n_logs,
                                         total_bytes))
    base_name = "tpm2_eventlog subprocess"
    for name, runs in samples.items():
        r = {key: statistics.median(run[key] for run in runs)
             for key in ("seconds", "cpu_seconds", "logs_per_s", "mb_per_s", "logs_per_cpu_s")}
        r["rounds"] = sum(run["rounds"] for run in runs)
        r["failures"] = (failures[name] if name in failures
                         else sum(1 for c in exit_codes.values() if c != 0))
        base = samples.get(base_name)
        r["x_vs_subprocess"] = (statistics.median(
            run["logs_per_s"] / b["logs_per_s"] for run, b in zip(runs, base, strict=True))
            if base else None)
        r["x_vs_subprocess_cpu"] = (statistics.median(
            run["logs_per_cpu_s"] / b["logs_per_cpu_s"] for run, b in zip(runs, base, strict=True))
            if base else None)
        results[name] = r

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {_cpu_model()}, {os.cpu_count()} cores, "
                   f"load {os.getloadavg()[0]:.1f}",
        "python": platform.python_version(),
        "logs": n_logs,
        "corpus_mb": total_bytes / 1e6,
        "claims_step": extract_claims is not None,
        "per_host_new_readings_share": host_share[0] if extract_claims is not None else None,
        "per_host_new_extends_share": host_share[1] if extract_claims is not None else None,
        "command": "python bench/eventlog.py " + " ".join(sys.argv[1:]),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=1))
        return 0
    print(f"{meta['date']}  {meta['machine']}  Python {meta['python']}")
    print(f"{n_logs} logs, {meta['corpus_mb']:.2f} MB; claims step "
          f"{'ran' if meta['claims_step'] else 'skipped (services.tpm.claims missing)'}")
    if meta["per_host_new_readings_share"] is not None:
        print(f"per-host: {meta['per_host_new_readings_share']:.0%} of events read afresh, "
              f"{meta['per_host_new_extends_share']:.0%} of PCR extends recomputed")
    print(f"{'variant':42} {'logs/s':>8} {'MB/s':>7} {'x subproc':>9} "
          f"{'logs/CPU-s':>10} {'x (CPU)':>8} {'failed':>6}")
    for name, r in results.items():
        ratio = f"{r['x_vs_subprocess']:.1f}" if r["x_vs_subprocess"] else "-"
        cpu_ratio = f"{r['x_vs_subprocess_cpu']:.1f}" if r["x_vs_subprocess_cpu"] else "-"
        print(f"{name:42} {r['logs_per_s']:8.0f} {r['mb_per_s']:7.2f} {ratio:>9} "
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
