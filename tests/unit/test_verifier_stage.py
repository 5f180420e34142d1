"""The verifier stage's decide/on_error over in-memory state (no broker, no TPM needed).

Evidence here is hand-built garbage: the point is that hostile, malformed evidence from a known
host becomes a failed verdict with a reason, never an exception escaping ``decide``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from services.errors import ConfigError
from services.runtime.codec import Codec
from services.runtime.stage import Coordinates, InputRecord, OverlayState
from services.runtime.stages import build_stage as registry_build
from services.runtime.topics import Topics
from services.tpm.errors import MalformedLog
from services.verifier import reasons
from services.verifier.core import VERDICT_SUBJECT
from services.verifier.policy_in_force import POLICY_TABLE, published_record
from services.verifier.stage import build_stage
from services.wire.subjects import EVIDENCE_COLLECTED as INPUT_SUBJECT

POLICY = """\
apiVersion: hostgate/v1
kind: AttestationPolicy
metadata:
  id: base
  version: "2"
spec:
  secureBoot:
    enabled: true
"""


class Table:
    """A global table's read side, as the runtime hands it to ``OverlayState``."""

    def __init__(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        self.rows = dict(rows)

    def get(self, key: str) -> Mapping[str, Any] | None:
        return self.rows.get(key)


def garbage_collected(**evidence_changes: Any) -> dict[str, Any]:
    ev = {"evidence_id": "e1", "host_id": "host-1", "challenge_id": "c1", "nonce": b"n" * 32,
          "quote_attest": b"\xff\x54\x43\x47junk", "quote_signature": b"\x00\x18",
          "pcr_values": [{"bank": "SHA256", "pcr": 0, "value": bytes(32)}],
          "active_banks": ["SHA256"], "boot_log": b"", "ima_log": None,
          "agent_version": "x", "quoted_at": 0, "sent_at": 0}
    ev.update(evidence_changes)
    return {"evidence": ev, "evidence_digest": b"\x11" * 32,
            "source": {"topic": "attest.evidence.v1", "partition": 2, "offset": 7},
            "ak_public": b"\x00\x02\x00\x01", "ak_name": b"\x00\x0b" + bytes(32),
            "ek": {"ek_public": b"ek", "ek_cert_sha256": None, "manufacturer": None,
                   "chain_verified": False},
            "previous_counters": None, "nonce_issued_at": 0, "received_at": 1_700_000_000_000}


def _input(record: Mapping[str, Any]) -> InputRecord:
    return InputRecord("host-1", INPUT_SUBJECT, record,
                       Coordinates("attest.collected.v1", 2, 41), 0)


def _state(with_policy: bool) -> OverlayState:
    rows = {"base": published_record(POLICY, version=2, published_at_ms=0, author="t")}
    return OverlayState({}, {POLICY_TABLE: Table(rows if with_policy else {})})


def test_build_stage_needs_a_policy_id_and_declares_the_global_table() -> None:
    with pytest.raises(ConfigError, match="HOSTGATE_POLICY_ID"):
        build_stage({})
    stage = registry_build("verifier", {"HOSTGATE_POLICY_ID": "base",
                                        "HOSTGATE_TOPIC_NAMESPACE": "ns"})
    assert stage.input_topics == ("ns.attest.collected.v1",)
    assert stage.global_tables[POLICY_TABLE].topic == "ns.attest.policies.v1"
    assert stage.dlq == "ns.verifier.dlq.v1" and stage.tables == {}


@pytest.mark.parametrize("with_policy", [True, False])
def test_malformed_quote_is_a_failed_verdict_not_an_exception(with_policy: bool) -> None:
    stage = build_stage({"HOSTGATE_POLICY_ID": "base"})
    decision = stage.decide(_input(garbage_collected()), _state(with_policy))
    (out,) = decision.outputs
    rec = out.record
    assert out.topic == Topics().verdicts and out.key == "host-1"
    assert out.id == rec["verdict_id"] and rec["result"] == "FAIL"
    ids = [f["rule_id"] for f in rec["failed_rules"]]
    if with_policy:
        assert ids == [reasons.QUOTE_MALFORMED]
        assert rec["policy_id"] == "base" and rec["policy_version"] == 2
    else:
        assert ids == [reasons.POLICY_NONE_IN_FORCE, reasons.QUOTE_MALFORMED]
    assert rec["collected"] == {"topic": "attest.collected.v1", "partition": 2, "offset": 41}
    assert rec["evidence"] == {"topic": "attest.evidence.v1", "partition": 2, "offset": 7}
    assert rec["appraised_at"] == 1_700_000_000_000
    Codec.load().encode(VERDICT_SUBJECT, rec)


def test_unknown_bank_and_duplicate_pcr_are_malformed_evidence() -> None:
    stage = build_stage({"HOSTGATE_POLICY_ID": "base"})
    for values in ([{"bank": "UNKNOWN", "pcr": 0, "value": b""}],
                   [{"bank": "SHA1", "pcr": 3, "value": bytes(20)}] * 2,
                   [{"bank": "SHA1", "pcr": 99, "value": bytes(20)}],
                   [{"bank": "SHA1", "pcr": i % 24, "value": bytes(20)} for i in range(121)]):
        rec = stage.decide(_input(garbage_collected(pcr_values=values)),
                           _state(True)).outputs[0].record
        assert [f["rule_id"] for f in rec["failed_rules"]] == [reasons.EVIDENCE_MALFORMED]
        assert rec["ear_status"] == "NONE"


def test_a_broken_policy_record_fails_closed() -> None:
    stage = build_stage({"HOSTGATE_POLICY_ID": "base"})
    bad = {**published_record(POLICY, version=3, published_at_ms=0, author="t"),
           "digest": b"\x00" * 32}
    state = OverlayState({}, {POLICY_TABLE: Table({"base": bad})})
    rec = stage.decide(_input(garbage_collected()), state).outputs[0].record
    assert reasons.POLICY_UNUSABLE in [f["rule_id"] for f in rec["failed_rules"]]
    assert rec["policy_id"] == ""


def test_on_bug_turns_a_bug_into_a_failed_verdict() -> None:
    stage = build_stage({"HOSTGATE_POLICY_ID": "base"})
    assert stage.on_bug is not None
    decision = stage.on_bug(_input(garbage_collected()), RuntimeError("boom"))
    rec = decision.outputs[0].record
    assert [f["rule_id"] for f in rec["failed_rules"]] == [reasons.INTERNAL_ERROR]
    assert "RuntimeError" in rec["failed_rules"][0]["sentence"]
    assert decision.log["verdict"] == "FAIL"
    Codec.load().encode(VERDICT_SUBJECT, rec)


def test_a_host_fault_that_escapes_appraisal_is_a_failed_verdict_naming_it() -> None:
    stage = build_stage({"HOSTGATE_POLICY_ID": "base"})
    assert stage.on_host_fault is not None
    fault = MalformedLog("event 9 is cut short", offset=4242, field="event_size")
    decision = stage.on_host_fault(_input(garbage_collected()), fault)
    rec = decision.outputs[0].record
    assert [f["rule_id"] for f in rec["failed_rules"]] == [reasons.EVIDENCE_MALFORMED]
    assert "MalformedLog" in rec["failed_rules"][0]["sentence"]
    assert "4242" in rec["failed_rules"][0]["sentence"]
    assert decision.log["verdict"] == "FAIL"
    Codec.load().encode(VERDICT_SUBJECT, rec)


def _policy_cli(argv: list[str]) -> int:
    import argparse

    from services.verifier import cli_policy

    parser = argparse.ArgumentParser(prog="hostgate")
    cli_policy.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_publish_refuses_a_malformed_policy_with_line_and_reason(tmp_path: Any) -> None:
    from services.verifier.policy.errors import PolicyError

    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: hostgate/v1\nkind: AttestationPolicy\nmetadata: [\n")
    with pytest.raises(PolicyError) as info:  # refused before any broker is contacted
        _policy_cli(["policy", "publish", str(bad), "--broker", "127.0.0.1:1"])
    assert info.value.line == 4 and "not valid YAML" in str(info.value)
    odd = tmp_path / "odd.yaml"
    odd.write_text(POLICY.replace('version: "2"', 'version: "99999999999"'))
    with pytest.raises(ConfigError, match="--policy-version"):
        _policy_cli(["policy", "publish", str(odd), "--broker", "127.0.0.1:1"])
