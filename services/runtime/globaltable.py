"""Global tables: a whole compacted topic, held by every worker of a stage, read-only.

A stage's own state tables are partitioned with its inputs (task *p* restores changelog
partition *p*). Some state must be seen by every worker whatever partitions it owns — the
verifier's policies — so ``Stage.global_tables`` names such topics and the worker holds each
one in full through a :class:`GlobalTable`:

1. a consumer with **no group** (nothing is committed; every worker reads everything),
   ``isolation_level=read_committed`` (an aborted publication is never seen), assigned every
   partition of the topic;
2. :meth:`GlobalTable.start` seeks to the beginning and reads up to the end offsets it saw at
   start, so the worker begins processing only with the whole table loaded (fail closed: a
   missing topic is a ``ConfigError``; a table that cannot be read in time raises
   ``TimeoutError``, which the worker's connect loop retries with back-off);
3. then a background task keeps following the topic; each record is folded into the table
   with the spec's ``reduce`` (tombstones delete unless ``reduce`` says otherwise).

A value that does not decode as the table's subject is skipped with a warning, keeping the
key's previous value; the record stays in the topic for operators to inspect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from services.errors import ConfigError, HostgateError
from services.runtime.codec import Codec
from services.runtime.connection import client_kwargs
from services.runtime.logging import get_logger
from services.runtime.stage import GlobalTableSpec

LOAD_TIMEOUT_S = 120.0
FOLLOW_POLL_MS = 500
STOP_TIMEOUT_S = 10.0
METADATA_RETRIES = 20


class GlobalTable:
    """One global table: ``get(key)`` is the current (reduced) value of ``key``, or None."""

    def __init__(self, name: str, spec: GlobalTableSpec, *, bootstrap: str, codec: Codec,
                 client_id: str) -> None:
        self.name = name
        self.spec = spec
        self._bootstrap = bootstrap
        self._codec = codec
        self._client_id = client_id
        self._rows: dict[str, Mapping[str, Any]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._follower: asyncio.Task[None] | None = None
        self.loaded = False
        self.records_read = 0
        self.skipped = 0
        self.log = get_logger(global_table=name, topic=spec.topic)

    def get(self, key: str) -> Mapping[str, Any] | None:
        """The current value of ``key`` (None if absent or withdrawn)."""
        return self._rows.get(key)

    def __len__(self) -> int:
        return len(self._rows)

    async def start(self, timeout_s: float = LOAD_TIMEOUT_S) -> None:
        """Read the whole topic (up to its end now), then follow it in the background."""
        consumer = AIOKafkaConsumer(
            **client_kwargs(self._bootstrap), group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="earliest",
            client_id=self._client_id)
        await consumer.start()
        self._consumer = consumer
        try:
            await asyncio.wait_for(self._load(consumer), timeout_s)
        except TimeoutError as exc:  # the worker's connect loop retries on TimeoutError
            await self.stop()
            raise TimeoutError(f"global table {self.name}: could not read "
                               f"{self.spec.topic} within {timeout_s:.0f}s") from exc
        except BaseException:
            await self.stop()
            raise
        self.loaded = True
        self.log.info("global_table.loaded", keys=len(self._rows), records=self.records_read)
        self._follower = asyncio.create_task(self._follow(consumer))

    async def _load(self, consumer: AIOKafkaConsumer) -> None:
        count = await self._partition_count()
        tps = [TopicPartition(self.spec.topic, p) for p in range(count)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=FOLLOW_POLL_MS,
                                           max_records=5000)
            for tp, records in batch.items():
                for rec in records:
                    self._apply(tp, rec)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)

    async def _partition_count(self) -> int:
        """Partitions of the topic, from the broker (a just-created topic may take a moment to
        appear in metadata: retried for a few seconds before ``ConfigError``)."""
        admin = AIOKafkaAdminClient(**client_kwargs(self._bootstrap),
                                    client_id=f"{self._client_id}.admin")
        await admin.start()
        try:
            for _ in range(METADATA_RETRIES):
                (doc,) = await admin.describe_topics([self.spec.topic])
                if not doc.get("error_code") and doc.get("partitions"):
                    return len(doc["partitions"])
                await asyncio.sleep(0.25)
        finally:
            await admin.close()
        raise ConfigError(f"global table {self.name}: topic {self.spec.topic!r} does not exist "
                          "(run `hostgate topics ensure`)")

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=FOLLOW_POLL_MS, max_records=1000)
            except KafkaError as exc:
                self.log.warning("global_table.poll_failed", error=type(exc).__name__,
                                 detail=str(exc)[:300])
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for rec in records:
                    self._apply(tp, rec)

    def _apply(self, tp: TopicPartition, rec: ConsumerRecord[Any, Any]) -> None:
        where = f"{tp.topic}[{tp.partition}]@{rec.offset}"
        self.records_read += 1
        try:
            key = bytes(rec.key).decode("utf-8")
        except (TypeError, UnicodeDecodeError):
            self.skipped += 1
            self.log.warning("global_table.bad_key", at=where)
            return
        value: Mapping[str, Any] | None = None
        if rec.value is not None:
            try:
                value = self._codec.decode(rec.value, expected={self.spec.subject}).record
            except HostgateError as exc:
                self.skipped += 1
                self.log.warning("global_table.bad_value", at=where, key=key,
                                 error=type(exc).__name__, detail=str(exc)[:300])
                return
        kept = self.spec.reduce(self._rows.get(key), value)
        if kept is None:
            self._rows.pop(key, None)
        else:
            self._rows[key] = kept
        if self.loaded:
            self.log.info("global_table.updated", key=key, at=where, present=kept is not None)

    async def stop(self) -> None:
        """Stop following and close the consumer. Idempotent."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), STOP_TIMEOUT_S)


async def start_global_tables(specs: Mapping[str, GlobalTableSpec], *, bootstrap: str,
                              codec: Codec, client_prefix: str) -> dict[str, GlobalTable]:
    """Load every global table of a stage (all or none: on failure the started ones stop)."""
    tables: dict[str, GlobalTable] = {}
    t0 = time.monotonic()
    try:
        for name, spec in sorted(specs.items()):
            table = GlobalTable(name, spec, bootstrap=bootstrap, codec=codec,
                                client_id=f"{client_prefix}.global.{name}")
            await table.start()
            tables[name] = table
    except BaseException:
        for table in tables.values():
            await table.stop()
        raise
    if tables:
        get_logger().info("global_tables.ready", tables=sorted(tables),
                          seconds=round(time.monotonic() - t0, 3))
    return tables
