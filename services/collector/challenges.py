"""Attestation challenges: single-use nonces bound to one host, with an expiry and a rate limit.

A ``ChallengeRequested`` from an enrolled host gets a ``NonceIssued`` (32 random bytes, expiry
``now + nonce TTL``, the PCR selection the quote must cover) and a ``PendingChallenge`` row
keyed by the challenge id. The host's ``hosts`` row (``HostTrackState``) lists its open
challenges and used nonces, so expired entries can be tombstoned (the tables stay bounded per
host) and counts requests in a fixed window. Refusals: ``UNENROLLED_AK`` (no enrolled AK),
``RATE_LIMITED`` (too many requests in the window, or too many unused nonces),
``OVER_LIMITS`` / ``MALFORMED`` (PCR selection).

"now" is the broker's LogAppendTime of the request (``InputRecord.timestamp_ms``).
"""

from __future__ import annotations

from typing import Any, Final

from services.collector.common import check_identity, derived_id, epoch_ms, reject
from services.collector.config import NONCE_BYTES, CollectorConfig
from services.collector.enrollment import TABLE as ENROLLMENTS
from services.collector.enrollment import is_enrolled
from services.runtime.stage import Decision, InputRecord, Output, StateUpdate, StateView

SUBJECT_REQUEST: Final = "hostgate.ChallengeRequested"
SUBJECT_NONCE: Final = "hostgate.NonceIssued"
CHALLENGES: Final = "challenges"
NONCES: Final = "nonces"
HOSTS: Final = "hosts"
BANKS: Final = ("SHA1", "SHA256", "SHA384", "SHA512")
"""PCR banks a quote may be asked for (the HashAlg symbols hostgate verifies)."""
MAX_SELECTIONS: Final = 8


def new_track(host: str, now: int) -> dict[str, Any]:
    """A fresh ``HostTrackState`` row."""
    return {"host_id": host, "last_counters": None, "last_evidence": None,
            "window_start": now, "submissions_in_window": 0, "updated_at": now,
            "open_challenges": [], "used_nonces": []}


def sweep(track: dict[str, Any], state: StateView, now: int) -> list[StateUpdate]:
    """Tombstone the host's expired open challenges and used nonces; updates ``track`` lists."""
    updates: list[StateUpdate] = []
    for field, table in (("open_challenges", CHALLENGES), ("used_nonces", NONCES)):
        keep: list[str] = []
        for key in track.get(field) or []:
            row = state.get(table, key)
            if row is None:
                continue
            if epoch_ms(row["expires_at"]) < now:
                updates.append(StateUpdate(table, key, None))
            else:
                keep.append(key)
        track[field] = keep
    return updates


def choose_selection(requested: Any, cfg: CollectorConfig) -> tuple[list[dict[str, Any]], str]:
    """The PCR selection to demand: every offered known bank (SHA-256 if none), each with the
    required PCRs plus the offered ones. Returns (selection, error detail or "")."""
    if len(requested) > MAX_SELECTIONS:
        return [], f"field requested_pcrs has {len(requested)} banks (limit {MAX_SELECTIONS})"
    banks: list[str] = []
    offered: set[int] = set()
    for i, sel in enumerate(requested):
        pcrs = list(sel["pcrs"])
        if len(pcrs) > 24:
            return [], f"field requested_pcrs[{i}].pcrs has {len(pcrs)} entries (limit 24)"
        bad = [p for p in pcrs if not 0 <= p <= 23]
        if bad:
            return [], f"field requested_pcrs[{i}].pcrs holds {bad[:4]} outside 0..23"
        if sel["bank"] in BANKS and sel["bank"] not in banks:
            banks.append(sel["bank"])
        offered.update(pcrs)
    pcrs_all = sorted(offered | set(cfg.required_pcrs))
    return [{"bank": b, "pcrs": pcrs_all} for b in (banks or ["SHA256"])], ""


def decide_challenge_request(inp: InputRecord, state: StateView,
                             cfg: CollectorConfig) -> Decision:
    """A ``ChallengeRequested``: issue a nonce to an enrolled host within its rate limit."""
    topic = cfg.topics.rejections
    bad = check_identity(inp, ("request_id",), cfg.limits.max_id_chars)
    if bad is not None:
        return reject(inp, topic, *bad)
    rec = inp.record
    host: str = rec["host_id"]
    now = inp.timestamp_ms
    if not is_enrolled(state.get(ENROLLMENTS, host)):
        return reject(inp, topic, "UNENROLLED_AK",
                      f"host {host!r} has no enrolled AK: enrol (credential activation) first")
    current = state.get(HOSTS, host)
    track = dict(current) if current is not None else new_track(host, now)
    updates = sweep(track, state, now)
    if now - epoch_ms(track["window_start"]) >= cfg.challenge_rate_window_ms:
        track["window_start"], track["submissions_in_window"] = now, 0
    track["updated_at"] = now
    window_s = cfg.challenge_rate_window_ms / 1000
    if track["submissions_in_window"] >= cfg.challenge_rate_count:
        return reject(inp, topic, "RATE_LIMITED",
                      f"host made {track['submissions_in_window']} challenge requests in "
                      f"{window_s:g} s (limit {cfg.challenge_rate_count})",
                      state_updates=(*updates, StateUpdate(HOSTS, host, track)))
    if len(track["open_challenges"]) >= cfg.max_open_challenges:
        return reject(inp, topic, "RATE_LIMITED",
                      f"host holds {len(track['open_challenges'])} unused unexpired nonces "
                      f"(limit {cfg.max_open_challenges})",
                      state_updates=(*updates, StateUpdate(HOSTS, host, track)))
    selection, problem = choose_selection(rec["requested_pcrs"], cfg)
    if problem:
        reason = "OVER_LIMITS" if "limit" in problem else "MALFORMED"
        return reject(inp, topic, reason, problem,
                      state_updates=(*updates, StateUpdate(HOSTS, host, track)))
    nonce = cfg.random_bytes(NONCE_BYTES)
    challenge_id = derived_id(inp, "nonce")
    expires = now + cfg.nonce_ttl_ms
    pending = {"challenge_id": challenge_id, "host_id": host, "nonce": nonce,
               "pcr_selection": selection, "issued_at": now, "expires_at": expires}
    track["submissions_in_window"] += 1
    track["open_challenges"] = [*track["open_challenges"], challenge_id]
    out = Output(topic=cfg.topics.challenges, key=host, subject=SUBJECT_NONCE, id=challenge_id,
                 record={**pending, "request_id": rec["request_id"]})
    return Decision(
        outputs=(out,),
        state_updates=(*updates, StateUpdate(CHALLENGES, challenge_id, pending),
                       StateUpdate(HOSTS, host, track)),
        log={"outcome": "nonce-issued", "banks": ",".join(s["bank"] for s in selection)},
    )
