"""Records/s through the ``eostest`` stage, with and without transactions, in one run.

For each batch size (records per poll = most records per transaction) and each mode, fresh
topics are created, N inputs are produced, and one in-process ``Worker`` consumes them; the
figure is inputs / (time from the worker's first committed batch to its last). The baseline
("at-least-once": idempotent producer, offsets committed after the acks) runs the same planner,
codec and state changelog writes, so the ratio isolates the cost of transactions.

    .venv/bin/python bench/runtime.py [--records 20000] [--batches 1,10,100,1000]
                                      [--log-level warning]

Needs the local broker (``hostgate kafka up``). Deletes its topics afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.runtime.codec import Codec
from services.runtime.config import WorkerConfig
from services.runtime.logging import configure_logging
from services.runtime.worker import Worker
from tests.integration.runtime_support import (
    bootstrap,
    create_topics,
    delete_topics,
    make_inputs,
    produce_inputs,
)
from tests.support.eostest import EostestTopics, build_stage, eostest_codec


async def one_run(batch: int, exactly_once: bool, n: int, codec: Codec) -> float:
    first_count = 0
    label = f"bench-{batch}-{'eos' if exactly_once else 'alo'}-{uuid.uuid4().hex[:6]}"
    topics = EostestTopics(f"eostest.{label}")
    stage = build_stage({"HOSTGATE_TOPIC_NAMESPACE": topics.namespace})
    await create_topics(topics)
    try:
        await produce_inputs(topics.input, make_inputs(n, 500, seed=batch))
        # The at-least-once baseline is a keyword of the config only (no flag, no env var).
        cfg = WorkerConfig(stage="eostest", bootstrap=bootstrap(), namespace=topics.namespace,
                           group="g", batch_max_records=batch, exactly_once=exactly_once)
        worker = Worker(stage, cfg, codec)
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        counter = worker.metrics.records_in.labels("eostest")
        t_first = None
        deadline = time.monotonic() + 600
        while counter._value.get() < n:
            if run.done():
                run.result()
            if t_first is None and counter._value.get() > 0:
                t_first = time.monotonic()
                first_count = counter._value.get()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: only {counter._value.get()} of {n} in 600 s")
            await asyncio.sleep(0.005)
        t_end = time.monotonic()
        stop.set()
        await run
        assert t_first is not None
        return (n - first_count) / max(t_end - t_first, 1e-6)
    finally:
        await delete_topics(topics)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--batches", default="1,10,100,1000")
    ap.add_argument("--log-level", default="info",
                    help="worker log level; logs are rendered and written to /dev/null")
    args = ap.parse_args()
    with open(os.devnull, "w") as sink:
        configure_logging(args.log_level, stream=sink)
        await run_all(args)


async def run_all(args: argparse.Namespace) -> None:
    codec = eostest_codec()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, logs={args.log_level}")
    print(f"{'batch':>6} {'records':>8} {'at-least-once/s':>16} {'exactly-once/s':>15} "
          f"{'eos cost':>9}")
    for batch in (int(b) for b in args.batches.split(",")):
        n = min(args.records, max(500, batch * 200))
        alo = await one_run(batch, False, n, codec)
        eos = await one_run(batch, True, n, codec)
        print(f"{batch:>6} {n:>8} {alo:>16.0f} {eos:>15.0f} {1 - eos / alo:>8.0%}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
