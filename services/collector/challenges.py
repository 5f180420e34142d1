"""Attestation challenges: single-use nonces bound to one host, with an expiry and a rate limit.

A ``ChallengeRequested`` from an enrolled host, **signed by its enrolled AK**
(``services.collector.request_auth``), gets a ``NonceIssued`` (32 random bytes, expiry
``now + nonce TTL``, the PCR selection the quote must cover) and a ``PendingChallenge`` row
keyed by the challenge id. The host's ``hosts`` row (``HostTrackState``) lists its open
challenges and used nonces, so expired entries can be tombstoned (the tables stay bounded per
host), counts requests in a fixed window and keeps the TPM clock of the last accepted request.

Checks, in order (the first failure is the rejection):

1. key = ``host_id`` (``HOST_MISMATCH``), ids bounded (``MALFORMED``);
2. the host has an enrolled AK (``UNENROLLED_AK``);
3. the request is signed by that AK over its binding, later than the last accepted one
   (``UNAUTHENTICATED``). Up to here nothing changes state: anyone may write to the requests
   topic, and only what the host's AK vouches for may use up its limits;
4. rate limit and open-challenge bound (``RATE_LIMITED``); the size of the offer
   (``OVER_LIMITS`` / ``MALFORMED``).

The selection is the policy's, never the host's: the banks and PCRs the policy in force reads
(:func:`services.verifier.policy.coverage.coverage`), with ``required_pcrs`` added to every bank;
without a usable policy, SHA-256 with PCRs 0-7 and ``required_pcrs`` (the verifier fails such
evidence anyway, and the log says there was no policy). What the host offers is validated for
size and otherwise only logged: coverage the host could shrink would let it hide the PCRs a rule
reads, coverage it could widen would let it grow everyone's work.

"now" is the broker's LogAppendTime of the request (``InputRecord.timestamp_ms``).
"""

from __future__ import annotations

from typing import Any, Final

from services.collector.config import NONCE_BYTES, CollectorConfig
from services.collector.enrollment import TABLE as ENROLLMENTS
from services.collector.enrollment import is_enrolled
from services.collector.host_track import HOSTS, after_request, authenticate
from services.collector.rejections import identified, reject, short_id
from services.collector.request_auth import RequestUnauthenticated
from services.runtime.stage import Decision, InputRecord, Output, StateUpdate, StateView
from services.wire.banks import SYMBOL_OF_BANK
from services.wire.subjects import NONCE_ISSUED
from services.wire.time import epoch_ms

CHALLENGES: Final = "challenges"
NONCES: Final = "nonces"
MAX_SELECTIONS: Final = 8
FALLBACK_BANK: Final = SYMBOL_OF_BANK["sha256"]
FIRMWARE_PCRS: Final = tuple(range(8))


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


def offer_problem(requested: Any) -> str:
    """A sentence naming what is wrong with the host's offer (``requested_pcrs``), or ``""``.
    The offer is bounded like any input, but it does not decide the selection."""
    if len(requested) > MAX_SELECTIONS:
        return f"field requested_pcrs has {len(requested)} banks (limit {MAX_SELECTIONS})"
    for i, sel in enumerate(requested):
        pcrs = list(sel["pcrs"])
        if len(pcrs) > 24:
            return f"field requested_pcrs[{i}].pcrs has {len(pcrs)} entries (limit 24)"
        bad = [p for p in pcrs if not 0 <= p <= 23]
        if bad:
            return f"field requested_pcrs[{i}].pcrs holds {bad[:4]} outside 0..23"
    return ""


