"""``Worker._broker_step``: a transaction step that waits for the brokers says so, and gives up
after the transaction timeout (issue 16: with one node of three left, aiokafka retries in
silence and the worker looked merely idle; ``test_cluster.py`` shows it on a real cluster)."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from services.runtime import worker as worker_mod
from services.runtime.config import WorkerConfig
from services.runtime.worker import Task, TransactionStalled, Worker
from tests.support.eostest import build_stage, eostest_codec


def _worker(txn_timeout_ms: int) -> Worker:
    cfg = WorkerConfig(stage="eostest", txn_timeout_ms=txn_timeout_ms, batch_max_ms=100)
    return Worker(build_stage({}), cfg, eostest_codec())


def _gauge(w: Worker, partition: int) -> float:
    value = w.metrics.registry.get_sample_value(
        "hostgate_transaction_waiting_seconds", {"stage": "eostest", "partition": str(partition)})
    return float(value or 0.0)


async def test_waiting_step_is_logged_then_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_mod, "TXN_WAIT_WARN_S", 0.05)
    w = _worker(txn_timeout_ms=60_000)
    seen: list[float] = []

    async def slow() -> str:
        await asyncio.sleep(0.3)
        seen.append(_gauge(w, 2))
        return "committed"

    with structlog.testing.capture_logs() as logs:
        assert await w._broker_step(Task(2), "commit", slow()) == "committed"
    waiting = [e for e in logs if e["event"] == "transaction.waiting"]
    assert waiting and {e["step"] for e in waiting} == {"commit"}
    assert all(e["partition"] == 2 for e in waiting)
    assert seen and seen[0] > 0  # the gauge shows the wait while it lasts ...
    assert _gauge(w, 2) == 0  # ... and is cleared once the step is done


async def test_step_past_the_transaction_timeout_is_abandoned(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_mod, "TXN_WAIT_WARN_S", 0.05)
    w = _worker(txn_timeout_ms=300)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TransactionStalled, match="acks still waiting"):
        await w._broker_step(Task(0), "acks", forever())
    assert cancelled.is_set() and _gauge(w, 0) == 0


async def test_a_failing_step_raises_its_own_error() -> None:
    w = _worker(txn_timeout_ms=60_000)

    async def fails() -> None:
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        await w._broker_step(Task(1), "offsets", fails())
