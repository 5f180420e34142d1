"""``eostest``: the runtime's own exactly-once test stage (tests and benchmarks only).

Each ``hostgate.test.TestInput`` becomes exactly one ``hostgate.test.TestOutput`` and bumps a
per-key counter in the ``counters`` state table; the output carries ``counter_after``. If the
runtime ever loses or repeats a record, the outputs show it: a missing or doubled input
coordinate, or a gap or repeat in a key's ``counter_after`` sequence.

``decide`` is pure. ``build_stage`` (the shell side) reads the test knobs from the environment:

* ``HOSTGATE_EOSTEST_PREFIX`` (default ``eostest``): topics ``<prefix>.input.v1``,
  ``<prefix>.output.v1``, ``<prefix>.dlq.v1`` and ``hostgate.<prefix>.counters.changelog.v1``,
  so each test run can use fresh topics;
* ``HOSTGATE_EOSTEST_STALL_AFTER`` / ``HOSTGATE_EOSTEST_STALL_S``: after that many decisions in
  this process, block inside ``decide`` for that many seconds, with a transaction open. Tests
  use it to kill a worker mid-transaction, to make it a zombie (stopped with SIGSTOP while it
  holds the open transaction, so the group evicts it), and to show that a slow decision alone
  does not cost a worker its partitions (planning runs off the event loop).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from services.errors import ConfigError, HostgateError
from services.runtime.stage import Decision, InputRecord, Output, Stage, StateUpdate, StateView

INPUT_SUBJECT = "hostgate.test.TestInput"
OUTPUT_SUBJECT = "hostgate.test.TestOutput"
COUNTER_SUBJECT = "hostgate.test.TestCounter"
TABLE = "counters"


class NegativeSequence(HostgateError):
    """A TestInput with ``seq < 0``: the test stage's deliberate stage error (goes to the DLQ)."""


@dataclass(frozen=True)
class EostestTopics:
    """The topics one eostest deployment uses."""

    prefix: str = "eostest"

    @property
    def input(self) -> str:
        return f"{self.prefix}.input.v1"

    @property
    def output(self) -> str:
        return f"{self.prefix}.output.v1"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq.v1"

    @property
    def changelog(self) -> str:
        return f"hostgate.{self.prefix}.{TABLE}.changelog.v1"


def output_id(inp: InputRecord) -> str:
    """Deterministic output id: the input's coordinates."""
    c = inp.coordinates
    return f"eostest:{c.topic}:{c.partition}:{c.offset}"


def decide(inp: InputRecord, state: StateView, *, output_topic: str) -> Decision:
    """One output per input; the key's counter goes up by one."""
    seq = int(inp.record["seq"])
    if seq < 0:
        raise NegativeSequence(f"seq {seq} < 0 at {inp.coordinates}")
    key = str(inp.record["key"])
    current = state.get(TABLE, key)
    count = (int(current["count"]) if current is not None else 0) + 1
    c = inp.coordinates
    out = Output(
        topic=output_topic,
        key=key,
        subject=OUTPUT_SUBJECT,
        record={"input": {"topic": c.topic, "partition": c.partition, "offset": c.offset},
                "key": key, "seq": seq, "counter_after": count},
        id=output_id(inp),
    )
    return Decision(
        outputs=(out,),
        state_updates=(StateUpdate(TABLE, key, {"key": key, "count": count}),),
        log={"counter_after": count},
    )


def _env_number(env: Mapping[str, str], name: str, default: str) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise ConfigError(f"{name}={env.get(name)!r} is not a number") from None


def build_stage(env: Mapping[str, str]) -> Stage:
    """The eostest stage, configured from ``env`` (see the module docstring)."""
    topics = EostestTopics(env.get("HOSTGATE_EOSTEST_PREFIX", "eostest"))
    stall_after = int(_env_number(env, "HOSTGATE_EOSTEST_STALL_AFTER", "0"))
    stall_s = _env_number(env, "HOSTGATE_EOSTEST_STALL_S", "0")
    seen = 0

    def core(inp: InputRecord, state: StateView) -> Decision:
        nonlocal seen
        seen += 1
        if stall_after and seen == stall_after and stall_s > 0:
            # Test instrumentation, not part of the core: announce, then block the planner
            # with a transaction open.
            print(f"eostest: stalling {stall_s}s at {inp.coordinates}", file=sys.stderr,
                  flush=True)
            time.sleep(stall_s)
        return decide(inp, state, output_topic=topics.output)

    return Stage(
        name="eostest",
        input_topics=(topics.input,),
        input_subjects=frozenset({INPUT_SUBJECT}),
        decide=core,
        tables={TABLE: COUNTER_SUBJECT},
        dlq=topics.dlq,
        changelogs={TABLE: topics.changelog},
    )
