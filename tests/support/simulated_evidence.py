"""Build ``hostgate.EvidenceCollected`` records from simulator evidence, as the collector would.

For tests and benchmarks of the verifier without a collector in the loop: the record
carries what intake would have established (the enrolled AK and its name, the EK identity, the
previous counters) and the evidence digest the collector computes
(``services.wire.ids.record_digest``). Nothing here checks anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.agent.fleet import Evidence
from services.tpm.keys import decode_public
from services.wire.banks import SYMBOL_OF_BANK
from services.wire.ids import record_digest

EVIDENCE_SUBJECT = "hostgate.EvidenceSubmitted"


def submitted_record(evidence: Evidence, *, evidence_id: str, challenge_id: str = "challenge",
                     active_banks: Sequence[str] = (), quoted_at_ms: int = 0,
                     ima_log: bytes | None = None) -> dict[str, Any]:
    """The ``hostgate.EvidenceSubmitted`` record an agent would send for ``evidence``."""
    q = evidence.quote
    pcr_values = [{"bank": SYMBOL_OF_BANK[bank], "pcr": pcr, "value": bytes(value)}
                  for bank in sorted(q.pcr_values) for pcr, value in sorted(
                      q.pcr_values[bank].items())]
    return {
        "evidence_id": evidence_id,
        "host_id": evidence.host_id,
        "challenge_id": challenge_id,
        "nonce": evidence.requested_nonce,
        "quote_attest": q.attest,
        "quote_signature": q.signature,
        "pcr_values": pcr_values,
        "active_banks": [SYMBOL_OF_BANK[b] for b in active_banks],
        "boot_log": evidence.event_log,
        "ima_log": ima_log,
        "agent_version": "simulator",
        "quoted_at": quoted_at_ms,
        "sent_at": quoted_at_ms,
    }


def collected_record(
    submitted: Mapping[str, Any],
    *,
    ak_public: bytes,
    ek_public: bytes,
    received_at_ms: int,
    source: tuple[str, int, int] = ("attest.evidence.v1", 0, 0),
    previous_counters: Mapping[str, Any] | None = None,
    chain_verified: bool = True,
) -> dict[str, Any]:
    """The ``hostgate.EvidenceCollected`` record intake would write for ``submitted``."""
    topic, partition, offset = source
    return {
        "evidence": dict(submitted),
        "evidence_digest": record_digest(EVIDENCE_SUBJECT, submitted),
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "ak_public": ak_public,
        "ak_name": decode_public(ak_public).name,
        "ek": {"ek_public": ek_public, "ek_cert_sha256": None, "manufacturer": None,
               "chain_verified": chain_verified},
        "previous_counters": dict(previous_counters) if previous_counters is not None else None,
        "nonce_issued_at": received_at_ms - 1000,
        "received_at": received_at_ms,
    }
