"""The ``evidence`` section: the claims come from a log that replayed to a quote, with no
fatal anomaly and no non-fatal one the policy does not accept (always evaluated).
"""

from __future__ import annotations

from typing import Final

from services.tpm.eventlog import event_type_name
from services.verifier.policy import ids
from services.verifier.policy.events import shorten
from services.verifier.policy.model import TOLERANT_PCRS, EvidenceSpec
from services.verifier.policy.results import RuleResult
from services.verifier.policy.rules._common import FAIL, PASS, Subject, _r

TYPE_REASONS: Final = frozenset({"tpm.event.unknown_type", "tpm.event.unexpected_type"})
"""Anomaly reasons about an event's type, which ``evidence.allowedEventTypes`` may accept in a
tolerant PCR."""


def check_evidence(spec: EvidenceSpec, s: Subject) -> list[RuleResult]:
    c = s.claims
    rule = ids.EVIDENCE_ANOMALIES
    if not c.replay_verified:
        return [_r(rule, FAIL, "The claims were not read from a log that replayed to a quote.")]
    accepted_types = {(t.pcr, event_type_name(t.event_type)) for t in spec.allowed_event_types
                      if t.pcr in TOLERANT_PCRS}
    fatal = [a for a in c.anomalies if a.fatal
             and not (a.reason in TYPE_REASONS and (a.pcr, a.event_type) in accepted_types)]
    allowed = set(spec.allowed_anomalies)
    other = [a for a in c.anomalies if not a.fatal and a.reason not in allowed]
    for a in (*fatal, *other):
        kind = "a fatal" if a.fatal else "an unaccepted"
        return [_r(rule, FAIL, f"The log has {kind} anomaly {a.reason}: {shorten(a.detail, 100)} "
                   f"(event {a.seq} in PCR {a.pcr}).",
                   s.index.ref(a.seq, a.detail, pcr=a.pcr, type_name=a.event_type))]
    accepted = len(c.anomalies)
    extra = f" ({accepted} accepted by the policy)" if accepted else ""
    return [_r(rule, PASS, f"The evidence has no unaccepted anomaly{extra}.")]
