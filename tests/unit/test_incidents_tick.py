"""Liveness ticks: a partition with no traffic still gets its stale-host findings, with the
tick's ``issued_at`` as "now" (never a clock), once per silence, and no incident change."""

from __future__ import annotations

import argparse

import pytest

from services.incidents.cli import register
from services.incidents.config import IncidentsConfig
from services.incidents.core import (
    TICK,
    VERDICT,
    IncidentsDecision,
    MisroutedRecord,
    assess,
)
from services.incidents.ocsf import SocFinding, validate
from services.incidents.roster import roster_key
from services.incidents.stage import build_stage
from services.runtime.stage import Coordinates, InputRecord
from tests.unit.incidents_support import HOUR, T0, TABLE_SUBJECTS, Driver, roundtrip, verdict

WINDOW = 6 * HOUR


def _is_stale(f: SocFinding) -> bool:
    return bool(f.body.get("finding_info", {}).get("analytic", {}).get("uid")
                == "hostgate.liveness.stale")


def tick(d: Driver, at: int, *, partition: int | None = None,
         offset: int = 0) -> IncidentsDecision:
    """Decide one ``LivenessTick`` on the driver's partition and apply it like the runtime."""
    p = d.partition if partition is None else partition
    rec = roundtrip(TICK, {"partition": p, "issued_at": at, "ticker": "unit-test"})
    # The Kafka timestamp is deliberately far from issued_at: the tick's own time must win.
    inp = InputRecord(roster_key(p), TICK, rec,
                      Coordinates("attest.remediation.v1", d.partition, offset), T0 - 99 * HOUR)
    result = assess(inp, d.state, d.config)
    assert result.decision.outputs == ()
    for upd in result.decision.state_updates:
        assert upd.table == "hosts" and upd.value is not None
        roundtrip(TABLE_SUBJECTS[upd.table], upd.value)
    d.state.apply(result.decision.state_updates)
    d.findings.extend(result.findings)
    return result


def test_a_tick_reports_a_host_silent_since_long_before_once() -> None:
    d = Driver(config=IncidentsConfig(stale_after_ms=WINDOW), partition=2)
    d.feed(VERDICT, verdict("host-a", 1, at=T0), timestamp_ms=T0)  # FAIL: opens an incident
    incident_before = d.incident("host-a")
    assert incident_before is not None and d.findings
    assert not [f for f in d.findings if _is_stale(f)]
    before = len(d.findings)

    early = tick(d, T0 + WINDOW)  # exactly the window: not yet stale
    assert early.findings == ()

    r = tick(d, T0 + 30 * HOUR, offset=1)
    (stale,) = r.findings
    assert stale.host_id == "host-a" and _is_stale(stale)
    assert stale.body["time"] == T0 + 30 * HOUR and stale.body["start_time"] == T0
    validate(stale.body)
    assert r.decision.log["stale_hosts"] == 1
    assert [u.key for u in r.decision.state_updates] == [roster_key(2)]

    again = tick(d, T0 + 31 * HOUR, offset=2)
    assert again.findings == () and again.decision.state_updates == ()
    assert len(d.findings) == before + 1
    assert d.incident("host-a") == incident_before  # ticks never touch the incident


def test_the_host_is_reported_again_only_after_it_was_seen_again() -> None:
    d = Driver(config=IncidentsConfig(stale_after_ms=WINDOW))
    d.feed(VERDICT, verdict("host-a", 1, result="PASS", at=T0), timestamp_ms=T0)
    assert len(tick(d, T0 + 7 * HOUR).findings) == 1
    d.feed(VERDICT, verdict("host-a", 2, result="PASS", at=T0 + 8 * HOUR),
           timestamp_ms=T0 + 8 * HOUR)
    assert tick(d, T0 + 9 * HOUR, offset=1).findings == ()
    (again,) = tick(d, T0 + 15 * HOUR, offset=2).findings
    assert again.body["start_time"] == T0 + 8 * HOUR


def test_ticks_are_deterministic_and_respect_liveness_off() -> None:
    def run() -> list[str]:
        d = Driver(config=IncidentsConfig(stale_after_ms=WINDOW))
        d.feed(VERDICT, verdict("host-a", 1, result="PASS"), timestamp_ms=T0)
        return [f.to_json().decode() for f in tick(d, T0 + 7 * HOUR).findings]

    first = run()
    assert len(first) == 1 and run() == first
    off = Driver(config=IncidentsConfig(stale_after_ms=0))
    off.feed(VERDICT, verdict("host-a", 1, result="PASS"), timestamp_ms=T0)
    r = tick(off, T0 + 700 * HOUR)
    assert r.findings == () and r.decision.state_updates == ()


def test_a_tick_for_another_partition_is_misrouted() -> None:
    d = Driver(config=IncidentsConfig(stale_after_ms=WINDOW), partition=1)
    with pytest.raises(MisroutedRecord, match="partition 0"):
        tick(d, T0, partition=0)


def test_the_stage_accepts_ticks_and_the_cli_offers_tick() -> None:
    assert TICK in build_stage({}).input_subjects
    parser = argparse.ArgumentParser(prog="hostgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["incidents", "tick", "--once", "--every", "5"])
    assert (args.once, args.every, args.func.__name__) == (True, 5.0, "_cmd_tick")


def test_a_stale_finding_names_the_deployments_own_verdict_topic() -> None:
    """In a namespaced deployment the SOC must see the topic the silence was read from, not
    the default name of another deployment's."""
    from services.runtime.topics import Topics

    topics = Topics("site-b")
    d = Driver(config=IncidentsConfig(stale_after_ms=WINDOW, topics=topics))
    d.feed(VERDICT, verdict("host-a", 1, at=T0), timestamp_ms=T0)
    (stale,) = tick(d, T0 + 30 * HOUR).findings
    assert stale.body["finding_info"]["data_sources"] == ["site-b.attest.verdicts.v1"]
    assert stale.body["metadata"]["log_name"] == topics.verdicts
