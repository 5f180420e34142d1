"""The worker shell: Kafka consume → ``decide`` → produce, exactly once. The only aiokafka user.

Zombie safety (aiokafka issue 844). aiokafka speaks only the v0 transaction APIs, so
``send_offsets_to_transaction`` carries no consumer-group generation (no KIP-447 fencing): a
worker that was evicted from the group (a long GC or a blocked loop — it never saw the
revocation) could still commit outputs and offsets for partitions that now belong to someone
else. Draining or aborting in ``on_partitions_revoked`` cannot help there, because such a zombie
never runs its revoke callback. So we use the EOS-v1 scheme Kafka Streams used before KIP-447:
**one transactional producer per task**, ``transactional.id = <group>.task-<p>``, created when
task *p* is assigned and closed when it is revoked. Whoever takes over task *p* calls
InitProducerId with the same id: the coordinator bumps the epoch, aborts any transaction the old
owner left open, and from then on every call of the old producer fails with ``ProducerFenced``.

Tasks and co-partitioning. Task *p* owns partition *p* of every input topic and of every state
changelog (the Range assignor with equal partition counts gives every member the same partition
numbers of every topic; the worker checks the counts at start). A task writes its state only to
changelog partition *p*, so the state a task needs is exactly its own changelog partitions, and
only one transactional id ever writes each of them. On assignment the task restores only those
partitions (read_committed, up to the last stable offset), then seeks its inputs to the committed
offsets — after InitProducerId, so nothing of a previous owner is still pending.

Global tables (``Stage.global_tables``, ``services.runtime.globaltable``): read in full on
connect, before the worker subscribes, and followed from then on; ``decide`` sees them through
the same ``StateView`` as its own tables. They are read-only and not part of any transaction.

The commit path of one transaction (``_transact``), in order:

1. ``begin_transaction`` on the task's producer;
2. plan records in chunks (``plan.plan_batch``: decode, decide, encode; DLQ what fails) and
   ``send`` each chunk's outputs, changelog writes and DLQ records; stop taking records once the
   transaction has been open ``batch_max_ms`` (the rest go in the next transaction);
3. wait for every send to be acknowledged;
4. ``send_offsets_to_transaction`` with the next offset of every input partition, one call per
   transaction (batched: aiokafka bug #1098 hits offsets committed one by one);
5. ``commit_transaction``;
6. only then fold the batch's state updates into the in-memory tables, count metrics and log
   one ``decision`` event per input record.

Planning (step 2's decode, decide, encode) runs off the event loop, in the worker's one planner
thread, so a record that takes long to decide (a large boot log, a slow policy) never stops the
consumer's heartbeats or the global tables' followers: the group does not evict a worker for
being busy. One thread, so stage cores and their caches are never run concurrently. The stages
bound their own work per record (the verifier's appraisal budget); past
``max.poll.interval.ms`` aiokafka leaves the group anyway, the backstop for a decide that never
returns.

A record aiokafka cannot hand out (``UNREADABLE_RECORD_ERRORS``: a header name that is not
UTF-8, which the broker stores) makes ``getmany`` raise and lose the records it drained. The
worker then rewinds every ready task, reads each of its input partitions on its own up to where
it ended, decides what precedes the record as usual, and dead-letters the record by its
coordinates in a transaction that also commits the offset past it (``_unreadable_fetch``).

On any failure in steps 1 to 5 the task is reset: its producer is dropped (the next InitProducerId with the
same id aborts whatever it left open — no need to trust an ``abort`` on a broken connection), a
new producer is started, the state is restored from the changelog and the inputs are rewound to
the committed offsets (aiokafka does not rewind after an abort). A reset that fails (broker down)
is retried with back-off while the task's partitions are paused. ``ProducerFenced`` means another
worker owns the task: back off for two session timeouts, by when the group has moved on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced
from prometheus_client import Counter

from services.errors import ConfigError, HostgateError
from services.runtime.codec import Codec
from services.runtime.config import WorkerConfig
from services.runtime.connection import client_kwargs
from services.runtime.dlq import REASON_UNREADABLE
from services.runtime.faults import Fault
from services.runtime.globaltable import GlobalTable, start_global_tables
from services.runtime.logging import get_logger
from services.runtime.metrics import WorkerMetrics, decision_labels
from services.runtime.plan import BatchPlan, RawRecord, plan_batch, unreadable_dlq_record
from services.runtime.record_size import (
    CONSUMER_PARTITION_FETCH_BYTES,
    PRODUCER_COMPRESSION,
    PRODUCER_MAX_REQUEST_BYTES,
)
from services.runtime.stage import Coordinates, OverlayState, Stage, merge_pending

PLAN_CHUNK = 64
"""Records planned between two checks of the transaction's age."""
RESTORE_TIMEOUT_S = 120.0
PRODUCER_BATCH_BYTES = 256 * 1024
"""Producer batch size per partition (aiokafka's 16 KiB default means many small requests)."""
LARGE_RECORD_PRODUCER: dict[str, Any] = {"max_request_size": PRODUCER_MAX_REQUEST_BYTES,
                                         "compression_type": PRODUCER_COMPRESSION}
