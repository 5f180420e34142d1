"""Prometheus metrics and the /healthz /readyz /metrics HTTP endpoint of one worker.

Each worker has its own ``CollectorRegistry`` (no global state, so tests can run several workers
in one process). The HTTP server is :class:`services.runtime.http.TinyHttpServer` (GET only,
bounded requests, one response per connection).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.runtime.http import TinyHttpServer


class WorkerMetrics:
    """The metrics every stage exports (label ``stage`` on all of them)."""

    def __init__(self, stage: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage = stage
        self.records_in = Counter("hostgate_records_in", "Input records processed (committed)",
                                  ["stage"], registry=r)
        self.records_out = Counter("hostgate_records_out", "Output records committed",
                                   ["stage"], registry=r)
        self.dlq = Counter("hostgate_dlq_records", "Records sent to the DLQ (committed)",
                           ["stage", "reason"], registry=r)
        self.decisions = Counter(
            "hostgate_decisions", "Committed decisions by what the stage decided (e.g. the "
            "collector's rejections by reason, the verifier's verdicts)",
            ["stage", "outcome", "reason"], registry=r)
        self.errors = Counter("hostgate_errors", "Transactions that failed and were retried",
                              ["stage", "kind"], registry=r)
        self.internal_errors = Counter(
            "hostgate_internal_errors", "Records whose decision raised a bug (dead-lettered, "
            "never blamed on the host: services.runtime.faults)", ["stage", "error"], registry=r)
        self.batch_latency = Histogram(
            "hostgate_batch_seconds", "Time to plan and commit one transaction", ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r)
        self.lag = Gauge("hostgate_consumer_lag", "Records between position and the last stable "
                         "offset", ["stage", "topic", "partition"], registry=r)
        self.tasks = Gauge("hostgate_tasks", "Tasks (input partitions) this worker runs",
                           ["stage"], registry=r)
        self.txn_waiting = Gauge(
            "hostgate_transaction_waiting_seconds", "How long a task's open transaction has "
            "been waiting for the brokers (acks, offsets, commit; 0 once it is done)",
            ["stage", "partition"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


MAX_LABEL_CHARS: Final = 64


def decision_labels(result: str, facts: Mapping[str, str | int | bool]) -> tuple[str, str]:
    """(outcome, reason) labels of one committed decision.

    Stages name what they decided in their decision's log facts: ``outcome`` (the collector's
    ``enrolled``, ``nonce-issued``, ``rejected``) or ``verdict`` (PASS/FAIL), and ``reason`` (a
    rejection reason enum). Only these few, enum-valued facts become labels, cut to a bound, so
    a hostile record cannot grow the metric's label set.
    """
    outcome = str(facts.get("outcome") or facts.get("verdict") or result)[:MAX_LABEL_CHARS]
    reason = str(facts.get("reason", ""))[:MAX_LABEL_CHARS]
    return outcome, reason


class HealthServer:
    """Serves ``/healthz`` (the loop is alive), ``/readyz`` (the worker is processing) and
    ``/metrics``. ``port=0`` in the config means no server; here port 0 asks the OS for one."""

    def __init__(self, metrics: WorkerMetrics, ready: Callable[[], bool],
                 heartbeat: Callable[[], float], *, stale_after_s: float = 60.0) -> None:
        self._metrics = metrics
        self._ready = ready
        self._heartbeat = heartbeat
        self._stale_after_s = stale_after_s
        self._http = TinyHttpServer(self._route)

    @property
    def port(self) -> int:
        return self._http.port

    async def start(self, host: str, port: int) -> None:
        await self._http.start(host, port)

    async def stop(self) -> None:
        await self._http.stop()

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            alive = time.monotonic() - self._heartbeat() < self._stale_after_s
            return (200, "text/plain", b"ok\n") if alive else (503, "text/plain", b"stale\n")
        if path == "/readyz":
            return (200, "text/plain", b"ready\n") if self._ready() else (
                503, "text/plain", b"not ready\n")
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._metrics.render()
        return 404, "text/plain", b"not found\n"
