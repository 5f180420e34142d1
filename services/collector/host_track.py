"""The collector's per-host tracking row (``hostgate.HostTrackState`` in table ``hosts``).

One row per host: its open challenges and used nonces (so they can be swept), its rate-limit
window, the counters of its last accepted quote and the TPM clock of its last authenticated
request. Challenge requests, intake and AK rotations all read and write it, so it lives apart
from each of them. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from services.collector.config import IntakeLimits
from services.collector.request_auth import AuthenticatedRequest, RequestClock, verify_request
from services.tpm.memo import Memo

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


def authenticate(rec: Mapping[str, Any], ak_public: bytes, track: Any, limits: IntakeLimits, *,
                 binding: bytes | None = None, memo: Memo | None = None
                 ) -> AuthenticatedRequest:
    """:func:`~services.collector.request_auth.verify_request` of a host's signed record (its
    ``host_id``, ``request_id``, ``request_attest`` and ``request_signature``) against the
    enrolled AK ``ak_public`` and the clock of the host's ``track``; raises
    ``RequestUnauthenticated``."""
    attest, signature = rec.get("request_attest"), rec.get("request_signature")
    return verify_request(
        ak_public, str(rec["host_id"]), str(rec["request_id"]),
        None if attest is None else bytes(attest),
        None if signature is None else bytes(signature), last=last_request_clock(track),
        max_attest_bytes=limits.max_quote_bytes, max_signature_bytes=limits.max_signature_bytes,
        binding=binding, memo=memo)


def after_request(track: Any, host: str, now: int, signed: AuthenticatedRequest
                  ) -> dict[str, Any]:
    """A copy of the host's ``track`` (a new one if None) whose request clock is the one of the
    request ``signed``, accepted at ``now``."""
    moved = dict(track) if track is not None else new_track(host, now)
    moved["last_request_counters"] = signed.clock.to_record(signed.safe)
    moved["updated_at"] = now
    return moved


__all__ = ["HOSTS", "after_request", "authenticate", "last_request_clock", "new_track"]