"""What every stage producer sets so the collector can forward an agent's largest evidence
(``services.runtime.record_size``), compressed."""
STOP_TIMEOUT_S = 10.0
MAX_BACKOFF_S = 10.0
TXN_WAIT_WARN_S: Final = 5.0
"""A transaction step (acks, offsets, commit) still waiting for the brokers after this long is
logged (``transaction.waiting``, again every as long) and shown in
``hostgate_transaction_waiting_seconds``: on a cluster without enough in-sync replicas or without
a controller quorum the producer retries silently, and the worker would look idle."""

Tables = dict[str, dict[str, Mapping[str, Any]]]


class StateRestoreError(HostgateError):
    """A changelog record could not be read back (fail closed: the task does not start)."""

    retriable = True


UNREADABLE_RECORD_ERRORS: tuple[type[Exception], ...] = (UnicodeDecodeError,)
"""What ``getmany`` raises for a record aiokafka cannot hand out: it decodes header names as
strict UTF-8 (C extension and Python alike) while the broker stores any bytes there. Not a
``KafkaError``; without handling it would leave ``Worker.run`` on every worker that takes the
partition."""
_UNREADABLE_PROBES: Final = 64
"""Offsets tried past an unreadable record's fetch position (transaction markers between)."""
_DRAIN_IDLE_POLLS: Final = 20
"""Empty polls after which a drain stops short of its end offset (the rest is read as usual)."""


class TransactionStalled(HostgateError):
    """A transaction step waited longer than the transaction timeout (the broker aborts such a
    transaction anyway): the task is reset like after any other failed transaction."""

    retriable = True


class UnreadableInput(HostgateError):
    """An unreadable record whose offset could not be found (retried as a failed transaction)."""

    retriable = True


TRANSACTION_ERRORS: tuple[type[BaseException], ...] = (
    KafkaError, HostgateError, OSError, TimeoutError,
    # Not a KafkaError: aiokafka raises it when a transaction was ended under a send (a fenced
    # or reset producer); the task is reset like after any other failed transaction.
    IllegalOperation,
)

@dataclass
class Task:
    """Task ``partition``: its producer, its committed state, its offsets."""

    partition: int
    producer: AIOKafkaProducer | None = None
    tables: Tables = field(default_factory=dict)
    ready: bool = False
    failures: int = 0
    retry_at: float = 0.0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


