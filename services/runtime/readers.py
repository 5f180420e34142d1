"""Read-side Kafka helpers for readers that join no consumer group: the CLI readers (issuer,
hosts, incidents, replay), the CRL service and the agent's credential receiver.

* ``jsonable``: a decoded Avro value as JSON-friendly data (what ``--json`` prints);
* ``topic_partitions``: the partition numbers of a topic;
* ``groupless_consumer``: a started read_committed consumer that joins no group and commits
  nothing, a connection failure turned into a one-line ``HostgateError`` of the caller's type;
* ``rewind`` + ``read_to_end``: read assigned partitions from their beginning up to the end
  offsets taken at the rewind, failing after a deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from services.errors import HostgateError
from services.runtime.connection import client_kwargs

#: Message of a connection failure; ``{bootstrap}``, ``{exc}`` and ``{exc_type}`` are filled in.
NO_BROKER = "no Kafka broker at {bootstrap}: {exc}"


class TopicUnavailable(HostgateError):
    """The broker cannot be reached, or the topic does not exist."""

    retriable = True


def jsonable(value: Any) -> Any:
    """A decoded Avro value as JSON-friendly data: bytes as hex, times as RFC 3339 UTC with
    milliseconds and ``Z``, mappings and lists converted element by element."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of ``topic``, sorted (empty if it does not exist)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap))
    try:
        await admin.start()
        (doc,) = await admin.describe_topics([topic])
    except KafkaError as exc:
        raise TopicUnavailable(f"cannot describe {topic} at {bootstrap}: {exc}") from None
    finally:
        await admin.close()
    return sorted(int(p["partition"]) for p in doc.get("partitions") or [])


@contextlib.asynccontextmanager
async def groupless_consumer(bootstrap: str, *topics: str,
                             error: type[HostgateError] = TopicUnavailable,
                             unreachable: str = NO_BROKER,
                             **options: Any) -> AsyncIterator[Any]:
    """A started ``AIOKafkaConsumer`` (subscribed to ``topics`` if any, else for the caller to
    assign) that joins no group, commits nothing and reads committed records only; stopped on
    exit. A connection failure raises ``error(unreachable.format(...))``. ``options`` are
    further consumer settings (``client_id``, ``auto_offset_reset``, ...)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(*topics, **client_kwargs(bootstrap), group_id=None,
                                isolation_level="read_committed", enable_auto_commit=False,
                                **options)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise error(unreachable.format(bootstrap=bootstrap, exc=exc,
                                       exc_type=type(exc).__name__)) from exc
    try:
        yield consumer
    finally:
        await consumer.stop()


async def rewind(consumer: Any, tps: list[Any]) -> dict[Any, int]:
    """Assign ``tps`` to ``consumer``, seek them to their beginning and return their end
    offsets now (what ``read_to_end`` reads up to)."""
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends: dict[Any, int] = await consumer.end_offsets(tps)
    return ends


async def read_to_end(consumer: Any, tps: list[Any], ends: Mapping[Any, int], *,
                      timeout_s: float, timed_out: Callable[[], HostgateError] | None
                      ) -> AsyncIterator[Any]:
    """Every record ``consumer`` fetches from ``tps`` (partition by partition in ``tps`` order
    within a fetch) until each position reaches its offset in ``ends``. A fetch may carry
    records at or past the end offset; they are yielded too (the caller decides). After
    ``timeout_s`` it raises ``timed_out()``, or with ``timed_out=None`` stops where it is."""
    deadline = time.monotonic() + timeout_s
    while True:
        positions = [await consumer.position(tp) for tp in tps]
        if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
            return
        if time.monotonic() > deadline:
            if timed_out is None:
                return
            raise timed_out()
        batch = await consumer.getmany(*tps, timeout_ms=500)
        for tp in tps:
            for rec in batch.get(tp, []):
                yield rec


__all__ = [
    "NO_BROKER",
    "TopicUnavailable",
    "groupless_consumer",
    "jsonable",
    "read_to_end",
    "rewind",
    "topic_partitions",
]
