"""The records the evidence path carries between stages, as frozen, typed values.

``schemas/`` is the contract; these classes are its Python face for the three records every
attestation crosses: the host's ``hostgate.EvidenceSubmitted``, the collector's
``hostgate.EvidenceCollected`` (the submission wrapped in what intake established) and the
verifier's ``hostgate.Verdict``. A core reads attributes instead of string keys, so a typo is a
type error in CI rather than a ``KeyError`` on one record in production.

Each class has ``from_avro`` (a record as the codec decoded it) and ``to_avro`` (the record the
codec encodes). Field names are the schema's, one for one; ``tests/unit/test_wire_records.py``
checks each class against its schema and that ``to_avro(from_avro(r))`` encodes to the same
bytes as ``r``. Timestamps (``timestamp-millis``) are held as integer epoch milliseconds, the
form every core computes with (``services.wire.time``). Nested records that no core reads by
field (a verdict's trust vector, an offending event) stay mappings.

Nothing here validates what a host sent beyond its type: the codec has already checked the
record against its schema, and size and content checks belong to intake and appraisal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from services.tpm.quote import ClockInfo
from services.wire.time import epoch_ms

_LONG_MAX: Final = 0x7FFF_FFFF_FFFF_FFFF

__all__ = [
    "Coordinates",
    "EkIdentity",
    "EvidenceCollected",
    "EvidenceSubmitted",
    "FailedRule",
    "PcrValue",
    "QuoteCounters",
    "Verdict",
]


def _optional_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


@dataclass(frozen=True, slots=True)
class Coordinates:
    """``hostgate.Coordinates``: where a Kafka record lives, enough to fetch it again."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> Coordinates:
        return cls(str(rec["topic"]), int(rec["partition"]), int(rec["offset"]))

    def to_avro(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


NOWHERE = Coordinates("", -1, -1)
"""The coordinates of a record that was never read from a topic (a test's, a replay's)."""


@dataclass(frozen=True, slots=True)
class PcrValue:
    """``hostgate.PcrValue``: one PCR's value in one bank (``bank`` is the Avro symbol, e.g.
    ``SHA256``, possibly one this version does not know: ``services.wire.banks``)."""

    bank: str
    pcr: int
    value: bytes

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> PcrValue:
        return cls(str(rec["bank"]), int(rec["pcr"]), bytes(rec["value"]))

    def to_avro(self) -> dict[str, Any]:
        return {"bank": self.bank, "pcr": self.pcr, "value": self.value}


@dataclass(frozen=True, slots=True)
class QuoteCounters:
    """``hostgate.QuoteCounters``: the TPMS_CLOCK_INFO counters of a quote."""

    reset_count: int
    restart_count: int
    clock: int
    safe: bool

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> QuoteCounters:
        return cls(int(rec["reset_count"]), int(rec["restart_count"]), int(rec["clock"]),
                   bool(rec["safe"]))

    @classmethod
    def from_clock_info(cls, info: ClockInfo) -> QuoteCounters:
        """A quote's counters as recorded. ``clock`` is a UINT64 on the TPM and an Avro
        ``long`` here: its top bit is dropped (a clock that old is 292 million years)."""
        return cls(info.reset_count, info.restart_count, info.clock & _LONG_MAX, info.safe)

    def clock_info(self) -> ClockInfo:
        """As the evidence library's :class:`~services.tpm.quote.ClockInfo`."""
        return ClockInfo(clock=self.clock, reset_count=self.reset_count,
                         restart_count=self.restart_count, safe=self.safe)

    @classmethod
    def from_optional(cls, rec: Mapping[str, Any] | None) -> QuoteCounters | None:
        return None if rec is None else cls.from_avro(rec)

    def to_avro(self) -> dict[str, Any]:
        return {"reset_count": self.reset_count, "restart_count": self.restart_count,
                "clock": self.clock, "safe": self.safe}


@dataclass(frozen=True, slots=True)
class EkIdentity:
    """``hostgate.EkIdentity``: what the collector established about a host's EK at
    enrolment."""

    ek_public: bytes
    ek_cert_sha256: bytes | None
    manufacturer: str | None
    chain_verified: bool

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> EkIdentity:
        manufacturer = rec.get("manufacturer")
        return cls(bytes(rec["ek_public"]), _optional_bytes(rec.get("ek_cert_sha256")),
                   None if manufacturer is None else str(manufacturer),
                   bool(rec["chain_verified"]))

    def to_avro(self) -> dict[str, Any]:
        return {"ek_public": self.ek_public, "ek_cert_sha256": self.ek_cert_sha256,
                "manufacturer": self.manufacturer, "chain_verified": self.chain_verified}


@dataclass(frozen=True, slots=True)
class EvidenceSubmitted:
    """``hostgate.EvidenceSubmitted`` (``attest.evidence.v1``): a host's quote, PCR values and
    logs. Every field is the host's word until intake and appraisal have checked it."""

    evidence_id: str
    host_id: str
    challenge_id: str
    nonce: bytes
    quote_attest: bytes
    quote_signature: bytes
    pcr_values: tuple[PcrValue, ...]
    active_banks: tuple[str, ...]
    boot_log: bytes
    ima_log: bytes | None
    agent_version: str
    quoted_at: int
    sent_at: int

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> EvidenceSubmitted:
        return cls(
            evidence_id=str(rec["evidence_id"]), host_id=str(rec["host_id"]),
            challenge_id=str(rec["challenge_id"]), nonce=bytes(rec["nonce"]),
            quote_attest=bytes(rec["quote_attest"]),
            quote_signature=bytes(rec["quote_signature"]),
            pcr_values=_pcr_values(rec["pcr_values"]),
            active_banks=tuple(str(b) for b in rec.get("active_banks") or ()),
            boot_log=bytes(rec["boot_log"]), ima_log=_optional_bytes(rec.get("ima_log")),
            agent_version=str(rec["agent_version"]), quoted_at=epoch_ms(rec["quoted_at"]),
            sent_at=epoch_ms(rec["sent_at"]))

    def to_avro(self) -> dict[str, Any]:
        return {
            "evidence_id": self.evidence_id, "host_id": self.host_id,
            "challenge_id": self.challenge_id, "nonce": self.nonce,
            "quote_attest": self.quote_attest, "quote_signature": self.quote_signature,
            "pcr_values": [v.to_avro() for v in self.pcr_values],
            "active_banks": list(self.active_banks), "boot_log": self.boot_log,
            "ima_log": self.ima_log, "agent_version": self.agent_version,
            "quoted_at": self.quoted_at, "sent_at": self.sent_at,
        }


@dataclass(frozen=True, slots=True)
class EvidenceCollected:
    """``hostgate.EvidenceCollected`` (``attest.collected.v1``): a submission intake accepted,
    with the enrolled AK, the EK identity and the host's previous quote counters."""

    evidence: EvidenceSubmitted
    evidence_digest: bytes
    source: Coordinates
    ak_public: bytes
    ak_name: bytes
    ek: EkIdentity
    previous_counters: QuoteCounters | None
    nonce_issued_at: int
    received_at: int

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> EvidenceCollected:
        return cls(
            evidence=EvidenceSubmitted.from_avro(rec["evidence"]),
            evidence_digest=bytes(rec["evidence_digest"]),
            source=Coordinates.from_avro(rec["source"]), ak_public=bytes(rec["ak_public"]),
            ak_name=bytes(rec["ak_name"]), ek=EkIdentity.from_avro(rec["ek"]),
            previous_counters=QuoteCounters.from_optional(rec.get("previous_counters")),
            nonce_issued_at=epoch_ms(rec["nonce_issued_at"]),
            received_at=epoch_ms(rec["received_at"]))

    def to_avro(self) -> dict[str, Any]:
        return {
            "evidence": self.evidence.to_avro(), "evidence_digest": self.evidence_digest,
            "source": self.source.to_avro(), "ak_public": self.ak_public,
            "ak_name": self.ak_name, "ek": self.ek.to_avro(),
            "previous_counters": None if self.previous_counters is None
            else self.previous_counters.to_avro(),
            "nonce_issued_at": self.nonce_issued_at, "received_at": self.received_at,
        }


@dataclass(frozen=True, slots=True)
class FailedRule:
    """``hostgate.FailedRule``: one failed rule or check, one plain sentence, and the event
    that broke it (a ``hostgate.OffendingEvent`` record) when there is one."""

    rule_id: str
    sentence: str
    event: Mapping[str, Any] | None = None

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> FailedRule:
        event = rec.get("event")
        return cls(str(rec["rule_id"]), str(rec["sentence"]),
                   None if event is None else dict(event))

    def to_avro(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "sentence": self.sentence,
                "event": dict(self.event) if self.event is not None else None}


@dataclass(frozen=True, slots=True)
class Verdict:
    """``hostgate.Verdict`` (``attest.verdicts.v1``): one appraisal's outcome."""

    verdict_id: str
    host_id: str
    result: str
    failed_rules: tuple[FailedRule, ...]
    claims_json: str
    policy_id: str
    policy_version: int
    policy_digest: bytes
    evidence: Coordinates
    evidence_digest: bytes
    collected: Coordinates
    trustworthiness: Mapping[str, Any]
    ear_status: str
    ear_json: str
    quote_counters: QuoteCounters | None
    ek_public: bytes
    ak_name: bytes
    attested_pcrs: tuple[PcrValue, ...]
    appraised_at: int

    @property
    def passed(self) -> bool:
        return self.result == "PASS"

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> Verdict:
        return cls(
            verdict_id=str(rec["verdict_id"]), host_id=str(rec["host_id"]),
            result=str(rec["result"]),
            failed_rules=tuple(FailedRule.from_avro(f) for f in rec["failed_rules"]),
            claims_json=str(rec["claims_json"]), policy_id=str(rec["policy_id"]),
            policy_version=int(rec["policy_version"]),
            policy_digest=bytes(rec["policy_digest"]),
            evidence=Coordinates.from_avro(rec["evidence"]),
            evidence_digest=bytes(rec["evidence_digest"]),
            collected=Coordinates.from_avro(rec["collected"]),
            trustworthiness=dict(rec["trustworthiness"]), ear_status=str(rec["ear_status"]),
            ear_json=str(rec["ear_json"]),
            quote_counters=QuoteCounters.from_optional(rec.get("quote_counters")),
            ek_public=bytes(rec["ek_public"]), ak_name=bytes(rec["ak_name"]),
            attested_pcrs=_pcr_values(rec["attested_pcrs"]),
            appraised_at=epoch_ms(rec["appraised_at"]))

    def to_avro(self) -> dict[str, Any]:
        return {
            "verdict_id": self.verdict_id, "host_id": self.host_id, "result": self.result,
            "failed_rules": [f.to_avro() for f in self.failed_rules],
            "claims_json": self.claims_json, "policy_id": self.policy_id,
            "policy_version": self.policy_version, "policy_digest": self.policy_digest,
            "evidence": self.evidence.to_avro(), "evidence_digest": self.evidence_digest,
            "collected": self.collected.to_avro(),
            "trustworthiness": dict(self.trustworthiness), "ear_status": self.ear_status,
            "ear_json": self.ear_json,
            "quote_counters": None if self.quote_counters is None
            else self.quote_counters.to_avro(),
            "ek_public": self.ek_public, "ak_name": self.ak_name,
            "attested_pcrs": [v.to_avro() for v in self.attested_pcrs],
            "appraised_at": self.appraised_at,
        }


def _pcr_values(items: Sequence[Mapping[str, Any]]) -> tuple[PcrValue, ...]:
    return tuple(PcrValue.from_avro(v) for v in items)