class Worker(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs one stage until ``stop`` is set. See the module docstring for the guarantees."""

    def __init__(self, stage: Stage, config: WorkerConfig, codec: Codec,
                 metrics: WorkerMetrics | None = None) -> None:
        self.stage = stage
        self.config = config
        self.codec = codec
        self.metrics = metrics or WorkerMetrics(stage.name)
        self.log = get_logger(stage=stage.name, group=config.group_id)
        self.tasks: dict[int, Task] = {}
        self.heartbeat = time.monotonic()
        self.started = False
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self._plain_producer: AIOKafkaProducer | None = None
        self.global_tables: dict[str, GlobalTable] = {}
        """The stage's global tables (``Stage.global_tables``), loaded before any processing."""
        self.partition_counts: dict[str, int] = {}
        """Partitions of each input topic (read at connect): gives every input its
        ``key_partition``, so a record written where its key does not belong is caught."""
        self._misrouted = Counter(
            "hostgate_misrouted_records", "Inputs on a partition other than their key's",
            ["stage", "topic"], registry=self.metrics.registry)
        self._planner: ThreadPoolExecutor | None = None
        """The one thread that plans (decodes, decides, encodes); see the module docstring."""

    # -- readiness --------------------------------------------------------------------------

    def ready(self) -> bool:
        """Joined and every assigned task restored and running."""
        return self.started and all(t.ready for t in self.tasks.values())

    # -- life cycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, decide and commit until ``stop`` is set; then commit nothing half-done,
        leave the group and close every producer. An unreachable broker at start is waited
        for (with back-off), not fatal."""
        try:
            backoff = 0.5
            while not stop.is_set():
                try:
                    await self._connect()
                    break
                except (KafkaError, OSError, TimeoutError) as exc:
                    await self._disconnect()
                    self.log.warning("broker.unavailable", error=type(exc).__name__,
                                     detail=str(exc)[:300], retry_in_s=backoff)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(MAX_BACKOFF_S, backoff * 2)
            if stop.is_set():
                return
            assert self._consumer is not None
            self._consumer.subscribe(list(self.stage.input_topics), listener=self)
            self.started = True
            self.log.info("worker.started", inputs=list(self.stage.input_topics),
                          exactly_once=self.config.exactly_once)
            while not stop.is_set():
                await self._poll_once()
        finally:
            await self._shutdown()

    async def _connect(self) -> None:
        cfg = self.config
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(cfg.bootstrap),
            group_id=cfg.group_id,
            group_instance_id=cfg.instance_id,
            client_id=f"{cfg.group_id}.consumer",
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=cfg.batch_max_records,
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=max(300, cfg.session_timeout_ms // 4),
            rebalance_timeout_ms=max(cfg.session_timeout_ms, 3 * cfg.batch_max_ms + 10_000),
            max_partition_fetch_bytes=CONSUMER_PARTITION_FETCH_BYTES,
        )
        self._restorer = AIOKafkaConsumer(
            **client_kwargs(cfg.bootstrap), group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", client_id=f"{cfg.group_id}.restore",
        )
        await self._consumer.start()
        await self._restorer.start()
        if not cfg.exactly_once:
            self._plain_producer = AIOKafkaProducer(
                **client_kwargs(cfg.bootstrap), enable_idempotence=True, acks="all",
                client_id=f"{cfg.group_id}.producer", linger_ms=5,
                max_batch_size=PRODUCER_BATCH_BYTES, **LARGE_RECORD_PRODUCER)
            await self._plain_producer.start()
        await self._check_copartitioned()
        if self.stage.global_tables:  # whole tables read before the first record is decided
            self.global_tables = await start_global_tables(
                self.stage.global_tables, bootstrap=cfg.bootstrap, codec=self.codec,
                client_prefix=cfg.group_id)

    async def _disconnect(self) -> None:
        tables, self.global_tables = self.global_tables, {}
        for table in tables.values():
            await table.stop()
        for client in (self._consumer, self._restorer, self._plain_producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), STOP_TIMEOUT_S)
        self._consumer = self._restorer = self._plain_producer = None

    async def _plan(self, task: Task, chunk: Sequence[RawRecord],
                    overlay: OverlayState) -> BatchPlan:
        """``plan_batch`` of ``chunk`` in the planner thread (the event loop keeps running)."""
        if self._planner is None:
            self._planner = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"hostgate-{self.stage.name}-plan")
        job = functools.partial(plan_batch, self.stage, self.codec, chunk, overlay,
                                group=self.config.group_id, task_partition=task.partition,
                                partition_counts=dict(self.partition_counts))
        return await asyncio.get_running_loop().run_in_executor(self._planner, job)

    async def _shutdown(self) -> None:
        self.started = False
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), STOP_TIMEOUT_S)
        async with self._lock:
            for task in list(self.tasks.values()):
                await self._close_producer(task)
            self.tasks.clear()
        await self._disconnect()
        planner, self._planner = self._planner, None
        if planner is not None:  # nothing is planned after the tasks are gone
            planner.shutdown(wait=False, cancel_futures=True)
        self.log.info("worker.stopped")

    async def _check_copartitioned(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        topics = [*self.stage.input_topics, *self.stage.changelogs.values()]
        admin = AIOKafkaAdminClient(**client_kwargs(self.config.bootstrap),
                                    client_id=f"{self.config.group_id}.admin")
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        counts: dict[str, int] = {}
        for doc in described:
            if doc.get("error_code") or not doc.get("partitions"):
                raise ConfigError(f"stage {self.stage.name}: topic {doc.get('topic')!r} does "
                                  "not exist (run `hostgate topics ensure`)")
            counts[str(doc["topic"])] = len(doc["partitions"])
        self.partition_counts = {t: counts[t] for t in self.stage.input_topics}
        if len(set(counts.values())) > 1:
            raise ConfigError(
                f"stage {self.stage.name}: inputs and state changelogs must be co-partitioned "
                f"(same partition count), found {counts}")

    # -- rebalance listener (aiokafka awaits these before it rejoins / returns records) ----

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight to commit
            for p in sorted({tp.partition for tp in revoked}):
                task = self.tasks.pop(p, None)
                if task is not None:
                    await self._close_producer(task)
                self._forget_partition_metrics(p)
            self.metrics.tasks.labels(self.stage.name).set(len(self.tasks))
            self.log.info("tasks.revoked", partitions=sorted({tp.partition for tp in revoked}))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self._lock:
            parts = sorted({tp.partition for tp in assigned})
            for p in parts:
                self.tasks.setdefault(p, Task(p))
            self.metrics.tasks.labels(self.stage.name).set(len(self.tasks))
            await self._init_tasks([self.tasks[p] for p in parts])
            self.log.info("tasks.assigned", partitions=parts,
                          ready=[p for p in parts if self.tasks[p].ready])

    # -- task initialisation ----------------------------------------------------------------

    def _input_tps(self, partition: int) -> list[TopicPartition]:
        return [TopicPartition(t, partition) for t in self.stage.input_topics]

    async def _init_tasks(self, tasks: Sequence[Task]) -> None:
        """Producer (fences the previous owner), state, input positions. Caller holds the lock."""
        if not tasks:
            return
        assert self._consumer is not None
        try:
            if self.config.exactly_once:
                await asyncio.gather(*(self._new_producer(t) for t in tasks))
            restored = await self._restore([t.partition for t in tasks])
            for task in tasks:
                task.tables = restored[task.partition]
                await self._rewind(task)
                task.ready, task.failures = True, 0
                self._consumer.resume(*self._input_tps(task.partition))
        except TRANSACTION_ERRORS as exc:
            for task in tasks:
                if not task.ready:
                    self._mark_broken(task, exc)

    async def _new_producer(self, task: Task) -> None:
        await self._close_producer(task)
        cfg = self.config
        producer = AIOKafkaProducer(
            **client_kwargs(cfg.bootstrap),
            transactional_id=cfg.transactional_id(task.partition),
            transaction_timeout_ms=cfg.txn_timeout_ms,
            client_id=f"{cfg.transactional_id(task.partition)}",
            linger_ms=5,
            max_batch_size=PRODUCER_BATCH_BYTES,
            **LARGE_RECORD_PRODUCER,
        )
        try:
            await producer.start()  # InitProducerId: bump the epoch, abort what was left open
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), STOP_TIMEOUT_S)
            raise
        task.producer = producer

    async def _close_producer(self, task: Task) -> None:
        producer, task.producer, task.ready = task.producer, None, False
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), STOP_TIMEOUT_S)

    async def _rewind(self, task: Task) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        tps = [tp for tp in self._input_tps(task.partition) if tp in assigned]
        # one OffsetFetch round trip per input, all in flight at once: a stage with five inputs
        # restarting under load must not take five sequential round trips per task
        committed = await asyncio.gather(*(self._consumer.committed(tp) for tp in tps))
        for tp, offset in zip(tps, committed, strict=True):
            if offset is None:
                await self._consumer.seek_to_beginning(tp)
                task.committed.pop((tp.topic, tp.partition), None)
            else:
                self._consumer.seek(tp, offset)
                task.committed[(tp.topic, tp.partition)] = offset

    async def _restore(self, partitions: Sequence[int]) -> dict[int, Tables]:
        """Read each task's changelog partitions from the start up to the last stable offset."""
        assert self._restorer is not None
        result: dict[int, Tables] = {p: {t: {} for t in self.stage.tables} for p in partitions}
        topic_table = {self.stage.changelog_of(t): t for t in self.stage.tables}
        tps = [TopicPartition(topic, p) for topic in topic_table for p in partitions]
        if not tps:
            return result
        r = self._restorer
        r.assign(tps)
        await r.seek_to_beginning(*tps)
        ends = await r.end_offsets(tps)
        deadline = time.monotonic() + RESTORE_TIMEOUT_S
        pending = {tp for tp in tps if ends[tp] > 0}
        count = 0
        while pending:
            if time.monotonic() > deadline:
                raise StateRestoreError(f"restoring {sorted(map(str, pending))} took longer than "
                                        f"{RESTORE_TIMEOUT_S:.0f}s")
            batch = await r.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                table = topic_table[tp.topic]
                rows = result[tp.partition][table]
                for rec in records:
                    self._restore_one(rows, table, tp, rec)
                    count += 1
            for tp in list(pending):
                if await r.position(tp) >= ends[tp]:
                    pending.discard(tp)
        r.assign([])
        self.log.info("state.restored", partitions=list(partitions), records=count)
        return result

    def _restore_one(self, rows: dict[str, Mapping[str, Any]], table: str, tp: TopicPartition,
                     rec: ConsumerRecord[Any, Any]) -> None:
        where = f"{tp.topic}[{tp.partition}]@{rec.offset}"
        try:
            key = bytes(rec.key).decode("utf-8")
        except (TypeError, UnicodeDecodeError) as exc:
            raise StateRestoreError(f"{where}: changelog key is not UTF-8 text") from exc
        if rec.value is None:
            rows.pop(key, None)
            return
        try:
            decoded = self.codec.decode(rec.value, expected={self.stage.tables[table]})
        except HostgateError as exc:
            raise StateRestoreError(f"{where}: changelog value does not decode: {exc}") from exc
        rows[key] = decoded.record

    def _mark_broken(self, task: Task, exc: BaseException) -> None:
        assert self._consumer is not None
        task.ready = False
        task.failures += 1
        if isinstance(exc, ProducerFenced):
            delay = 2 * self.config.session_timeout_ms / 1000
        else:
            delay = min(MAX_BACKOFF_S, 0.2 * 2 ** (task.failures - 1))
        task.retry_at = time.monotonic() + delay
        tps = [tp for tp in self._input_tps(task.partition) if tp in self._consumer.assignment()]
        self._consumer.pause(*tps)
        self.metrics.errors.labels(self.stage.name, type(exc).__name__).inc()
        self.log.warning("task.broken", partition=task.partition, error=type(exc).__name__,
                         detail=str(exc)[:300], retry_in_s=round(delay, 2))

    # -- the loop ---------------------------------------------------------------------------

    async def _poll_once(self) -> None:
        assert self._consumer is not None
        self.heartbeat = time.monotonic()
        now = time.monotonic()
        due = [t for t in self.tasks.values() if not t.ready and t.retry_at <= now]
        if due:
            async with self._lock:
                await self._init_tasks([t for t in due if self.tasks.get(t.partition) is t
                                        and not t.ready and t.retry_at <= now])
        snapshot = dict(self.tasks)
        try:
            fetched = await self._consumer.getmany(timeout_ms=self.config.poll_timeout_ms,
                                                   max_records=self.config.batch_max_records)
        except KafkaError as exc:
            self.metrics.errors.labels(self.stage.name, type(exc).__name__).inc()
            self.log.warning("poll.failed", error=type(exc).__name__, detail=str(exc)[:300])
            await asyncio.sleep(0.5)
            return
        except UNREADABLE_RECORD_ERRORS as exc:
            await self._unreadable_fetch(exc)
            return
        if not fetched:
            self._update_lag()
            return
        by_task: dict[int, list[RawRecord]] = defaultdict(list)
        for tp, records in fetched.items():
            by_task[tp.partition].extend(_raw(rec) for rec in records)
        async with self._lock:
            jobs = []
            for p, raws in by_task.items():
                task = self.tasks.get(p)
                # Records fetched for a task that is gone or broken are dropped here: its
                # (re)initialisation rewinds to the committed offsets.
                if task is None or not task.ready:
                    continue
                if task is not snapshot.get(p):
                    # (Re)initialised during this poll (e.g. the first assignment happens inside
                    # getmany): the records may predate its rewind, so drop them — and rewind
                    # again, or the consumer's position would skip them for good.
                    try:
                        await self._rewind(task)
                    except (KafkaError, OSError, TimeoutError) as exc:
                        self._mark_broken(task, exc)  # its re-initialisation rewinds
                    continue
                jobs.append(self._run_task(task, raws))
            await asyncio.gather(*jobs)
        self._update_lag()

    async def _run_task(self, task: Task, raws: list[RawRecord]) -> None:
        start = 0
        while start < len(raws) and task.ready:
            t0 = time.monotonic()
            try:
                if self.config.exactly_once:
                    start, plan, pending = await self._transact(task, raws, start)
                else:
                    start, plan, pending = await self._at_least_once(task, raws, start)
            except TRANSACTION_ERRORS as exc:
                await self._reset_after_failed_transaction(task, exc)
                return
            merge_pending(task.tables, pending)
            self._account(plan, time.monotonic() - t0)

    async def _reset_after_failed_transaction(self, task: Task, exc: BaseException) -> None:
        """Drop the task's producer and retry it later (its re-initialisation restores and
        rewinds)."""
        self.log.warning("transaction.failed", partition=task.partition,
                         error=type(exc).__name__, detail=str(exc)[:300])
        self._mark_broken(task, exc)
        await self._close_producer(task)

    async def _transact(self, task: Task, raws: Sequence[RawRecord],
                        start: int) -> tuple[int, BatchPlan, Any]:
        """One transaction over ``raws[start:]`` (or the part that fits in ``batch_max_ms``);
        returns where the next one starts. Steps as in the module docstring."""
        producer = task.producer
        assert producer is not None
        overlay = OverlayState(task.tables, self.global_tables)
        deadline_start = time.monotonic()
        deadline = deadline_start + self.config.batch_max_ms / 1000
        total = BatchPlan()
        futures: list[asyncio.Future[Any]] = []
        await producer.begin_transaction()  # 1
        i = start
        while i < len(raws) and (i == start or time.monotonic() < deadline):  # 2
            chunk = raws[i:i + PLAN_CHUNK]
            i += len(chunk)
            plan = await self._plan(task, chunk, overlay)
            for rec in plan.records:
                futures.append(await producer.send(
                    rec.topic, value=rec.value, key=rec.key, partition=rec.partition,
                    headers=list(rec.headers)))
            total.records.extend(plan.records)
            total.outcomes.extend(plan.outcomes)
            total.next_offsets.update(plan.next_offsets)
        t_planned = time.monotonic()
        await self._broker_step(task, "acks", _all_acked(futures))  # 3
        t_acked = time.monotonic()
        offsets = {TopicPartition(t, p): o for (t, p), o in total.next_offsets.items()}
        await self._broker_step(task, "offsets", producer.send_offsets_to_transaction(
            offsets, self.config.group_id))  # 4
        t_offsets = time.monotonic()
        await self._broker_step(task, "commit", producer.commit_transaction())  # 5
        t_end = time.monotonic()
        self.log.debug("transaction.committed", partition=task.partition,
                       records=len(total.outcomes), plan_send_ms=_ms(t_planned - deadline_start),
                       acks_ms=_ms(t_acked - t_planned), offsets_ms=_ms(t_offsets - t_acked),
                       commit_ms=_ms(t_end - t_offsets))
        task.committed.update(total.next_offsets)  # 6 (the caller merges state)
        return i, total, overlay.pending

    async def _broker_step(self, task: Task, step: str, waiting: Awaitable[Any]) -> Any:
        """Await one step of the commit path that waits for the brokers; every
        :data:`TXN_WAIT_WARN_S` it is still waiting, say so (log and gauge); past the
        transaction timeout give up (``TransactionStalled``: the task is reset)."""
        fut = asyncio.ensure_future(waiting)
        gauge = self.metrics.txn_waiting.labels(self.stage.name, str(task.partition))
        limit_s = self.config.txn_timeout_ms / 1000
        t0 = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=TXN_WAIT_WARN_S)
                if done:
                    return fut.result()
                waited = time.monotonic() - t0
                gauge.set(round(waited, 1))
                self.log.warning("transaction.waiting", partition=task.partition, step=step,
                                 waited_s=round(waited, 1), limit_s=limit_s,
                                 hint="brokers down, or fewer in-sync replicas than "
                                      "min.insync.replicas: nothing is committed meanwhile")
                if waited >= limit_s:
                    raise TransactionStalled(
                        f"task {task.partition}: {step} still waiting after {waited:.0f}s "
                        f"(transaction timeout {limit_s:.0f}s)")
        finally:
            gauge.set(0)
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(BaseException):
                    await fut

    async def _at_least_once(self, task: Task, raws: Sequence[RawRecord],
                             start: int) -> tuple[int, BatchPlan, Any]:
        """Benchmark baseline: same plan, idempotent producer, offsets committed after acks."""
        assert self._plain_producer is not None and self._consumer is not None
        overlay = OverlayState(task.tables, self.global_tables)
        plan = await self._plan(task, raws[start:], overlay)
        futures = [await self._plain_producer.send(
            r.topic, value=r.value, key=r.key, partition=r.partition, headers=list(r.headers))
            for r in plan.records]
        await _all_acked(futures)
        await self._consumer.commit(
            {TopicPartition(t, p): o for (t, p), o in plan.next_offsets.items()})
        task.committed.update(plan.next_offsets)
        return len(raws), plan, overlay.pending

    # -- records the client library cannot read ---------------------------------------------

    async def _unreadable_fetch(self, exc: Exception) -> None:
        """``getmany`` raised one of :data:`UNREADABLE_RECORD_ERRORS`: a record aiokafka cannot
        hand out. The records that call drained are lost with it, and partitions it drained
        before failing may have moved past them, so every ready task is rewound; then each of
        their input partitions is read on its own (:meth:`_drain`) up to where it ended: what
        precedes an unreadable record is decided as usual, and the record is dead-lettered by
        its coordinates, exactly once. Anything that fails here resets the task concerned (its
        reset rewinds), as a failed transaction does."""
        assert self._consumer is not None
        consumer = self._consumer
        self.metrics.errors.labels(self.stage.name, type(exc).__name__).inc()
        self.log.warning("poll.unreadable_record", error=type(exc).__name__,
                         detail=str(exc)[:300])
        async with self._lock:
            was_paused = set(consumer.paused())
            ready = [t for t in self.tasks.values() if t.ready]
            for task in ready:
                tps = [tp for tp in self._input_tps(task.partition)
                       if tp in consumer.assignment() and tp not in was_paused]
                try:
                    await self._rewind(task)
                    consumer.pause(*tps)
                    for tp in tps:
                        if task.ready:
                            await self._drain(task, tp)
                    if task.ready:
                        await self._rewind(task)
                except TRANSACTION_ERRORS as exc2:
                    self._mark_broken(task, exc2)  # pauses; its re-initialisation rewinds
                    await self._close_producer(task)
                if task.ready:
                    consumer.resume(*tps)

    async def _drain(self, task: Task, tp: TopicPartition) -> None:
        """Decide ``tp``'s records (the caller paused every other partition) up to the end it
        had when called, dead-lettering each unreadable one. After an unreadable record the
        partition is read one record at a time: aiokafka does not move the position for a
        ``getmany`` that raised, so the record that fails then is the one at the position."""
        assert self._consumer is not None
        consumer = self._consumer
        consumer.resume(tp)
        try:
            end = (await consumer.end_offsets([tp]))[tp]
            raws: list[RawRecord] = []
            one_by_one = False
            idle = 0
            while task.ready and await consumer.position(tp) < end and idle < _DRAIN_IDLE_POLLS:
                try:
                    got = await consumer.getmany(
                        tp, timeout_ms=self.config.poll_timeout_ms,
                        max_records=1 if one_by_one else self.config.batch_max_records)
                except UNREADABLE_RECORD_ERRORS as exc:
                    if not one_by_one:
                        one_by_one = True  # the same position again, one record at a time
                        continue
                    await self._run_task(task, raws)
                    raws = []
                    if task.ready:
                        offset = await self._unreadable_offset(tp, await consumer.position(tp))
                        await self._dead_letter_unreadable(task, tp, offset, exc)
                    one_by_one = False
                    continue
                records = got.get(tp, [])
                idle = 0 if records else idle + 1
                raws.extend(_raw(rec) for rec in records)
                if len(raws) >= self.config.batch_max_records:
                    await self._run_task(task, raws)
                    raws = []
            await self._run_task(task, raws)
        finally:
            consumer.pause(tp)

    async def _unreadable_offset(self, tp: TopicPartition, position: int) -> int:
        """The offset of the unreadable record that made a fetch from ``position`` fail: the
        offsets between hold nothing readable (transaction markers), so it is the last start
        from which the fetch still fails. Leaves the position just past it."""
        assert self._consumer is not None
        consumer = self._consumer
        offset = position
        for _ in range(_UNREADABLE_PROBES):
            consumer.seek(tp, offset + 1)
            try:
                while not await consumer.getmany(tp, timeout_ms=self.config.poll_timeout_ms,
                                                 max_records=1):
                    if await consumer.position(tp) >= (await consumer.end_offsets([tp]))[tp]:
                        break
            except UNREADABLE_RECORD_ERRORS:
                offset += 1
                continue
            consumer.seek(tp, offset + 1)  # the probe's record is decided next
            return offset
        raise UnreadableInput(f"{tp.topic}[{tp.partition}]: no readable record within "
                              f"{_UNREADABLE_PROBES} offsets of {position}")

    async def _dead_letter_unreadable(self, task: Task, tp: TopicPartition, offset: int,
                                      exc: BaseException) -> None:
        """Write the DLQ record of the unreadable input at ``offset`` and move the task's
        committed offset past it, in one transaction (offsets committed after the ack in the
        at-least-once baseline)."""
        assert self._consumer is not None
        where = Coordinates(tp.topic, tp.partition, offset)
        rec = unreadable_dlq_record(self.stage, where, self.config.group_id, exc)
        offsets = {tp: offset + 1}
        try:
            if self.config.exactly_once:
                producer = task.producer
                assert producer is not None
                await producer.begin_transaction()
                await _all_acked([await producer.send(rec.topic, value=rec.value, key=rec.key,
                                                      headers=list(rec.headers))])
                await producer.send_offsets_to_transaction(offsets, self.config.group_id)
                await producer.commit_transaction()
            else:
                assert self._plain_producer is not None
                await _all_acked([await self._plain_producer.send(
                    rec.topic, value=rec.value, key=rec.key, headers=list(rec.headers))])
                await self._consumer.commit(offsets)
        except TRANSACTION_ERRORS as exc2:
            await self._reset_after_failed_transaction(task, exc2)
            return
        task.committed[(tp.topic, tp.partition)] = offset + 1
        self.metrics.dlq.labels(self.stage.name, REASON_UNREADABLE).inc()
        self.log.warning("decision", key=None, topic=tp.topic, partition=tp.partition,
                         offset=offset, result="dlq", error=type(exc).__name__,
                         dlq_reason=REASON_UNREADABLE)

    # -- accounting -------------------------------------------------------------------------

    def _account(self, plan: BatchPlan, seconds: float) -> None:
        name = self.stage.name
        m = self.metrics
        m.batch_latency.labels(name).observe(seconds)
        m.records_in.labels(name).inc(len(plan.outcomes))
        outs = sum(o.outputs for o in plan.outcomes)
        m.records_out.labels(name).inc(outs)
        for o in plan.outcomes:
            c = o.coordinates
            if o.facts.get("misrouted"):
                self._misrouted.labels(name, c.topic).inc()
                self.log.warning("input.misrouted", key=o.key, topic=c.topic,
                                 partition=c.partition, offset=c.offset,
                                 policy=self.stage.misrouted)
            if o.facts.get("fault") == Fault.BUG:
                m.internal_errors.labels(name, o.error or "?").inc()
            if o.result == "dlq":
                m.dlq.labels(name, str(o.facts.get("dlq_reason", "?"))).inc()
                self.log.warning("decision", key=o.key, topic=c.topic, partition=c.partition,
                                 offset=c.offset, result=o.result, error=o.error, **o.facts)
            else:
                m.decisions.labels(name, *decision_labels(o.result, o.facts)).inc()
                self.log.info("decision", key=o.key, topic=c.topic, partition=c.partition,
                              offset=c.offset, result=o.result, outputs=o.outputs, **o.facts)

    def _forget_partition_metrics(self, partition: int) -> None:
        """Drop a revoked partition's per-partition series: its new owner reports them now, and
        a stale lag here would keep a lag alert firing until this pod restarts."""
        for tp in self._input_tps(partition):
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(self.stage.name, tp.topic, str(tp.partition))
        with contextlib.suppress(KeyError):
            self.metrics.txn_waiting.remove(self.stage.name, str(partition))

    def _update_lag(self) -> None:
        assert self._consumer is not None
        for task in self.tasks.values():
            for tp in self._input_tps(task.partition):
                lso = self._consumer.last_stable_offset(tp)
                done = task.committed.get((tp.topic, tp.partition))
                if lso is not None and done is not None:
                    self.metrics.lag.labels(self.stage.name, tp.topic,
                                            str(tp.partition)).set(max(0, lso - done))


async def _all_acked(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every send; raise the first failure (retrieving all, so none is left unread)."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _raw(rec: ConsumerRecord[Any, Any]) -> RawRecord:
    headers = tuple((str(k), bytes(v) if v is not None else b"") for k, v in rec.headers or ())
    return RawRecord(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value,
                     headers)
