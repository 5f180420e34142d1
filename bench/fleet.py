"""Fleet simulator benchmark: host start, enrol+attest per host, swtpm memory (PSS).

Run: .venv/bin/python bench/fleet.py [--hosts N]
Baselines in the same run: provisioning by copying one template state (same EK for all) vs
swtpm_setup per host (distinct EKs); RSA-2048 AKs vs the default ECC P-256 AKs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from services.agent import selfcheck
from services.agent.fleet import Fleet, plan_hosts
from services.tpm.credential import make_credential


def _run(hosts: int, distinct: bool, ak_kind: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hostgate-bench-") as tmp:
        fleet = Fleet(Path(tmp), plan_hosts(hosts), distinct_identity=distinct, ak_kind=ak_kind)
        with fleet:
            assert fleet.timings is not None
            pss = [h.swtpm.pss_kib() or 0 for h in fleet]
            per_host: list[float] = []
            for h in fleet:
                t = time.perf_counter()
                secret = os.urandom(32)
                assert h.activate(make_credential(h.ek_public, h.ak_public, secret)) == secret
                nonce = os.urandom(32)
                v = selfcheck.check(h.quote(nonce), nonce, h.ak_public,
                                    selfcheck.golden_pcrs(h.image, h.spec.seed))
                assert v.ok, v
                per_host.append(time.perf_counter() - t)
            tm = fleet.timings
        return {
            "provision_per_host_ms": 1000 * tm.provision_s / hosts,
            "swtpm_start_per_host_ms": 1000 * tm.start_swtpm_s / hosts,
            "ak_create_boot_median_ms": 1000 * statistics.median(tm.per_host_prepare_s),
            "enrol_attest_median_ms": 1000 * statistics.median(per_host),
            "enrol_attest_max_ms": 1000 * max(per_host),
            "pss_median_kib": statistics.median(pss),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    args = parser.parse_args()
    runs = {
        "distinct EKs, ECC AK": _run(args.hosts, True, "ecc"),
        "cloned state, ECC AK (baseline)": _run(args.hosts, False, "ecc"),
        "distinct EKs, RSA AK (baseline)": _run(args.hosts, True, "rsa"),
    }
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; hosts per run: {args.hosts}")
    keys = list(next(iter(runs.values())))
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, r in runs.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in keys) + " |")
    a, b, c = runs.values()
    print(f"provision ratio distinct/cloned: {a['provision_per_host_ms'] / b['provision_per_host_ms']:.1f}x; "
          f"AK create+boot ratio RSA/ECC: {c['ak_create_boot_median_ms'] / a['ak_create_boot_median_ms']:.1f}x")


if __name__ == "__main__":
    main()
