"""Issue 18, item 6: the agent's reconnect waits are jittered (decorrelated jitter), drawn from
randomness the caller passes in, so the schedule is replayed exactly here."""

from __future__ import annotations

import asyncio
import random
from itertools import cycle, islice
from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.agent.backoff import Backoff
from services.agent.client import AgentClient, AgentTimeout, ClientConfig


def _first(backoff: Backoff, uniform: Any, n: int) -> list[float]:
    return list(islice(backoff.waits(uniform), n))


def test_each_wait_is_drawn_between_base_and_three_times_the_last() -> None:
    asked: list[tuple[float, float]] = []

    def upper(low: float, high: float) -> float:
        asked.append((low, high))
        return high

    assert _first(Backoff(0.2, 5.0), upper, 5) == pytest.approx([0.6, 1.8, 5.0, 5.0, 5.0])
    assert [low for low, _ in asked[:3]] == [0.2, 0.2, 0.2]
    assert [high for _, high in asked[:3]] == pytest.approx([0.6, 1.8, 5.4])
    assert _first(Backoff(0.2, 5.0), lambda low, _high: low, 3) == [0.2, 0.2, 0.2]


def test_a_seed_replays_the_same_schedule() -> None:
    one = _first(Backoff(), random.Random(42).uniform, 8)
    assert one == _first(Backoff(), random.Random(42).uniform, 8)
    assert all(0.2 <= w <= 5.0 for w in one)


def test_a_fleet_does_not_reconnect_in_lockstep() -> None:
    firsts = [_first(Backoff(), random.Random(host).uniform, 4) for host in range(200)]
    third_attempt = sorted(round(sum(ws[:3]), 3) for ws in firsts)
    # 200 hosts that failed together: no instant holds more than a couple of them
    assert max(third_attempt.count(t) for t in third_attempt) <= 2
    assert third_attempt[-1] - third_attempt[0] > 2.0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="base_s <= cap_s"):
        Backoff(2.0, 1.0)


def test_client_start_waits_by_the_injected_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a refused port the client retries with the waits it is given, then gives up."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("services.agent.client.asyncio.sleep", fake_sleep)
    draws = cycle([0.01, 0.02, 0.03, 0.04])
    config = ClientConfig("127.0.0.1:1", connect_timeout_s=0.3,
                          jitter=lambda _low, _high: next(draws))
    client = AgentClient(cast(Any, SimpleNamespace(host_id="web-1")), config)
    with pytest.raises(AgentTimeout, match=r"127\.0\.0\.1:1 unreachable"):
        asyncio.run(client.start())
    assert slept[:4] == [0.01, 0.02, 0.03, 0.04]
