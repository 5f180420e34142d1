"""The contract between a stage's pure core and the runtime shell.

A stage is a value (``Stage``) holding a pure function ``decide(inp, state) -> Decision``. The
core never imports Kafka: it sees an ``InputRecord`` (already decoded, with the coordinates it
came from) and a read-only ``StateView``, and returns a ``Decision`` describing outputs and state
changes. The shell (``services.runtime.worker``) is the only code that talks to Kafka; it turns
decisions into one transaction per batch.

Nothing here is trusted more than the bytes it came from: ``InputRecord.record`` only passed the
codec's schema check, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from services.errors import HostgateError
from services.runtime.topics import Topics

Headers = tuple[tuple[str, bytes], ...]
"""Kafka record headers, in order; names may repeat (Kafka allows it; the last one wins)."""


@dataclass(frozen=True)
class Coordinates:
    """Where a Kafka record lives: enough to fetch it again."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class InputRecord:
    """One decoded input record as a stage sees it (schema-checked, otherwise untrusted)."""

    key: str | None
    subject: str
    record: Mapping[str, Any]
    coordinates: Coordinates
    timestamp_ms: int
    headers: Headers = ()
    key_partition: int | None = None
    """The partition Kafka's default partitioner maps ``key`` to on this topic
    (``services.runtime.partitioner``), computed by the runtime from the topic's partition
    count; None when unknown (no key, or the count was not known). State is partitioned by
    key, so a record whose ``coordinates.partition`` differs was written where its key does
    not belong (an explicit ``partition=``): a stage that keeps per-host state must not judge
    it against the state of that partition. Fail closed on None."""

    @property
    def misrouted(self) -> bool:
        """True unless the record is known to sit on its key's partition (fail closed)."""
        return self.key_partition is None or self.key_partition != self.coordinates.partition


class StateView(Protocol):
    """Read-only lookups in the stage's state tables (values are decoded Avro records)."""

    def get(self, table: str, key: str) -> Mapping[str, Any] | None:
        """The current value of ``key`` in ``table``, or None if absent or deleted."""
        ...


@dataclass(frozen=True)
class Output:
    """One record to produce. ``id`` is deterministic, derived from the input (the runtime
    puts it in the ``hg-id`` header so any consumer can de-duplicate).

    ``raw_value``: bytes produced as the record value *instead of* Avro-encoding ``record``
    (e.g. OCSF JSON for a SIEM); ``subject`` then only names the content (such as
    ``application/json``) and the stage sets any content-type header itself."""

    topic: str
    key: str
    subject: str
    record: Mapping[str, Any]
    id: str
    headers: Headers = ()
    raw_value: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StateUpdate:
    """Set (``value``) or delete (``value=None``, a tombstone) one key of one state table."""

    table: str
    key: str
    value: Mapping[str, Any] | None


@dataclass(frozen=True)
class Decision:
    """What a stage decided for one input: records to produce and state to change."""

    outputs: tuple[Output, ...] = ()
    state_updates: tuple[StateUpdate, ...] = ()
    log: Mapping[str, str | int | bool] = field(default_factory=dict)
    """A few non-secret facts for the decision's log event (e.g. a verdict, a reason id)."""


MISROUTED_WARN: Final = "warn"
"""Mis-partitioned inputs are decided as usual, counted and logged as a warning."""
MISROUTED_DLQ: Final = "dlq"
"""Mis-partitioned inputs go to the stage's DLQ untouched (reason ``misrouted``)."""
MISROUTED_DECIDE: Final = "decide"
"""Mis-partitioned inputs reach ``decide``, which refuses them itself (``key_partition``)."""
MISROUTED_POLICIES: Final = frozenset({MISROUTED_WARN, MISROUTED_DLQ, MISROUTED_DECIDE})

Decide = Callable[[InputRecord, StateView], Decision]
OnHostFault = Callable[[InputRecord, HostgateError], Decision]
OnBug = Callable[[InputRecord, Exception], Decision]
Reduce = Callable[[Mapping[str, Any] | None, Mapping[str, Any] | None], Mapping[str, Any] | None]
"""``(current, incoming) -> kept`` for one key of a global table (None = absent/tombstone)."""


