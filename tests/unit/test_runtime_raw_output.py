"""``Output.raw_value``: a stage can produce non-Avro bytes (e.g. OCSF JSON) as they are, next to
Avro outputs and state changes, in the same planned transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.runtime.plan import H_ID, H_STAGE, RawRecord, plan_batch
from services.runtime.stage import Decision, InputRecord, Output, OverlayState, Stage, StateView
from tests.support.eostest import INPUT_SUBJECT, OUTPUT_SUBJECT, eostest_codec

CODEC = eostest_codec()
IN = "rawtest.input.v1"
JSON_BODY = json.dumps({"class_uid": 2004, "message": "raw"}, sort_keys=True).encode()


def _decide(inp: InputRecord, _state: StateView) -> Decision:
    avro: Mapping[str, Any] = {"key": inp.key, "seq": inp.record["seq"], "counter_after": 1,
                               "input": {"topic": inp.coordinates.topic,
                                         "partition": inp.coordinates.partition,
                                         "offset": inp.coordinates.offset}}
    return Decision(outputs=(
        Output("rawtest.avro.v1", inp.key or "", OUTPUT_SUBJECT, avro, "avro-1"),
        Output("rawtest.json.v1", inp.key or "", "application/json", {}, "json-1",
               headers=(("content-type", b"application/json"),), raw_value=JSON_BODY),
    ))


STAGE = Stage(name="rawtest", input_topics=(IN,), input_subjects=frozenset({INPUT_SUBJECT}),
              decide=_decide)


def _plan() -> Any:
    raw = RawRecord(IN, 0, 5, 1_700_000_000_000, b"h1",
                    CODEC.encode(INPUT_SUBJECT, {"key": "h1", "seq": 1}))
    return plan_batch(STAGE, CODEC, [raw], OverlayState({}), group="g", task_partition=0)


def test_raw_value_is_produced_unchanged_and_avro_outputs_still_encoded() -> None:
    plan = _plan()
    assert [o.result for o in plan.outcomes] == ["ok"]
    avro, raw = plan.records
    assert CODEC.decode(avro.value or b"", expected={OUTPUT_SUBJECT}).record["key"] == "h1"
    assert raw.topic == "rawtest.json.v1" and raw.key == b"h1"
    assert raw.value == JSON_BODY  # not Avro, not re-encoded
    headers = dict(raw.headers)
    assert headers["content-type"] == b"application/json"
    assert headers[H_ID] == b"json-1" and headers[H_STAGE] == b"rawtest"


def test_raw_value_defaults_to_none_and_stays_out_of_repr() -> None:
    out = Output("t", "k", OUTPUT_SUBJECT, {}, "id")
    assert out.raw_value is None
    assert "raw_value" not in repr(Output("t", "k", "application/json", {}, "id",
                                          raw_value=b"secret-ish"))
