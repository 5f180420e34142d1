"""``hostgate run <stage>``: start one worker of a stage (until SIGTERM/SIGINT)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import TYPE_CHECKING

from services.runtime.config import WorkerConfig, add_arguments, load_config, overrides_from_args
from services.runtime.stage import Stage
from services.runtime.stages import STAGE_FACTORIES, build_stage

if TYPE_CHECKING:
    from services.runtime.codec import Codec


async def serve(config: WorkerConfig, stage: Stage | None = None,
                codec: Codec | None = None) -> int:
    """Run the worker with its HTTP endpoint; SIGTERM/SIGINT finish the current batch, leave
    the group, close cleanly and return 0. ``stage``: a stage built by the caller (a test
    stage, which the registry does not know); default the registered ``config.stage``.
    ``codec``: the caller's (one that also knows a test stage's records); default the schemas
    of ``config.schema_dir``."""
    from services.runtime.codec import Codec
    from services.runtime.logging import configure_logging, get_logger
    from services.runtime.metrics import HealthServer, WorkerMetrics
    from services.runtime.worker import Worker

    configure_logging(config.log_level)
    log = get_logger(stage=config.stage)
    if stage is None:
        stage = build_stage(config.stage, os.environ)
    codec = codec or Codec.load(config.schema_dir)
    metrics = WorkerMetrics(stage.name)
    worker = Worker(stage, config, codec, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http: HealthServer | None = None
    if config.http_port:
        http = HealthServer(metrics, worker.ready, lambda: worker.heartbeat,
                            stale_after_s=max(60.0, 3 * config.batch_max_ms / 1000))
        await http.start(config.http_host, config.http_port)
        log.info("http.listening", host=config.http_host, port=http.port)
    try:
        await worker.run(stop)
    finally:
        if http is not None:
            await http.stop()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.stage, overrides=overrides_from_args(args))
    return asyncio.run(serve(config))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hostgate run``."""
    p = sub.add_parser(
        "run", help="run one worker of a pipeline stage",
        description="Run one worker of a stage: consume its input topics, decide, and commit "
                    "outputs, state changelogs, DLQ records and input offsets in one Kafka "
                    "transaction per task and batch. Start more workers with the same group to "
                    "scale out (up to the partition count). SIGTERM commits the current batch "
                    "and exits 0. Every flag can also be set by the environment variable shown. "
                    "HOSTGATE_TOPIC_NAMESPACE (environment only, read by the stage and the "
                    "worker alike) puts the stage's topics, group and transactional ids in "
                    "<namespace>.<name>.",
    )
    p.add_argument("stage", choices=sorted(STAGE_FACTORIES), help="the stage to run")
    add_arguments(p)
    p.set_defaults(func=_cmd_run)