def last_write_wins(current: Mapping[str, Any] | None,
                    incoming: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The default reduce of a global table: the newest record of a key replaces the old one."""
    return incoming


@dataclass(frozen=True)
class GlobalTableSpec:
    """A read-only table every worker of a stage holds in full, whatever partitions it owns.

    The runtime (``services.runtime.globaltable``) reads all partitions of ``topic`` (compacted,
    read_committed, no consumer group) to its end before the worker processes anything, then
    keeps following it. ``decide`` reads it through the ``StateView`` under its table name.
    Values are records of ``subject``; ``reduce`` folds each new record of a key into the kept
    one (e.g. keep the highest version).
    """

    topic: str
    subject: str
    reduce: Reduce = last_write_wins


@dataclass(frozen=True)
class Stage:
    """A stage as the runtime runs it.

    ``tables`` maps each state table to the Avro subject of its values. What ``decide`` raises
    on a *decodable* record is mapped by ``services.runtime.faults`` for every stage alike: a
    host's fault goes to ``on_host_fault``, which returns the refusal to commit instead (a
    rejection, a failed verdict naming the field and offset); a transient fault retries the
    batch; a bug goes to ``on_bug`` where a stage must fail closed with a decision (the
    verifier: a failed verdict that blames the verifier, not the host), and is always counted
    as an internal error. A fault the stage has no answer for, or an answer that raises, sends
    the record to the stage's DLQ with the exception in the headers. Either way the stage keeps
    going and nothing is silently dropped.

    The input topics, the state changelogs and hence the tasks are co-partitioned: task *p* owns
    partition *p* of every input topic and of every changelog (see ``services.runtime.worker``).
    """

    name: str
    input_topics: tuple[str, ...]
    input_subjects: frozenset[str]
    decide: Decide
    tables: Mapping[str, str] = field(default_factory=dict)
    on_host_fault: OnHostFault | None = None
    on_bug: OnBug | None = None
    dlq: str = ""
    changelogs: Mapping[str, str] = field(default_factory=dict)
    global_tables: Mapping[str, GlobalTableSpec] = field(default_factory=dict)
    """Read-only tables over whole compacted topics (see :class:`GlobalTableSpec`)."""
    misrouted: str = MISROUTED_WARN
    """What the runtime does with an input whose partition is not its key's (or unknown):
    ``warn`` (decide, count, log a warning), ``dlq`` or ``decide`` (the stage refuses it
    itself). Per-host state makes a mis-partitioned record dangerous wherever anyone but a
    stage principal can write the topic (see ``docs/design/identity.md``)."""
    explicit_partition_subjects: frozenset[str] = frozenset()
    """Subjects written to an explicit partition on purpose (e.g. one liveness tick per
    partition): exempt from the partition check."""
    large_record_topics: frozenset[str] = frozenset()
    """Output topics created for the largest records (``TopicSpec.large_records``: an agent's
    evidence with its IMA list), where a record may weigh up to
    :data:`services.runtime.plan.MAX_LARGE_RECORD_BYTES`; every other topic keeps
    :data:`~services.runtime.plan.MAX_RECORD_BYTES`, under any broker's default."""

    def __post_init__(self) -> None:
        if not self.input_topics:
            raise ValueError(f"stage {self.name!r}: no input topics")
        if self.misrouted not in MISROUTED_POLICIES:
            raise ValueError(f"stage {self.name!r}: misrouted={self.misrouted!r} is not one "
                             f"of {sorted(MISROUTED_POLICIES)}")
        clash = set(self.global_tables) & set(self.tables)
        if clash:
            raise ValueError(f"stage {self.name!r}: {sorted(clash)} are both state and global "
                             "tables")
        # Defaults without a namespace; a stage's factory names its topics from its Topics.
        if not self.dlq:
            object.__setattr__(self, "dlq", Topics().dlq(self.name))
        logs = {t: self.changelogs.get(t) or Topics().changelog(self.name, t)
                for t in self.tables}
        object.__setattr__(self, "changelogs", logs)

    def changelog_of(self, table: str) -> str:
        """The compacted topic that holds ``table``."""
        return self.changelogs[table]


class StateLookup(Protocol):
    """One read-only table: ``get(key)`` (a global table's view)."""

    def get(self, key: str) -> Mapping[str, Any] | None: ...


class OverlayState:
    """A ``StateView`` over committed state plus the not-yet-committed updates of the current
    transaction. Pure bookkeeping: the shell merges ``pending`` into the committed tables only
    after the transaction commits, and throws it away on abort."""

    def __init__(self, committed: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 global_tables: Mapping[str, StateLookup] | None = None) -> None:
        self._committed = committed
        self._global = global_tables or {}
        self.pending: dict[tuple[str, str], Mapping[str, Any] | None] = {}

    def get(self, table: str, key: str) -> Mapping[str, Any] | None:
        glob = self._global.get(table)
        if glob is not None:
            return glob.get(key)
        if (table, key) in self.pending:
            return self.pending[(table, key)]
        return self._committed.get(table, {}).get(key)

    def apply(self, updates: Sequence[StateUpdate]) -> None:
        for upd in updates:
            self.pending[(upd.table, upd.key)] = upd.value


def merge_pending(
    committed: dict[str, dict[str, Mapping[str, Any]]],
    pending: Mapping[tuple[str, str], Mapping[str, Any] | None],
) -> None:
    """Fold a committed transaction's updates into the in-memory tables (deletes remove)."""
    for (table, key), value in pending.items():
        rows = committed.setdefault(table, {})
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value
