"""Issue 18, item 6, for the credential receiver: while the credentials topic does not exist yet
and while the host's partition has nothing new, it waits by the agent's jittered back-off
(``services.agent.backoff``), drawn from randomness the caller passes in, instead of a fixed
0.5 s, so the schedule is replayed exactly here. The clock, the sleep and the consumer are
in-memory stand-ins; nothing needs Kafka."""

from __future__ import annotations

import asyncio
import inspect
import random
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any

import pytest

from services.agent.backoff import Backoff
from services.agent.credential_receiver import (
    poll_for_record,
    receive_credential,
    wait_for_partitions,
)

TP = ("attest.credentials.v1", 3)
KEY = b"web-1"


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def _draws(*values: float) -> Any:
    it = cycle(values)
    return lambda _low, _high: next(it)


def test_waits_for_the_topic_by_the_injected_schedule() -> None:
    clock = Clock()
    slept: list[float] = []
    answers = iter([[], [], [], [0, 1, 2]])

    async def lookup() -> list[int]:
        return next(answers)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    waits = Backoff().waits(_draws(0.31, 0.77, 1.9))
    parts = asyncio.run(wait_for_partitions(lookup, deadline=60.0, waits=waits, sleep=sleep,
                                            clock=clock))
    assert parts == [0, 1, 2]
    assert slept == [0.31, 0.77, 1.9]


def test_the_topic_wait_never_sleeps_past_the_deadline() -> None:
    clock = Clock()
    slept: list[float] = []

    async def lookup() -> list[int]:
        return []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    waits = Backoff(0.2, 5.0).waits(lambda _low, high: high)
    assert asyncio.run(wait_for_partitions(lookup, deadline=4.0, waits=waits, sleep=sleep,
                                           clock=clock)) == []
    assert slept == pytest.approx([0.6, 1.8, 1.6])  # the last one cut to the deadline


def test_two_hosts_seeded_differently_do_not_poll_in_lockstep() -> None:
    one = list(islice(Backoff().waits(random.Random(1).uniform), 5))
    two = list(islice(Backoff().waits(random.Random(2).uniform), 5))
    assert one != two


@dataclass
class Rec:
    offset: int
    key: bytes = KEY
    value: bytes | None = b"credential"
    topic: str = TP[0]
    partition: int = TP[1]


@dataclass
class FakeConsumer:
    """Answers each ``getmany`` with the next batch (idle ones take the whole timeout)."""

    clock: Clock
    batches: list[list[Rec]]
    asked_ms: list[int] = field(default_factory=list)
    at: int = 0

    async def getmany(self, *partitions: Any, timeout_ms: int = 0) -> dict[Any, list[Any]]:
        self.asked_ms.append(timeout_ms)
        batch = self.batches.pop(0) if self.batches else []
        if not batch:
            self.clock.now += timeout_ms / 1000
        else:
            self.at = batch[-1].offset + 1
        return {TP: batch}

    async def position(self, partition: Any) -> int:
        return self.at


def _poll(consumer: FakeConsumer, *, end: int, newest: bool, deadline: float = 60.0,
          draws: tuple[float, ...] = (0.25, 0.5, 1.25, 3.0)) -> Any:
    return asyncio.run(poll_for_record(
        consumer, TP, KEY, end, deadline=deadline, waits=Backoff().waits(_draws(*draws)),
        accept=lambda rec: {"offset": rec.offset}, newest=newest, clock=consumer.clock))


def test_idle_polls_wait_by_the_injected_schedule() -> None:
    consumer = FakeConsumer(Clock(), [[], [], [], [Rec(offset=7)]])
    found = _poll(consumer, end=5, newest=True)
    assert found == ({"offset": 7}, "attest.credentials.v1[3]@7")
    assert consumer.asked_ms == [250, 500, 1250, 3000]


def test_the_newest_already_on_the_topic_wins_and_other_hosts_are_skipped() -> None:
    consumer = FakeConsumer(Clock(), [[Rec(offset=0), Rec(offset=1, key=b"db-2"),
                                       Rec(offset=2), Rec(offset=3, value=None)]])
    assert _poll(consumer, end=4, newest=True) == ({"offset": 2}, "attest.credentials.v1[3]@2")


def test_a_silent_partition_gives_up_at_the_deadline_without_overshooting() -> None:
    consumer = FakeConsumer(Clock(), [])
    assert _poll(consumer, end=0, newest=False, deadline=2.0, draws=(0.75,)) is None
    assert consumer.asked_ms == [750, 750, 500]
    assert consumer.clock.now == pytest.approx(2.0)


def test_receive_credential_takes_the_agents_backoff_and_jitter() -> None:
    params = inspect.signature(receive_credential).parameters
    assert params["backoff"].default is None and params["jitter"].default is None
