"""How long an agent waits before its next connection attempt: exponential back-off with
"decorrelated jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).

After an outage every host of a fleet fails at the same moment; with a fixed schedule
(0.2 s, 0.4 s, 0.8 s...) they would all come back in the same instant, again and again, and
the broker would see the whole fleet reconnect in lockstep. Each wait is drawn instead between
the base and three times the previous wait (capped), so the fleet spreads out within a few
attempts. The randomness is passed in, so tests and simulations replay the same schedule.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Backoff", "Uniform"]

Uniform = Callable[[float, float], float]
"""Draws a float between its two bounds (``random.Random().uniform`` has this shape)."""


@dataclass(frozen=True)
class Backoff:
    """Waits (seconds) between connection attempts: each uniform in
    ``[base_s, min(cap_s, 3 * previous)]``, starting from ``base_s``."""

    base_s: float = 0.2
    cap_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {self.base_s}, {self.cap_s}")

    def waits(self, uniform: Uniform | None = None) -> Iterator[float]:
        """The endless schedule, drawn with ``uniform`` (default: a fresh ``random.Random``,
        seeded by the OS, so two hosts never share a schedule)."""
        draw = uniform if uniform is not None else random.Random().uniform
        previous = self.base_s
        while True:
            previous = min(self.cap_s, draw(self.base_s, previous * 3))
            yield previous
