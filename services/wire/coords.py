"""``hostgate.Coordinates``: where a Kafka record lives (topic, partition, offset).

``services.runtime.stage.Coordinates`` is the runtime's value; here is its record form, for
anything with the three attributes (an input's coordinates, a record read back for audit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["Located", "coordinates_key", "coordinates_record"]


class Located(Protocol):
    """Anything that knows where a record lives."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


def coordinates_record(at: Located) -> dict[str, Any]:
    """The ``hostgate.Coordinates`` record of ``at``."""
    return {"topic": at.topic, "partition": at.partition, "offset": at.offset}


def coordinates_key(record: Mapping[str, Any]) -> tuple[str, int, int]:
    """``(topic, partition, offset)`` of a decoded ``hostgate.Coordinates`` record."""
    return (str(record["topic"]), int(record["partition"]), int(record["offset"]))
