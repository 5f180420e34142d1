"""The collector's per-host tracking row (``hostgate.HostTrackState`` in table ``hosts``).

One row per host: its open challenges and used nonces (so they can be swept), its rate-limit
window, the counters of its last accepted quote and the TPM clock of its last authenticated
request. Challenge requests, intake and AK rotations all read and write it, so it lives apart
from each of them. Pure.
"""

from __future__ import annotations

from typing import Any, Final

from services.collector.request_auth import RequestClock

HOSTS: Final = "hosts"
"""State table name of the rows."""


def new_track(host: str, now: int) -> dict[str, Any]:
    """A fresh ``HostTrackState`` row."""
    return {"host_id": host, "last_counters": None, "last_evidence": None,
            "window_start": now, "submissions_in_window": 0, "updated_at": now,
            "open_challenges": [], "used_nonces": [], "last_request_counters": None}


def last_request_clock(track: Any) -> RequestClock | None:
    """The TPM clock of the host's last authenticated request (None: none yet)."""
    rec = None if track is None else track.get("last_request_counters")
    return None if rec is None else RequestClock.from_record(rec)


__all__ = ["HOSTS", "last_request_clock", "new_track"]
