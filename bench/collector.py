"""Collector core throughput: ``decide`` per record kind against a floor measured in the same run.

Floor: one ECDSA P-256 signature verification over a TPMS_ATTEST (what intake must do anyway).
Cases: the accepted intake path (``EvidenceSubmitted`` with a real corpus boot log → parse for
limits, nonce checks, signature, ``EvidenceCollected``), a nonce issue (``ChallengeRequested``),
and an enrolment (EK chain + MakeCredential to an RSA-2048 EK). In-process, software keys in TPM
encodings (tests/unit/collector_support.py), codec excluded.

    .venv/bin/python bench/collector.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.collector.config import CollectorConfig  # noqa: E402
from services.collector.stage import stage_from_config  # noqa: E402
from services.runtime.stage import Coordinates, InputRecord  # noqa: E402
from services.tpm.keys import decode_public  # noqa: E402
from services.tpm.quote import verify_attest_signature  # noqa: E402
from tests.unit.collector_support import (  # noqa: E402
    NOW_MS,
    EkPki,
    Harness,
    SeededRandom,
    SoftHost,
)


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0), n / max(1e-9, time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    corpus = Path(os.environ.get("HOSTGATE_CORPUS", "../shared/corpus"))
    corpus = corpus if corpus.is_absolute() else (REPO / corpus).resolve()
    log = (corpus / "logs" / "A32__go-eventlog__arch-linux-workstation.bin").read_bytes()
    pki, rnd = EkPki(), SeededRandom()
    cfg = CollectorConfig(trusted_cas=(pki.root,), intermediates=(pki.ica,), random_bytes=rnd,
                          challenge_rate_count=10**9, max_open_challenges=64)
    hx = Harness(cfg)
    stage = stage_from_config(cfg)
    host = SoftHost("bench-host", pki)
    ch = hx.feed("hostgate.EnrollmentRequested", host.enroll()).outputs[0].record
    hx.feed("hostgate.ActivationProof", host.proof(ch["challenge_id"], rnd.handed_out[-1]))
    n = hx.feed("hostgate.ChallengeRequested", host.ask()).outputs[0].record
    ev = host.evidence(n["challenge_id"], n["nonce"], boot_log=log)
    # Records on their key's partition, as the runtime would say (a one-partition topic).
    ev_inp = InputRecord("bench-host", "hostgate.EvidenceSubmitted", ev,
                         Coordinates("attest.evidence.v1", 0, 99), NOW_MS, key_partition=0)
    ask_inp = InputRecord("bench-host", "hostgate.ChallengeRequested", host.ask(),
                          Coordinates("attest.requests.v1", 0, 98), NOW_MS, key_partition=0)
    enr_inp = InputRecord("bench-host2", "hostgate.EnrollmentRequested",
                          SoftHost("bench-host2", pki).enroll(),
                          Coordinates("attest.requests.v1", 0, 97), NOW_MS, key_partition=0)
    ak = decode_public(host.ak_public)

    def accepted() -> None:
        d = stage.decide(ev_inp, hx.state)
        assert d.outputs[0].subject == "hostgate.EvidenceCollected"

    cases = [
        ("floor: ECDSA P-256 verify of one quote", lambda: verify_attest_signature(
            ak, ev["quote_attest"], ev["quote_signature"])),
        (f"intake accepted ({len(log)} B real boot log)", accepted),
        ("nonce issued (ChallengeRequested)", lambda: stage.decide(ask_inp, hx.state)),
        ("enrolment: EK chain + MakeCredential (RSA-2048)",
         lambda: stage.decide(enr_inp, hx.state)),
    ]
    floor = None
    print("| case (one core) | /s wall | per CPU-s | x floor (CPU) |\n|---|---:|---:|---:|")
    for name, fn in cases:
        wall, cpu = rate(fn, args.seconds)
        floor = floor or cpu
        print(f"| {name} | {wall:.0f} | {cpu:.0f} | {floor / cpu:.1f} |")


if __name__ == "__main__":
    main()
