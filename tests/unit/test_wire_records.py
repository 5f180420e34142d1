"""The typed wire records (``services.wire.records``) are the schemas' faces, field for field.

Two things keep them true: each class names exactly its schema's fields (nested records too),
and a record that went through the codec comes back out of ``from_avro``/``to_avro`` encoding
to the very same bytes, for a submission, a collected record and a verdict built from a real
corpus boot log.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from services.runtime.codec import Codec
from services.verifier.core import appraise
from services.wire import records
from services.wire.subjects import EVIDENCE_COLLECTED, EVIDENCE_SUBMITTED, VERDICT
from tests.conftest import corpus_path
from tests.support.soft_evidence import collected

SCHEMAS = Path(__file__).parents[2] / "schemas"
TYPED = {
    "hostgate.EvidenceSubmitted": records.EvidenceSubmitted,
    "hostgate.EvidenceCollected": records.EvidenceCollected,
    "hostgate.Verdict": records.Verdict,
    "hostgate.Coordinates": records.Coordinates,
    "hostgate.PcrValue": records.PcrValue,
    "hostgate.QuoteCounters": records.QuoteCounters,
    "hostgate.EkIdentity": records.EkIdentity,
    "hostgate.FailedRule": records.FailedRule,
}


def _named_records(node: Any, out: dict[str, list[str]]) -> None:
    """Every named record schema under ``node``: name -> its field names."""
    if isinstance(node, list):
        for item in node:
            _named_records(item, out)
    elif isinstance(node, dict):
        if node.get("type") == "record":
            out.setdefault(node["name"], [f["name"] for f in node["fields"]])
            for f in node["fields"]:
                _named_records(f["type"], out)
        elif node.get("type") == "array":
            _named_records(node["items"], out)


@cache
def _schema_fields() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted(SCHEMAS.glob("hostgate.*/v*.avsc")):
        _named_records(json.loads(path.read_text()), out)
    return out


@pytest.mark.parametrize("name", sorted(TYPED))
def test_each_typed_record_names_exactly_its_schemas_fields(name: str) -> None:
    fields = [f.name for f in dataclasses.fields(TYPED[name])]
    assert fields == _schema_fields()[name]


@cache
def _corpus_collected() -> dict[str, Any]:
    corpus = corpus_path()
    manifest = corpus / "manifest.json"
    if not manifest.is_file():
        pytest.fail(f"event-log corpus not found at {corpus} (set HOSTGATE_CORPUS)")
    entry = next(e for e in json.loads(manifest.read_text())["entries"] if e["id"] == "A40")
    return collected("A40", (corpus / entry["file"]).read_bytes(), range(24))


def _through_the_codec(subject: str, record: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    codec = Codec.load()
    data = codec.encode(subject, record)
    return data, dict(codec.decode(data).record)


@pytest.mark.parametrize(("subject", "cls", "pick"), [
    (EVIDENCE_SUBMITTED, records.EvidenceSubmitted, lambda c: c["evidence"]),
    (EVIDENCE_COLLECTED, records.EvidenceCollected, lambda c: c),
])
def test_evidence_records_round_trip_to_the_same_bytes(subject: str, cls: Any, pick: Any) -> None:
    data, decoded = _through_the_codec(subject, pick(_corpus_collected()))
    typed = cls.from_avro(decoded)
    assert Codec.load().encode(subject, typed.to_avro()) == data
    assert cls.from_avro(typed.to_avro()) == typed


def test_a_verdict_round_trips_to_the_same_bytes() -> None:
    verdict = appraise(_corpus_collected(), None)  # no policy: a failed verdict with reasons
    assert verdict.failures
    data, decoded = _through_the_codec(VERDICT, verdict.record)
    typed = records.Verdict.from_avro(decoded)
    assert typed == verdict.verdict
    assert Codec.load().encode(VERDICT, typed.to_avro()) == data


def test_counters_keep_a_clock_inside_avro_long() -> None:
    from services.tpm.quote import ClockInfo

    counters = records.QuoteCounters.from_clock_info(ClockInfo(2**64 - 1, 3, 4, True))
    assert counters.clock == 2**63 - 1 and counters.clock_info().reset_count == 3