def policy_selection(state: StateView, cfg: CollectorConfig
                     ) -> tuple[list[dict[str, Any]], dict[str, str | int | bool]]:
    """The selection to demand (``hostgate.PcrSelection`` records) and log facts naming where
    it came from: the policy in force's coverage plus ``required_pcrs`` in every bank, or the
    SHA-256 fallback when no usable policy is in force (module docstring)."""
    from services.verifier.policy.coverage import coverage
    from services.verifier.policy_in_force import PolicyInForce, policy_of

    required = set(cfg.required_pcrs)
    policy = policy_of(state, cfg.policy_id, cfg.policy_cache) if cfg.policy_id else None
    facts: dict[str, str | int | bool]
    if isinstance(policy, PolicyInForce):
        wanted = [(bank, sorted(set(pcrs) | required))
                  for bank, pcrs in coverage(policy.prepared.policy).selection()]
        # a challenge names banks by their hostgate.HashAlg symbols
        unnamed = [bank.upper() for bank, _ in wanted if bank not in SYMBOL_OF_BANK]
        if wanted and not unnamed:
            facts = {"policy": policy.policy_id, "policy_version": policy.version}
            return [{"bank": SYMBOL_OF_BANK[b], "pcrs": p} for b, p in wanted], facts
        facts = {"policy": "unusable",
                 "policy_problem": f"coverage names banks a challenge cannot: {unnamed}"[:200]}
    elif policy is None:
        facts = {"policy": "none"}
    else:
        facts = {"policy": "unusable", "policy_problem": str(policy)[:200]}
    # No usable policy: evidence is collected for the audit trail, and fails appraisal.
    facts["coverage"] = "fallback"
    return [{"bank": FALLBACK_BANK, "pcrs": sorted(set(FIRMWARE_PCRS) | required)}], facts


@identified
def decide_challenge_request(inp: InputRecord, state: StateView,
                             cfg: CollectorConfig) -> Decision:
    """A ``ChallengeRequested``: issue a nonce to an enrolled host that signed the request,
    within its rate limit (module docstring)."""
    topic = cfg.topics.rejections
    rec = inp.record
    host: str = rec["host_id"]
    now = inp.timestamp_ms
    enrolment = state.get(ENROLLMENTS, host)
    if not is_enrolled(enrolment):
        return reject(inp, topic, "UNENROLLED_AK",
                      f"host {host!r} has no enrolled AK: enrol (credential activation) first")
    assert enrolment is not None
    current = state.get(HOSTS, host)
    try:
        signed = authenticate(rec, bytes(enrolment["ak_public"]), current, cfg.limits,
                              memo=cfg.memo)
    except RequestUnauthenticated as exc:
        # No state update at all: whoever wrote this cannot touch the host's limits.
        return reject(inp, topic, "UNAUTHENTICATED", f"{exc}; nothing was changed",
                      extra_log={"anomaly": True})
    track = after_request(current, host, now, signed)
    updates = sweep(track, state, now)
    if now - epoch_ms(track["window_start"]) >= cfg.challenge_rate_window_ms:
        track["window_start"], track["submissions_in_window"] = now, 0
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
    problem = offer_problem(rec["requested_pcrs"])
    if problem:
        reason = "OVER_LIMITS" if "limit" in problem else "MALFORMED"
        return reject(inp, topic, reason, problem,
                      state_updates=(*updates, StateUpdate(HOSTS, host, track)))
    selection, facts = policy_selection(state, cfg)
    nonce = cfg.random_bytes(NONCE_BYTES)
    challenge_id = short_id(inp, "nonce")
    expires = now + cfg.nonce_ttl_ms
    pending = {"challenge_id": challenge_id, "host_id": host, "nonce": nonce,
               "pcr_selection": selection, "issued_at": now, "expires_at": expires}
    track["submissions_in_window"] += 1
    track["open_challenges"] = [*track["open_challenges"], challenge_id]
    out = Output(topic=cfg.topics.challenges, key=host, subject=NONCE_ISSUED, id=challenge_id,
                 record={**pending, "request_id": rec["request_id"]})
    return Decision(
        outputs=(out,),
        state_updates=(*updates, StateUpdate(CHALLENGES, challenge_id, pending),
                       StateUpdate(HOSTS, host, track)),
        log={"outcome": "nonce-issued", "banks": ",".join(s["bank"] for s in selection),
             "pcrs": ",".join(map(str, selection[0]["pcrs"])), **facts},
    )
