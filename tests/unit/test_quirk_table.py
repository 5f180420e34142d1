"""The one quirk table: each row as documented, as shown by its corpus logs, accepted by one rule.

``services.tpm.quirks.QUIRKS`` is the only place a firmware quirk is defined; the layers
(replay, binding, IMA) read it, ``accepted`` decides for all of them, and a policy names the
quirks that need accepting in ``spec.evidence.allowedQuirks``.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

from services.tpm import ima
from services.tpm.bindings import check_binding
from services.tpm.errors import MalformedImaList, ReplayMismatch
from services.tpm.eventlog import parse_event_log
from services.tpm.quirks import QUIRKS, Acceptance, Layer, accepted, quirk_by_id
from services.tpm.replay import replay, verify_replay
from services.verifier.core import appraise
from services.verifier.policy.derive import derive_policy, fully_quoted, golden_from_log
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.loader import load_policy
from services.verifier.policy_in_force import PolicyInForce, load_in_force, published_record
from tests.conftest import corpus_log, corpus_path
from tests.support.soft_evidence import RECEIVED_AT_MS, collected

CORPUS = corpus_path()
DOC = Path(__file__).parents[2] / "docs" / "design" / "eventlog-trust.md"


_log = cache(corpus_log)


def _doc_rows() -> dict[str, tuple[str, str, str]]:
    """Quirk id -> (layer, accepted, corpus logs) as the design document's table shows it."""
    section = DOC.read_text().split("## 4. ", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `([a-z0-9-]+)` \| ([a-z]+)[^|]*\| ([a-z]+) \| ([^|]*) \|", line)
        if m:
            rows[m[1]] = (m[2], m[3], m[4].strip())
    return rows


def test_the_design_document_shows_exactly_the_table() -> None:
    shown = {q.id: (q.layer.value, q.acceptance.value, ", ".join(q.corpus) or "—")
             for q in QUIRKS}
    assert _doc_rows() == shown


def test_ids_are_unique_and_each_layer_has_what_it_needs() -> None:
    assert len({q.id for q in QUIRKS}) == len(QUIRKS)
    for q in QUIRKS:
        assert (q.apply is not None) == (q.layer is Layer.REPLAY), q.id
        assert (q.payload is not None) == (q.layer is Layer.BINDING), q.id
        assert (q.placement is not None) == (q.layer is Layer.STRUCTURE), q.id
        assert bool(q.reason) == bool(q.defect) == (q.layer is Layer.STRUCTURE), q.id
        assert q.reference and q.description, q.id


def test_one_acceptance_rule() -> None:
    for q in QUIRKS:
        assert accepted(q, {q.id})
        assert accepted(q, set()) is (q.acceptance is Acceptance.REPORTED)


@pytest.mark.parametrize("quirk", [q for q in QUIRKS if q.layer is Layer.BINDING],
                         ids=lambda q: q.id)
def test_binding_quirk_rows_are_shown_by_their_corpus_logs(quirk: object) -> None:
    assert quirk is not None
    for entry_id in quirk.corpus:  # type: ignore[attr-defined]
        log = parse_event_log(_log(entry_id))
        used = {check_binding(ev).quirk for ev in log.events}
        assert quirk.id in used, entry_id  # type: ignore[attr-defined]


def test_ima_quirk_row_is_shown_by_its_corpus_logs() -> None:
    quirk = quirk_by_id(ima.QUIRK_TRUNCATED_TAIL)
    assert quirk is not None and quirk.layer is Layer.IMA
    for entry_id in quirk.corpus:
        with pytest.raises(MalformedImaList):
            ima.parse_binary(_log(entry_id))
        parsed = ima.parse_binary(_log(entry_id), quirks=[quirk.id])
        assert parsed.quirks_applied == {quirk.id}


@pytest.mark.parametrize("quirk", [q for q in QUIRKS if q.layer is Layer.STRUCTURE],
                         ids=lambda q: q.id)
def test_structure_quirk_rows_are_shown_by_their_corpus_logs(quirk: object) -> None:
    assert quirk is not None
    for entry_id in quirk.corpus:  # type: ignore[attr-defined]
        refused = golden_from_log(_log(entry_id), entry_id).claims
        assert [a.reason for a in refused.anomalies if a.fatal] == [
            quirk.reason], entry_id  # type: ignore[attr-defined]
        named = golden_from_log(_log(entry_id), entry_id,
                                allowed_quirks=[quirk.id]).claims  # type: ignore[attr-defined]
        assert not named.failed_closed, entry_id
        assert quirk.id in {u.quirk for u in named.quirks_applied}, entry_id  # type: ignore[attr-defined]


def _s08_quoted() -> dict[str, dict[int, bytes]]:
    """What S08's TPM holds: its log's replay plus the two Exit Boot Services events the
    firmware extended into PCR 5 without logging them (the quirk's story)."""
    log = parse_event_log(_log("S08"))
    truth = replay(log, quirks=["ebs-invocation-success"])
    quoted = fully_quoted(log)
    for bank, values in truth.items():
        quoted[bank][5] = values[5]
    return quoted


def test_replay_quirk_row_is_shown_by_its_corpus_log() -> None:
    log = parse_event_log(_log("S08"))
    quoted = _s08_quoted()
    with pytest.raises(ReplayMismatch):
        verify_replay(log, quoted)
    result = verify_replay(log, quoted, allowed_quirks=["ebs-invocation-success"])
    assert result.applied_quirks == ("ebs-invocation-success",)


def _policy(allowed_quirks: str = "") -> PolicyInForce:
    golden = golden_from_log(_log("S08"), "S08")
    text = derive_policy([golden], policy_id="quirks", version="1").text
    if allowed_quirks:
        text = text.replace("  evidence:\n", f"  evidence:\n    allowedQuirks: [{allowed_quirks}]\n", 1)
        assert "allowedQuirks" in text
    record = published_record(text, version=1, published_at_ms=RECEIVED_AT_MS, author="quirks")
    return load_in_force(record)


def test_a_replay_quirk_is_used_only_when_the_policy_names_it_and_is_reported() -> None:
    evidence = collected("S08", _log("S08"), range(24), values=_s08_quoted())
    refused = appraise(evidence, _policy())
    assert not refused.passed
    assert "verifier.replay.pcr_mismatch" in refused.reason_ids
    named = appraise(evidence, _policy("ebs-invocation-success"))
    assert "verifier.replay.pcr_mismatch" not in named.reason_ids
    assert {"quirk": "ebs-invocation-success", "seq": -1} in json.loads(
        str(named.record["claims_json"]))["quirks_applied"]


@pytest.mark.parametrize(("quirk_id", "message"), [
    ("no-such-quirk", "unknown firmware quirk"),
    ("boot-variable-data-only", "a policy cannot accept or refuse it"),
])
def test_the_loader_refuses_quirks_a_policy_cannot_name(quirk_id: str, message: str) -> None:
    golden = golden_from_log(_log("S08"), "S08")
    text = derive_policy([golden], policy_id="quirks", version="1").text
    text = text.replace("  evidence:\n", f"  evidence:\n    allowedQuirks: [{quirk_id}]\n", 1)
    with pytest.raises(PolicyError, match=message) as info:
        load_policy(text)
    assert info.value.line is not None
