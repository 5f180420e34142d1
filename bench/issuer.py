"""Benchmark: issuer credentials/s on one core (host key + certificate + TPM seal).

Run: ``.venv/bin/python bench/issuer.py [--seconds N]``. In-process, pinned to one CPU. The
baseline in the same run is the cryptographic floor of one credential: a fresh P-256 key plus
one ECDSA signature with ``cryptography`` (no certificate, no sealing). Figures go to
``bench/RESULTS.md`` under "Issuer".
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from services.issuer.certificates import HostCertificateRequest, issue_host_certificate
from services.issuer.config import IssuerConfig
from services.issuer.core import apply_verdict
from services.issuer.sealing import seal_credential
from services.tpm.credential import pcr_selection
from tests.unit.issuer_support import (
    APPRAISED,
    PCRS,
    POLICY_DIGEST,
    pem_ca,
    software_ek_public,
    verdict,
)


def _rate(fn: Callable[[], None], seconds: float) -> tuple[float, float]:
    """(calls per wall second, calls per CPU second)."""
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start), n / max(time.process_time() - cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per case")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    ek = software_ek_public()
    sel = pcr_selection({"sha256": range(8)})
    pcrs = {"sha256": PCRS}
    ids = itertools.count()

    def floor() -> None:
        ec.generate_private_key(ec.SECP256R1()).sign(b"x" * 300, ec.ECDSA(hashes.SHA256()))

    def cert_only() -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        issue_host_certificate(ca, HostCertificateRequest(
            "host-0007", key.public_key(), f"v-{next(ids)}", POLICY_DIGEST, bytes(32),
            APPRAISED))

    def seal_only() -> None:
        seal_credential(ek, sel, pcrs, ec.generate_private_key(ec.SECP256R1()),
                        credential_id="c", certificate_der=b"cert")

    def full() -> None:
        apply_verdict(verdict(f"v-{next(ids)}", ek_public=ek), None, cfg)

    cert = issue_host_certificate(ca, HostCertificateRequest(
        "host-0007", ec.generate_private_key(ec.SECP256R1()).public_key(), "v", POLICY_DIGEST,
        bytes(32), APPRAISED))
    print(f"machine: {os.uname().machine}, python {sys.version.split()[0]}, "
          f"{dt.date.today()}, cert DER {len(cert.public_bytes(Encoding.DER))} bytes")
    base_wall, base_cpu = _rate(floor, args.seconds)
    print(f"{'case':58} {'/s wall':>9} {'/CPU-s':>9} {'x floor (CPU)':>14}")
    print(f"{'floor: P-256 keygen + 1 ECDSA sign (cryptography)':58} {base_wall:9.0f} "
          f"{base_cpu:9.0f} {1.0:14.2f}")
    for name, fn in (("host key + certificate (PEM P-256 CA)", cert_only),
                     ("host key + seal to RSA-2048 EK (PolicyPCR, AES-GCM)", seal_only),
                     ("apply_verdict PASS: key + cert + seal + records", full)):
        wall, cpu = _rate(fn, args.seconds)
        print(f"{name:58} {wall:9.0f} {cpu:9.0f} {base_cpu / cpu:14.2f}")


if __name__ == "__main__":
    main()
