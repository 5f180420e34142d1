"""Evidence intake: enrolled AK, our nonce (this host's, unexpired, unused), size limits.

Checks, in order (the first failure is the rejection; nothing is dropped):

1. key = ``host_id`` (``HOST_MISMATCH``), ids bounded (``MALFORMED``);
2. the host has an enrolled AK (``UNENROLLED_AK``);
3. sizes: boot log bytes and events, IMA bytes and entries, quote, signature, PCR values
   (``OVER_LIMITS``). Event and entry counts come from the tpm library's parsers run with the
   intake limits; a log that does not *parse* is not refused here — a broken log from an
   enrolled host is evidence in itself and gets a failed verdict from the verifier;
4. the challenge: issued by us (``UNKNOWN_NONCE``), to this host (``UNKNOWN_NONCE``, anomaly),
   with this nonce (``UNKNOWN_NONCE``), not used before (``REPLAYED_NONCE``, anomaly), not
   expired (``STALE_NONCE``);
5. the quote is signed by the host's enrolled AK (``BAD_SIGNATURE`` — stops ``wrong_ak`` here),
   is a TPM2_Quote (``MALFORMED``), over this nonce (``REPLAYED_NONCE`` if over a nonce this
   collector saw used, else ``UNKNOWN_NONCE``);
6. the quote's PCR selection is exactly the challenge's: the same banks, each with the same PCRs,
   each bank once (``SELECTION_MISMATCH``, naming both). Coverage is the policy's decision, not
   the host's: a host quoting less would leave the rules that read the missing PCRs without
   evidence (and a bank listed twice would hide one of its parts from the verifier, which keeps
   a bank's last selection). It is the host's own signed evidence, so its challenge is used up.

Checks before the signature never consume the challenge: anyone who may write to the evidence
topic can name any host, so only evidence signed by the host's AK may change its state. PCR
digest, log replay and policy are the verifier's; ``EvidenceCollected`` carries the enrolled
AK, the EK identity and the counters of the host's previous accepted quote for that.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

from services.collector.challenges import CHALLENGES, NONCES, sweep
from services.collector.config import CollectorConfig, IntakeLimits
from services.collector.enrollment import TABLE as ENROLLMENTS
from services.collector.enrollment import is_enrolled
from services.collector.host_track import HOSTS, new_track
from services.collector.rejections import identified, output_id, reject
from services.runtime.stage import Decision, InputRecord, Output, StateUpdate, StateView
from services.tpm import eventlog, ima
from services.tpm.errors import (
    InvalidQuoteSignature,
    LimitExceeded,
    MalformedInput,
    TpmError,
    Unsupported,
)
from services.tpm.keys import decode_public
from services.tpm.limits import Limits as LogLimits
from services.tpm.quote import TPM_ST_ATTEST_QUOTE, decode_attest, verify_attest_signature
from services.wire.coords import coordinates_record
from services.wire.ids import record_digest
from services.wire.records import (
    Coordinates,
    EkIdentity,
    EvidenceCollected,
    EvidenceSubmitted,
    QuoteCounters,
)
from services.wire.subjects import EVIDENCE_COLLECTED
from services.wire.time import epoch_ms

MAX_NONCE_BYTES: Final = 64


def size_problem(rec: EvidenceSubmitted, limits: IntakeLimits) -> str:
    """A sentence naming the first size or count limit ``rec`` exceeds, or ``""``."""
    boot_log, ima_log = rec.boot_log, rec.ima_log
    sized = (("boot_log", len(boot_log), limits.max_boot_log_bytes, "bytes"),
             ("ima_log", len(ima_log or b""), limits.max_ima_bytes, "bytes"),
             ("quote_attest", len(rec.quote_attest), limits.max_quote_bytes, "bytes"),
             ("quote_signature", len(rec.quote_signature), limits.max_signature_bytes,
              "bytes"),
             ("nonce", len(rec.nonce), MAX_NONCE_BYTES, "bytes"),
             ("pcr_values", len(rec.pcr_values), limits.max_pcr_values, "entries"))
    for name, size, limit, unit in sized:
        if size > limit:
            return f"field {name} has {size} {unit} (limit {limit})"
    try:
        eventlog.parse_event_log(boot_log, limits=LogLimits(
            max_log_bytes=limits.max_boot_log_bytes, max_events=limits.max_log_events))
    except LimitExceeded as exc:
        return f"field boot_log: {exc}"
    except TpmError:
        pass  # does not parse: the verifier's verdict, not an intake refusal
    if ima_log:
        try:
            ima.parse_binary(ima_log, limits=ima.Limits(max_input_bytes=limits.max_ima_bytes,
                                                        max_entries=limits.max_ima_entries))
        except LimitExceeded as exc:
            return f"field ima_log: {exc}"
        except TpmError:
            pass
    return ""


def _used_nonce_detail(used: Any, host: str, what: str) -> str:
    ev = used["evidence"]
    where = f"{ev['topic']}[{ev['partition']}]@{ev['offset']}"
    if used["host_id"] != host:
        return f"{what} was issued to and used by another host (evidence {where})"
    return f"{what} was already used by evidence {where}"


def _ranges(pcrs: Any) -> str:
    """``[0, 1, 2, 8, 12, 13]`` -> ``"0-2,8,12-13"``."""
    out: list[str] = []
    run: list[int] = []
    for p in sorted(set(pcrs)):
        if run and p == run[-1] + 1:
            run.append(p)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [p]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "none"


def _selection_text(selection: Any) -> str:
    return "+".join(f"{str(bank).lower()}:{_ranges(pcrs)}" for bank, pcrs in selection) or "none"


def selection_mismatch(asked: Any, quoted: tuple[tuple[str, tuple[int, ...]], ...]) -> str:
    """A sentence naming what ``asked`` (``hostgate.PcrSelection`` records) and the quote's
    selection differ in, or ``""`` when the quote covers exactly what was asked."""
    want = {str(s["bank"]).lower(): frozenset(s["pcrs"]) for s in asked}
    got: dict[str, frozenset[int]] = {}
    twice = False
    for bank, pcrs in quoted:
        if not pcrs:
            continue  # an empty bitmap covers nothing (and hashes nothing)
        twice = twice or bank in got
        got[bank] = frozenset(pcrs)
    if not twice and got == want:
        return ""
    asked_text = _selection_text((s["bank"], s["pcrs"]) for s in asked)
    why = " (a bank is selected more than once)" if twice else ""
    return (f"field quote_attest: the quote covers {_selection_text(quoted)}{why}, the "
            f"challenge asked for {asked_text}: quote exactly the challenge's selection "
            "(the policy in force decides coverage)")


@identified
def decide_evidence(inp: InputRecord, state: StateView, cfg: CollectorConfig) -> Decision:
    """An ``EvidenceSubmitted``: forward to ``attest.collected.v1`` or reject with a reason."""
    topic = cfg.topics.rejections
    rec = EvidenceSubmitted.from_avro(inp.record)
    host = rec.host_id
    now = inp.timestamp_ms
    enrolment = state.get(ENROLLMENTS, host)
    if not is_enrolled(enrolment):
        return reject(inp, topic, "UNENROLLED_AK", f"host {host!r} has no enrolled AK")
    assert enrolment is not None
    problem = size_problem(rec, cfg.limits)
    if problem:
        return reject(inp, topic, "OVER_LIMITS", problem)

    nonce, challenge_id = rec.nonce, rec.challenge_id
    pending = state.get(CHALLENGES, challenge_id)
    if pending is None:
        used = state.get(NONCES, nonce.hex())
        if used is not None:
            return reject(inp, topic, "REPLAYED_NONCE", _used_nonce_detail(used, host, "nonce"),
                          extra_log={"anomaly": True})
        return reject(inp, topic, "UNKNOWN_NONCE",
                      f"field challenge_id {challenge_id[:80]!r}: no open challenge of that id "
                      "(never issued, already used or forgotten after expiry)")
    if pending["host_id"] != host:
        return reject(inp, topic, "UNKNOWN_NONCE",
                      f"field challenge_id {challenge_id[:80]!r} was issued to another host",
                      extra_log={"anomaly": True})
    issued_nonce = bytes(pending["nonce"])
    if not hmac.compare_digest(issued_nonce, nonce):
        return reject(inp, topic, "UNKNOWN_NONCE",
                      f"field nonce is not the nonce issued with challenge {challenge_id[:80]!r}")

    current = state.get(HOSTS, host)
    track = dict(current) if current is not None else new_track(host, now)
    updates = sweep(track, state, now)  # also tombstones this challenge if it expired
    expires = epoch_ms(pending["expires_at"])
    if now > expires:
        return reject(inp, topic, "STALE_NONCE",
                      f"nonce of challenge {challenge_id[:80]!r} expired {now - expires} ms "
                      "before the evidence arrived",
                      state_updates=(*updates, StateUpdate(HOSTS, host, track)))

    attest = rec.quote_attest
    try:
        ak = decode_public(bytes(enrolment["ak_public"]), cfg.memo)
        verify_attest_signature(ak, attest, rec.quote_signature, cfg.memo)
    except (InvalidQuoteSignature, Unsupported) as exc:
        return reject(inp, topic, "BAD_SIGNATURE",
                      f"field quote_signature: not a signature by the host's enrolled AK: {exc}",
                      extra_log={"anomaly": True})
    except MalformedInput as exc:
        return reject(inp, topic, "MALFORMED", f"field quote_signature: {exc}")
    try:
        quoted = decode_attest(attest)
    except MalformedInput as exc:
        return reject(inp, topic, "MALFORMED", f"field quote_attest: {exc}")
    if quoted.type != TPM_ST_ATTEST_QUOTE:
        return reject(inp, topic, "MALFORMED",
                      f"field quote_attest: type {quoted.type:#06x} is not TPM_ST_ATTEST_QUOTE")
    if not hmac.compare_digest(quoted.extra_data, issued_nonce):
        used = state.get(NONCES, quoted.extra_data.hex()) if quoted.extra_data else None
        if used is not None:
            return reject(inp, topic, "REPLAYED_NONCE",
                          _used_nonce_detail(used, host, "the quote's extraData nonce"),
                          extra_log={"anomaly": True})
        return reject(inp, topic, "UNKNOWN_NONCE",
                      "field quote_attest: extraData is not the issued nonce (the quote was "
                      "made for another challenge)", extra_log={"anomaly": True})

    source = coordinates_record(inp.coordinates)
    used_row = {"nonce": issued_nonce, "host_id": host, "challenge_id": challenge_id,
                "evidence": source, "used_at": now, "expires_at": expires}
    consume = (*updates, StateUpdate(CHALLENGES, challenge_id, None),
               StateUpdate(NONCES, issued_nonce.hex(), used_row))
    remaining = [c for c in track["open_challenges"] if c != challenge_id]
    mismatch = selection_mismatch(pending["pcr_selection"], quoted.selection)
    if mismatch:
        # The host's own signed answer to its own challenge: the challenge is used up (one
        # nonce, one answer), nothing of the evidence is accepted.
        track.update(updated_at=now, open_challenges=remaining,
                     used_nonces=[*track["used_nonces"], issued_nonce.hex()])
        return reject(inp, topic, "SELECTION_MISMATCH", mismatch, extra_log={"anomaly": True},
                      state_updates=(*consume, StateUpdate(HOSTS, host, track)))

    ci = quoted.clock_info
    collected = EvidenceCollected(
        evidence=rec,
        evidence_digest=record_digest(inp.subject, inp.record),
        source=Coordinates.from_avro(source),
        ak_public=bytes(enrolment["ak_public"]),
        ak_name=bytes(enrolment["ak_name"]),
        ek=EkIdentity.from_avro(enrolment["ek"]),
        previous_counters=QuoteCounters.from_optional(track.get("last_counters")),
        nonce_issued_at=epoch_ms(pending["issued_at"]),
        received_at=now,
    )
    track.update(
        last_counters=QuoteCounters.from_clock_info(ci).to_avro(), last_evidence=source,
        updated_at=now,
        open_challenges=remaining, used_nonces=[*track["used_nonces"], issued_nonce.hex()],
    )
    out = Output(topic=cfg.topics.collected, key=host, subject=EVIDENCE_COLLECTED,
                 record=collected.to_avro(), id=output_id(inp, "collected"))
    return Decision(
        outputs=(out,),
        state_updates=(*consume, StateUpdate(HOSTS, host, track)),
        log={"outcome": "collected", "reset_count": ci.reset_count,
             "first_quote": collected.previous_counters is None},
    )
