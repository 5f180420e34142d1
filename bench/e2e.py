"""End-to-end benchmark: evidence published -> verifier -> issuer/incidents -> credential or
quarantine, on the local broker, with the stages as separate processes beside it; plus the
audit-replay rate and the verifier-core rate on the same records in the same run.

Run: .venv/bin/python bench/e2e.py [--evidences 5000] [--hosts 26]

Replay is measured as ``hostgate replay`` runs it: reading its topics (collected, verdicts,
policies and their history), then re-appraising in one process and in one process per CPU
(``--jobs``), each against the verifier-core rate.

Evidence: prepared once, before timing — real swtpm quotes (``tests.unit.verifier_support``:
one swtpm per host, golden-image boots, 2 of the hosts tampered: secure_boot_off, forged_log),
every host quoting repeatedly over fresh nonces, wrapped as ``EvidenceCollected`` records and
fed straight to the verifier's input topic (intake is left out: it would measure the agents'
TPM round trips, not the pipeline). Everything runs in its own topic namespace.

Latency of one evidence: from its record timestamp on ``attest.collected.v1`` (producer
CreateTime) to the first issuer output naming its verdict: the ``CredentialIssued`` (PASS) or
the ``HostState`` (QUARANTINED). Throughput: evidences / (last output - first publish).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer

from services.demo.orchestrator import StageProcess, create_issuing_ca
from services.runtime.codec import Codec
from services.runtime.connection import client_kwargs
from services.runtime.topics import TopicLayout, Topics, ensure_topics
from services.verifier.cli_audit_replay import ReadSpec, read_recorded, read_topic, run_replay
from services.verifier.core import appraise
from services.verifier.publish import publish
from tests.unit.verifier_support import collected_for, sim_fleet


def prepare(workdir: Path, n: int, hosts: int) -> tuple[list[dict[str, Any]], Any]:
    """``n`` EvidenceCollected records from ``hosts`` swtpm hosts, and the fleet's policy."""
    from concurrent.futures import ThreadPoolExecutor

    clean_per_image = max(1, (hosts - 2) // 3)
    with sim_fleet(workdir, tampered=("secure_boot_off", "forged_log"),
                   clean_per_image=clean_per_image) as sim:
        fleet = list(sim.fleet)
        rounds = -(-n // len(fleet))

        def quotes(i_h: tuple[int, Any]) -> list[dict[str, Any]]:
            i, h = i_h
            return [collected_for(h, round_no=r, offset=r * 1000 + i) for r in range(rounds)]

        with ThreadPoolExecutor(2) as pool:
            per_host = list(pool.map(quotes, enumerate(fleet)))
        records = [per_host[i][r] for r in range(rounds) for i in range(len(fleet))][:n]
        return records, sim


async def produce(bootstrap: str, topic: str, records: list[dict[str, Any]], codec: Codec
                  ) -> None:
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), enable_idempotence=True,
                                linger_ms=5, max_request_size=8 << 20)
    await producer.start()
    try:
        futs = [await producer.send(topic, codec.encode("hostgate.EvidenceCollected", r),
                                    key=r["evidence"]["host_id"].encode()) for r in records]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def wait_outputs(bootstrap: str, topics: Topics, codec: Codec, n: int, timeout_s: float,
                       stages: list[StageProcess]) -> dict[str, int]:
    """verdict_id -> end timestamp (ms), once every verdict has an issuer output."""
    deadline = time.monotonic() + timeout_s
    while True:
        await asyncio.sleep(3)
        for s in stages:
            if not s.alive():
                raise SystemExit(f"stage {s.stage} died:\n{s.log_tail()}")
        creds, hosts = await asyncio.gather(
            read_topic(bootstrap, ReadSpec(topics.credentials,
                                           "hostgate.CredentialIssued"), codec),
            read_topic(bootstrap, ReadSpec(topics.hosts, "hostgate.HostState"),
                       codec))
        ends: dict[str, int] = {}
        for loc in [*creds, *hosts]:
            vid = loc.record.get("verdict_id")
            if vid:
                ends[vid] = min(ends.get(vid, loc.timestamp_ms), loc.timestamp_ms)
        print(f"  … {len(ends)}/{n} evidences have an issuer output", file=sys.stderr)
        if len(ends) >= n or time.monotonic() > deadline:
            return ends


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--evidences", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=26)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    bootstrap = os.environ.get("HOSTGATE_BOOTSTRAP", "127.0.0.1:19092")
    codec = Codec.load()
    ns = f"bench{uuid.uuid4().hex[:8]}"
    topics = Topics(ns)
    with tempfile.TemporaryDirectory(prefix="hostgate-e2e-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        records, sim = prepare(work / "fleet", args.evidences, args.hosts)
        print(f"prepared {len(records)} evidences in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
        # verifier-core rate on the same records, one core, in process
        sample = records[: min(len(records), 1000)]
        c0 = time.perf_counter()
        results = [appraise(r, sim.policy) for r in sample]
        core_rate = len(sample) / (time.perf_counter() - c0)
        passed = sum(v.passed for v in results)
        asyncio.run(ensure_topics(bootstrap, specs=topics.all_specs(), layout=TopicLayout(6)))
        policy_id = "bench-policy"
        text = sim.policy_text.replace('id: "fleet-baseline"', f'id: "{policy_id}"')
        asyncio.run(publish(text, bootstrap=bootstrap, version=1, author="bench",
                            topics=topics, first_only=True))
        ca = create_issuing_ca(work / "ca", __import__("datetime").datetime.now(
            __import__("datetime").UTC))
        base = {k: v for k, v in os.environ.items() if not k.startswith("HOSTGATE_")}
        base.update({"HOSTGATE_BOOTSTRAP": bootstrap, "HOSTGATE_BATCH_MAX_MS": "200",
                     "HOSTGATE_TOPIC_NAMESPACE": ns,
                     "HOSTGATE_HOME": os.environ.get("HOSTGATE_HOME", tmp)})
        envs = {
            "verifier": {"HOSTGATE_POLICY_ID": policy_id},
            "issuer": {"HOSTGATE_ISSUER_CA_KEY": str(ca["key"]),
                       "HOSTGATE_ISSUER_CA_CERT": str(ca["cert"]),
                       "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE": str(ca["passphrase_file"])},
            "incidents": {},
        }
        stages = [StageProcess(name, {**base, **env}, work / f"{name}.log")
                  for name, env in envs.items()]
        for s in stages:
            s.start()
        try:
            while not all(s.ready() for s in stages):
                time.sleep(0.5)
            p0 = time.time()
            asyncio.run(produce(bootstrap, topics.collected, records, codec))
            publish_s = time.time() - p0
            ends = asyncio.run(wait_outputs(bootstrap, topics, codec, len(records),
                                            args.timeout, stages))
        finally:
            for s in stages:
                s.stop()
        rec = asyncio.run(read_recorded(bootstrap, namespace=ns))
        starts = {}
        for loc in rec.verdicts:
            starts[loc.record["verdict_id"]] = loc.record["collected"]
        collected_ts = {(c.partition, c.offset): c.timestamp_ms for c in rec.collected}
        lat = sorted(ends[v] - collected_ts[(int(c["partition"]), int(c["offset"]))]
                     for v, c in starts.items() if v in ends)
        first = min(collected_ts.values())
        e2e_rate = len(lat) / max(1e-3, (max(ends.values()) - first) / 1000)
        r0 = time.perf_counter()
        rec2 = asyncio.run(read_recorded(bootstrap, namespace=ns))
        read_s = time.perf_counter() - r0
        replays = {}
        for jobs in sorted({1, os.cpu_count() or 1}):  # `hostgate replay --jobs N`
            j0 = time.perf_counter()
            report = run_replay(rec2, policy_text=None, time_filtered=False, jobs=jobs)
            replays[jobs] = (len(rec2.verdicts) / (read_s + time.perf_counter() - j0),
                             len(report.findings) if hasattr(report, "findings") else "-")
        sim.fleet.stop()
    q = statistics.quantiles(lat, n=100) if len(lat) > 2 else [0] * 99
    print(f"machine: {platform.machine()} {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"evidences: {len(records)} ({passed}/{len(sample)} of the core sample pass); "
          f"published in {publish_s:.1f}s; with an issuer output: {len(lat)}")
    print(f"verifier core (1 process): {core_rate:.1f} evidences/s")
    print(f"end to end: {e2e_rate:.1f} attestations/s ({e2e_rate / core_rate:.0%} of core); "
          f"latency p50 {q[49] / 1000:.2f}s p99 {q[98] / 1000:.2f}s")
    for jobs, (rate, found) in replays.items():
        print(f"replay (read {read_s:.1f}s + re-appraise in {jobs} process(es)): {rate:.1f} "
              f"verdicts/s ({rate / core_rate:.0%} of core), findings {found}")
    print(f"topics namespace {ns} (left on the broker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
