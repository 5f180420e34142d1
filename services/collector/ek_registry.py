"""The EK registry: one EK <-> one host id, across every partition and worker. Pure.

Host id -> EK is single-writer already: a host's records are all on its key's partition
(``WRONG_PARTITION`` refuses the rest), so the task owning that partition is the only one that
ever writes the host's ``enrollments`` row, and ``EK_CHANGED`` keeps its EK. EK -> host id
needs the same for the other key. It is the repartition step of a foreign-key join: a correct
activation proof, decided on the host's task, writes an ``EkBindingRequested`` keyed by the
EK's digest (``services.ekid``) to ``collector.ek-bindings.v1``, which the collector consumes
like any input. Kafka's partitioner sends it to the one task owning that digest's partition,
whose ``ek_bindings`` table (EK digest -> ``EkBinding``) is the single writer for that EK; it
grants (the EK is free, or already this host's: an AK rotation) or refuses (another host id
holds it) and answers with an ``EkBindingDecided`` keyed by the host id on
``collector.ek-grants.v1``, which lands back on the host's task
(``enrollment.decide_binding_answer``). First come, first served: two ids racing for one EK are
ordered by the EK's partition.

Every step is one exactly-once transaction of the task that takes it (outputs, changelog rows
and input offsets together), so a crash between any two steps replays the step, never half of
it: a grant is in the table exactly when its answer is on the topic. A rebalance moves a task
with its changelog partition; the new owner's InitProducerId fences the old one.

``RELEASE`` removes a binding that names the requesting host (an operator release, or a grant
handed back because its host no longer waits for it); a RELEASE naming another host changes
nothing, so nobody can release someone else's EK.
"""

from __future__ import annotations

import hmac
from typing import Final

from services.collector.config import CollectorConfig
from services.collector.enrollment import InternalRecordError
from services.collector.rejections import output_id
from services.runtime.stage import Decision, InputRecord, Output, StateUpdate, StateView
from services.wire.coords import coordinates_record
from services.wire.subjects import EK_BINDING_DECIDED
from services.wire.time import epoch_ms

TABLE: Final = "ek_bindings"
"""EK digest (hex) -> ``hostgate.EkBinding``, on the EK's partition."""


def decide_binding_request(inp: InputRecord, state: StateView, cfg: CollectorConfig
                           ) -> Decision:
    """Grant, refuse or release one EK binding (the module docstring)."""
    rec = inp.record
    digest = bytes(rec["ek_key_sha256"])
    if inp.key != digest.hex():
        raise InternalRecordError(f"EkBindingRequested at {inp.coordinates}: key {inp.key!r} is "
                                  "not its EK digest")
    host: str = rec["host_id"]
    current = state.get(TABLE, digest.hex())
    holder = None if current is None else str(current["host_id"])
    now = epoch_ms(rec["requested_at"])
    if rec["action"] == "RELEASE":
        if holder is not None and hmac.compare_digest(holder.encode(), host.encode()):
            return Decision(state_updates=(StateUpdate(TABLE, digest.hex(), None),),
                            log={"outcome": "ek-released"})
        return Decision(log={"outcome": "ek-release-ignored"})
    if rec["action"] != "BIND":
        raise InternalRecordError(f"EkBindingRequested at {inp.coordinates}: action "
                                  f"{rec['action']!r} is not understood")
    granted = holder is None or holder == host
    decision_id = output_id(inp, "ek-decided")
    answer = Output(topic=cfg.topics.ek_grants, key=host, subject=EK_BINDING_DECIDED,
                    id=decision_id,
                    record={"decision_id": decision_id, "host_id": host, "ek_key_sha256": digest,
                            "challenge_id": rec.get("challenge_id"),
                            "outcome": "GRANTED" if granted else "REFUSED",
                            "holder_host_id": None if granted else holder,
                            "decided_at": now, "request": coordinates_record(inp.coordinates)})
    if not granted:
        return Decision(outputs=(answer,), log={"outcome": "ek-refused", "anomaly": True})
    row = {"ek_key_sha256": digest, "host_id": host,
           "challenge_id": (current or {}).get("challenge_id") or rec.get("challenge_id"),
           "bound_at": now if current is None else epoch_ms(current["bound_at"]),
           "updated_at": now,
           "cause": current["cause"] if current is not None else rec["cause"]}
    return Decision(outputs=(answer,), state_updates=(StateUpdate(TABLE, digest.hex(), row),),
                    log={"outcome": "ek-granted", "rebind": current is not None})
