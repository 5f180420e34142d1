"""Builders for the incidents tests: real Avro records (encoded and decoded with the project's
codec, so inputs look exactly as the runtime hands them over) and a driver that applies each
decision to an ``OverlayState`` the way the runtime does, encoding every output and state value
with the codec on the way (so a record that does not fit its schema fails the test)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.incidents.config import IncidentsConfig
from services.incidents.core import (
    COMMAND,
    INTAKE_REJECTED,
    VERDICT,
    IncidentsDecision,
    assess,
)
from services.incidents.ocsf import SocFinding
from services.runtime.codec import Codec
from services.runtime.stage import Coordinates, InputRecord, Output, OverlayState

CODEC = Codec.load()
TABLE_SUBJECTS = {"incidents": "hostgate.IncidentState", "hosts": "hostgate.IncidentsRoster"}
T0 = 1_760_000_000_000  # 2025-10-09T08:53:20Z, an arbitrary fixed time
HOUR = 3600 * 1000
EK_PUBLIC = b"\x00\x01EK-PUBLIC-AREA-NOT-FOR-FINDINGS" * 4
AK_NAME = b"\x00\x0bAK-NAME-NOT-FOR-FINDINGS-0123456789"


def roundtrip(subject: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` as the runtime's decoder returns it (datetimes for timestamps, etc.)."""
    decoded = CODEC.decode(CODEC.encode(subject, record))
    assert decoded.subject == subject
    return dict(decoded.record)


def _coords(topic: str, partition: int, offset: int) -> dict[str, Any]:
    return {"topic": topic, "partition": partition, "offset": offset}


def failed_rule(rule_id: str, pcr: int = 7, seq: int = 12) -> dict[str, Any]:
    return {"rule_id": rule_id, "sentence": f"{rule_id} did not hold",
            "event": {"pcr": pcr, "seq": seq, "untrusted_event_type": 0x80000001,
                      "event_type_name": "EV_EFI_VARIABLE_DRIVER_CONFIG", "bank": "SHA256",
                      "digest": hashlib.sha256(rule_id.encode()).digest(),
                      "data_summary": "SecureBoot=0"}}


def verdict(host: str, n: int, *, result: str = "FAIL", at: int = T0,
            rules: Sequence[str] = ("secureboot.enabled",)) -> dict[str, Any]:
    evidence_digest = hashlib.sha256(f"{host}/{n}".encode()).digest()
    return {
        "verdict_id": f"v-{host}-{n}", "host_id": host, "result": result,
        "failed_rules": [] if result == "PASS" else [failed_rule(r) for r in rules],
        "claims_json": "{}", "policy_id": "fleet-default", "policy_version": 3,
        "policy_digest": hashlib.sha256(b"policy v3").digest(),
        "evidence": _coords("attest.evidence.v1", 2, 100 + n),
        "evidence_digest": evidence_digest,
        "collected": _coords("attest.collected.v1", 2, 200 + n),
        "trustworthiness": {k: "NONE" for k in (
            "instance_identity", "configuration", "executables", "file_system", "hardware",
            "runtime_opaque", "storage_opaque", "sourced_data")},
        "ear_status": "CONTRAINDICATED" if result != "PASS" else "AFFIRMING",
        "ear_json": "{}",
        "quote_counters": {"reset_count": 4, "restart_count": 0, "clock": 123456, "safe": True},
        "ek_public": EK_PUBLIC, "ak_name": AK_NAME, "attested_pcrs": [],
        "appraised_at": at,
    }


def rejection(host: str, n: int, *, reason: str = "REPLAYED_NONCE", at: int = T0
              ) -> dict[str, Any]:
    return {"rejection_id": f"rej-{host}-{n}", "host_id": host, "reason": reason,
            "detail": f"nonce of evidence #{n} was already used",
            "source": _coords("attest.evidence.v1", 2, 500 + n),
            "record_subject": "hostgate.EvidenceSubmitted",
            "record_digest": hashlib.sha256(f"rej/{host}/{n}".encode()).digest(),
            "rejected_at": at}


def command(host: str, incident_id: str, action: str, *, n: int, at: int = T0,
            actor: str = "alice@soc", reason: str = "looking into it") -> dict[str, Any]:
    return {"command_id": f"cmd-{n}", "incident_id": incident_id, "host_id": host,
            "action": action, "actor": actor, "reason": reason, "issued_at": at}


SUBJECT_TOPIC = {VERDICT: "attest.verdicts.v1", INTAKE_REJECTED: "attest.rejections.v1",
                 COMMAND: "attest.remediation.v1"}


@dataclass
class Driver:
    """Runs records through the core (``assess``: ``decide`` with its findings still as values)
    against one partition's state, like the runtime."""

    config: IncidentsConfig = field(default_factory=IncidentsConfig)
    partition: int = 0
    state: OverlayState = field(default_factory=lambda: OverlayState({}))
    offsets: dict[str, int] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    findings: list[SocFinding] = field(default_factory=list)

    def feed(self, subject: str, record: Mapping[str, Any], *, key: str | None = None,
             timestamp_ms: int | None = None) -> IncidentsDecision:
        topic = SUBJECT_TOPIC[subject]
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        decoded = roundtrip(subject, record)
        inp = InputRecord(key if key is not None else str(record["host_id"]), subject, decoded,
                          Coordinates(topic, self.partition, offset),
                          timestamp_ms if timestamp_ms is not None else T0)
        result = assess(inp, self.state, self.config)
        for out in result.decision.outputs:  # every output must encode with its schema
            roundtrip(out.subject, out.record)
        for upd in result.decision.state_updates:
            if upd.value is not None:
                roundtrip(TABLE_SUBJECTS[upd.table], upd.value)
        self.state.apply(result.decision.state_updates)
        self.outputs.extend(result.decision.outputs)
        self.findings.extend(result.findings)
        return result

    def incident(self, host: str) -> dict[str, Any] | None:
        rec = self.state.get("incidents", host)
        return None if rec is None else roundtrip("hostgate.IncidentState", rec)

