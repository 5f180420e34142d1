"""Liveness: which hosts of a partition have not attested within the window (pure).

The ``hosts`` state table holds one ``IncidentsRoster`` per partition (key ``partition-<p>``):
every host seen there with the time of its latest verdict. ``StateView`` has no scan, so a
per-partition record is the way one input can see all of its partition's hosts. To keep the
changelog small, a host's ``last_seen_at`` is rewritten only when it moved by at least a quarter
of the window (or the host had been reported stale): a stale finding may therefore come up to
``window/4`` late, never early.

``check`` runs on every input of the partition with "now" = the input's Kafka timestamp, and
on every ``LivenessTick`` of the partition with "now" = the tick's ``issued_at`` (so an idle
partition is still checked; ``hostgate incidents tick`` produces the ticks). Each silence of a host gives exactly one finding: the entry is
marked ``stale_reported`` until the host is seen again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from services.incidents.model import clip
from services.incidents.ocsf import SocFinding, stale_host_finding
from services.runtime.stage import Decision, StateUpdate, StateView
from services.wire.time import epoch_ms

TABLE_HOSTS: Final = "hosts"
"""The table of the rosters (values ``hostgate.IncidentsRoster``)."""


def roster_key(partition: int) -> str:
    """The ``hosts`` table key of one partition's roster."""
    return f"partition-{partition}"


@dataclass(frozen=True)
class HostSeen:
    """One host's latest attestation as the stage recorded it."""

    host_id: str
    last_seen_ms: int
    stale_reported: bool = False


@dataclass(frozen=True)
class LivenessCheck:
    """The roster update (if any) and the stale-host findings of one check."""

    decision: Decision
    findings: tuple[SocFinding, ...] = ()


def load(rec: Any) -> list[HostSeen]:
    """The roster's hosts from its ``IncidentsRoster`` record (or none)."""
    if rec is None:
        return []
    return [HostSeen(clip(h["host_id"], 256), epoch_ms(h["last_seen_at"]), bool(h["stale_reported"]))
            for h in rec["hosts"]]


def _record(partition: int, hosts: list[HostSeen]) -> dict[str, Any]:
    return {"partition": partition,
            "hosts": [{"host_id": h.host_id, "last_seen_at": h.last_seen_ms,
                       "stale_reported": h.stale_reported} for h in hosts]}


def _note_seen(hosts: list[HostSeen], seen: tuple[str, int], refresh_ms: int,
               max_hosts: int) -> tuple[bool, bool]:
    """Record a sighting in place; returns (changed, roster_full)."""
    host_id, at = seen
    for i, h in enumerate(hosts):
        if h.host_id == host_id:
            if at > h.last_seen_ms and (h.stale_reported or at - h.last_seen_ms >= refresh_ms):
                hosts[i] = HostSeen(host_id, at, False)
                return True, False
            return False, False
    if len(hosts) >= max_hosts:
        return False, True
    hosts.append(HostSeen(host_id, at))
    return True, False


def check(state: StateView, partition: int, now_ms: int, seen: tuple[str, int] | None, *,
          stale_after_ms: int, max_hosts: int, source: str) -> LivenessCheck:
    """Note ``seen`` (host, verdict time) and report hosts silent for over ``stale_after_ms``
    (``source``: the verdict topic the silence was read from, the findings' data source)."""
    hosts = load(state.get(TABLE_HOSTS, roster_key(partition)))
    changed, full = (False, False) if seen is None else _note_seen(
        hosts, seen, max(1, stale_after_ms // 4), max_hosts)
    findings: list[SocFinding] = []
    for i, h in enumerate(hosts):
        if not h.stale_reported and now_ms - h.last_seen_ms > stale_after_ms:
            findings.append(stale_host_finding(h.host_id, h.last_seen_ms, now_ms,
                                               stale_after_ms, source))
            hosts[i] = HostSeen(h.host_id, h.last_seen_ms, True)
            changed = True
    log: dict[str, str | int | bool] = {}
    if findings:
        log["stale_hosts"] = len(findings)
    if full:
        log["liveness_roster_full"] = True
    updates = ((StateUpdate(TABLE_HOSTS, roster_key(partition), _record(partition, hosts)),)
               if changed else ())
    return LivenessCheck(Decision(state_updates=updates, log=log), tuple(findings))
