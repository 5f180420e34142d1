"""Timestamps on the wire: ``timestamp-millis`` fields as milliseconds since the epoch.

fastavro decodes a ``timestamp-millis`` field to an aware ``datetime``; records built in code
(and tests) carry the int. :func:`epoch_ms` reads both, in exact integer arithmetic.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Final

__all__ = ["EPOCH", "epoch_ms", "now_ms", "to_datetime"]

EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS: Final = dt.timedelta(milliseconds=1)


def epoch_ms(value: object) -> int:
    """Milliseconds since the epoch of a decoded ``timestamp-millis`` value.

    An int is returned as is; a ``datetime`` (a naive one is read as UTC) is floored to its
    millisecond. Anything else, a bool included, raises ``TypeError`` (a stage bug, not input).
    """
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return (stamp - EPOCH) // _MS
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"not a timestamp: {type(value).__name__}")


def to_datetime(ms: int) -> dt.datetime:
    """An aware UTC datetime for ``ms`` (what certificate validity is checked at)."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def now_ms() -> int:
    """The wall clock in ms since the epoch: for the agent and the CLIs, never for a core."""
    return int(time.time() * 1000)
