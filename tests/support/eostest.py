"""``eostest``: the runtime's own exactly-once test stage (tests and benchmarks only; the
product's stage registry does not know it).

Each ``hostgate.test.TestInput`` becomes exactly one ``hostgate.test.TestOutput`` and bumps a
per-key counter in the ``counters`` state table; the output carries ``counter_after``. If the
runtime ever loses or repeats a record, the outputs show it: a missing or doubled input
coordinate, or a gap or repeat in a key's ``counter_after`` sequence.

``decide`` is pure. ``build_stage`` (the shell side) reads the test knobs from the environment:

* ``HOSTGATE_TOPIC_NAMESPACE``, as for every stage (``services.runtime.topics.Topics``): topics
  ``<ns>.eostest.input.v1``, ``<ns>.eostest.output.v1``, the DLQ ``<ns>.eostest.dlq.v1`` and the
  changelog ``<ns>.hostgate.eostest.counters.changelog.v1``, so each test run uses fresh topics
  (and, through the worker's config, its own group and transactional ids);
* ``HOSTGATE_EOSTEST_STALL_AFTER`` / ``HOSTGATE_EOSTEST_STALL_S``: after that many decisions in
  this process, block inside ``decide`` for that many seconds, with a transaction open. Tests
  use it to kill a worker mid-transaction, to make it a zombie (stopped with SIGSTOP while it
  holds the open transaction, so the group evicts it), and to show that a slow decision alone
  does not cost a worker its partitions (planning runs off the event loop).

``python -m tests.support.eostest`` runs one worker of it, as ``hostgate run <stage>`` runs a
product stage (same config, flags and environment).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.errors import ConfigError, HostgateError
from services.runtime.codec import Codec
from services.runtime.stage import Decision, InputRecord, Output, Stage, StateUpdate, StateView
from services.runtime.topics import Topics, TopicSpec

NAME = "eostest"
INPUT_SUBJECT = "hostgate.test.TestInput"
OUTPUT_SUBJECT = "hostgate.test.TestOutput"
COUNTER_SUBJECT = "hostgate.test.TestCounter"
TABLE = "counters"
SCHEMAS = Path(__file__).parent / "schemas"
"""The test stage's own records, never in the product's ``schemas/``."""


def eostest_codec(**options: Any) -> Codec:
    """A codec that knows the product's records and the test stage's (``Codec.load``'s
    ``options``)."""
    return Codec.load(also=(SCHEMAS,), **options)


class NegativeSequence(HostgateError):
    """A TestInput with ``seq < 0``: the test stage's deliberate stage error (goes to the DLQ)."""


@dataclass(frozen=True)
class EostestTopics:
    """The topics one eostest deployment uses: its namespace's, as for a product stage."""

    namespace: str = ""

    @property
    def topics(self) -> Topics:
        return Topics(self.namespace)

    @property
    def input(self) -> str:
        return self.topics.name(f"{NAME}.input.v1")

    @property
    def output(self) -> str:
        return self.topics.name(f"{NAME}.output.v1")

    @property
    def dlq(self) -> str:
        return self.topics.dlq(NAME)

    @property
    def changelog(self) -> str:
        return self.topics.changelog(NAME, TABLE)

    def specs(self) -> tuple[TopicSpec, ...]:
        """Every topic the stage uses (tests create them; ``topics ensure`` does not)."""
        return (TopicSpec(self.input, "runtime tests: input records"),
                TopicSpec(self.output, "runtime tests: output records"),
                *self.topics.stage_specs(NAME, (TABLE,)))


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
    topics = EostestTopics(Topics.from_env(env).namespace)
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
        name=NAME,
        input_topics=(topics.input,),
        input_subjects=frozenset({INPUT_SUBJECT}),
        decide=core,
        tables={TABLE: COUNTER_SUBJECT},
        dlq=topics.dlq,
        changelogs={TABLE: topics.changelog},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """One eostest worker until SIGTERM/SIGINT (``hostgate run``'s flags and environment)."""
    import argparse
    import asyncio
    import os

    from services.runtime.config import add_arguments, load_config, overrides_from_args
    from services.runtime.run_cli import serve

    parser = argparse.ArgumentParser(prog="python -m tests.support.eostest",
                                     description="Run one worker of the eostest stage.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = load_config(NAME, overrides=overrides_from_args(args))
        return asyncio.run(serve(config, build_stage(os.environ), eostest_codec()))
    except HostgateError as exc:
        print(f"eostest: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
