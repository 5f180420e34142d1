"""Operator identity commands: releasing a host id and its EK binding, with an audit record.

``hostgate identity release HOST --actor NAME --reason TEXT`` publishes an ``IdentityCommand``
on ``attest.identity.v1``, a topic only the operator principal may write (``deploy/``). The
collector task owning the host's partition (the single writer of its ``enrollments`` row):

* tombstones the host's enrolment (enrolled AK and EK, and every pending activation), and
  forgets its previous quote counters and the clock of its last signed challenge request (they
  belong to the old TPM: a new TPM's clock starts lower, and the old AK signs nothing any more);
* sends a ``RELEASE`` to the EK registry for the enrolled EK and for every activation already
  waiting for a grant (``services.collector.ek_registry``: it removes a binding only if it
  names this host);
* writes an ``IdentityEvent`` RELEASED on ``attest.identity.events.v1`` (kept forever): who,
  why, the previous state, the released EK digests and AK name. The issuer reads it and
  resets the EK it binds the host to.

All in one transaction. A command for a host with no enrolment, with an action this version
does not know, or without actor and reason, is an ``IdentityEvent`` REFUSED and changes
nothing. Afterwards the host, or a re-imaged machine with a new TPM, enrols like a new host.
"""

from __future__ import annotations

from typing import Any, Final

from services.collector.config import CollectorConfig
from services.collector.enrollment import BINDING, TABLE, enrolled_ek_digest, is_enrolled
from services.collector.enrollment import binding_request as _binding_request
from services.collector.host_track import HOSTS
from services.collector.rejections import output_id
from services.runtime.stage import Decision, InputRecord, Output, StateUpdate, StateView
from services.wire.coords import coordinates_record
from services.wire.subjects import IDENTITY_EVENT

MAX_TEXT: Final = 500


def _event(inp: InputRecord, cfg: CollectorConfig, kind: str, detail: str, *,
           previous: str = "NONE", released: list[bytes] | None = None,
           ak_name: bytes | None = None) -> Output:
    rec = inp.record
    event_id = output_id(inp, "identity-event")
    host = str(rec.get("host_id", inp.key or ""))
    return Output(topic=cfg.topics.identity_events, key=inp.key or host, subject=IDENTITY_EVENT,
                  id=event_id,
                  record={"event_id": event_id, "host_id": host, "event": kind,
                          "command_id": str(rec.get("command_id", ""))[:MAX_TEXT],
                          "actor": str(rec.get("actor", ""))[:MAX_TEXT],
                          "reason": str(rec.get("reason", ""))[:MAX_TEXT],
                          "previous_state": previous, "released_ek_sha256": released or [],
                          "released_ak_name": ak_name, "detail": detail[:1000],
                          "occurred_at": inp.timestamp_ms, "source": coordinates_record(inp.coordinates)})


def _refused(inp: InputRecord, cfg: CollectorConfig, detail: str) -> Decision:
    return Decision(outputs=(_event(inp, cfg, "REFUSED", detail),),
                    log={"outcome": "identity-refused"})


def decide_identity_command(inp: InputRecord, state: StateView, cfg: CollectorConfig
                            ) -> Decision:
    """One ``IdentityCommand`` (see the module docstring)."""
    rec = inp.record
    host = str(rec["host_id"])
    if inp.key != host:
        return _refused(inp, cfg, f"command host_id {host[:64]!r} differs from its Kafka key "
                        f"{(inp.key or '')[:64]!r}")
    if not host or len(host) > cfg.limits.max_id_chars:
        return _refused(inp, cfg, f"host_id must be 1..{cfg.limits.max_id_chars} characters")
    for name in ("actor", "reason", "command_id"):
        if not str(rec[name]).strip():
            return _refused(inp, cfg, f"field {name} is empty: every identity command names "
                            "who asked and why")
    if rec["action"] != "RELEASE":
        return _refused(inp, cfg, f"action {rec['action']!r} is not understood")
    row = state.get(TABLE, host)
    if row is None:
        return _refused(inp, cfg, f"host {host!r} has no enrolment: nothing to release")
    digests: list[bytes] = []
    if is_enrolled(row):
        digests.append(enrolled_ek_digest(row))
    for p in row.get("pending") or []:
        digest = bytes(p["ek_key_sha256"])
        if p.get("stage") == BINDING and digest not in digests:
            digests.append(digest)
    outputs = [_binding_request(inp, cfg, action="RELEASE", host=host, digest=d,
                                command_id=str(rec["command_id"]), n=i)
               for i, d in enumerate(digests)]
    enrolled = is_enrolled(row)
    ak_name = bytes(row["ak_name"]) if enrolled else None
    outputs.append(_event(
        inp, cfg, "RELEASED",
        f"host {host!r} released by {str(rec['actor'])[:64]!r}: enrolment removed, "
        f"{len(digests)} EK binding(s) released; the host must enrol again",
        previous=str(row.get("state") or "UNKNOWN"), released=digests, ak_name=ak_name))
    updates = [StateUpdate(TABLE, host, None)]
    track = state.get(HOSTS, host)
    if track is not None:
        fresh: dict[str, Any] = {**track, "last_counters": None, "last_evidence": None,
                                 "updated_at": inp.timestamp_ms}
        if "last_request_counters" in fresh:
            fresh["last_request_counters"] = None
        updates.append(StateUpdate(HOSTS, host, fresh))
    return Decision(outputs=tuple(outputs), state_updates=tuple(updates),
                    log={"outcome": "identity-released", "released_eks": len(digests)})
