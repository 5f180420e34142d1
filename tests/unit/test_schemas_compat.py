"""Every version of every subject is FULL_TRANSITIVE compatible with every other one.

Checked with the Apache ``avro`` package's ``ReaderWriterCompatibilityChecker`` (an independent
implementation from fastavro, which the codec uses). Because ``schemas/`` holds only v1 today,
the checker itself is also exercised: a realistic compatible v2 (fixture) must pass and
deliberately incompatible evolutions, written here, must be caught.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
FIXTURE_V2 = Path(__file__).resolve().parent / "fixtures" / "codec" / "hostgate.HostState.v2.avsc"


def _published() -> dict[str, dict[int, dict[str, Any]]]:
    registry = json.loads((SCHEMAS / "registry.json").read_text(encoding="utf-8"))
    by_subject: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for entry in registry["schemas"]:
        path = SCHEMAS / entry["subject"] / f"v{entry['version']}.avsc"
        by_subject[entry["subject"]][entry["version"]] = json.loads(path.read_text("utf-8"))
    return dict(by_subject)


def full_transitive_problems(versions: dict[int, dict[str, Any]]) -> list[str]:
    """Every pair of versions, each direction: the reader must read the writer's data."""
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    parsed = {v: avro.schema.parse(json.dumps(s)) for v, s in versions.items()}
    problems = []
    for old, new in combinations(sorted(parsed), 2):
        for reader, writer, direction in ((new, old, "BACKWARD"), (old, new, "FORWARD")):
            result = checker.get_compatibility(parsed[reader], parsed[writer])
            if result.compatibility is not SchemaCompatibilityType.compatible:
                problems.append(
                    f"{direction}: v{reader} cannot read v{writer}: "
                    f"{sorted(result.messages)} at {sorted(result.locations)}"
                )
    return problems


PUBLISHED = _published()


@pytest.mark.parametrize("subject", sorted(PUBLISHED))
def test_every_published_subject_is_full_transitive(subject: str) -> None:
    versions = PUBLISHED[subject]
    assert sorted(versions) == list(range(1, len(versions) + 1)), "versions must be 1..N"
    assert full_transitive_problems(versions) == []


def test_fixture_v2_is_compatible_and_actually_differs() -> None:
    v1 = PUBLISHED["hostgate.HostState"][1]
    v2 = json.loads(FIXTURE_V2.read_text("utf-8"))
    assert v1 != v2
    assert full_transitive_problems({1: v1, 2: v2}) == []


def _host_state_v1() -> dict[str, Any]:
    return copy.deepcopy(PUBLISHED["hostgate.HostState"][1])


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_checker_catches_a_field_added_without_default() -> None:
    v2 = _host_state_v1()
    v2["fields"].append({"name": "owner", "type": "string", "doc": "no default: breaks v1 data"})
    problems = full_transitive_problems({1: _host_state_v1(), 2: v2})
    assert len(problems) == 1
    assert problems[0].startswith("BACKWARD: v2 cannot read v1")
    assert "owner" in problems[0]


def test_checker_catches_a_removed_field_that_had_no_default() -> None:
    v2 = _host_state_v1()
    v2["fields"] = [f for f in v2["fields"] if f["name"] != "reason"]
    problems = full_transitive_problems({1: _host_state_v1(), 2: v2})
    assert len(problems) == 1
    assert problems[0].startswith("FORWARD: v1 cannot read v2")


def test_checker_catches_a_changed_field_type() -> None:
    v2 = _host_state_v1()
    _field(v2, "reason")["type"] = "long"
    problems = full_transitive_problems({1: _host_state_v1(), 2: v2})
    assert {p.split(":")[0] for p in problems} == {"BACKWARD", "FORWARD"}


def test_checker_catches_an_enum_symbol_added_without_reader_default() -> None:
    v1 = _host_state_v1()
    del _field(v1, "state")["type"]["default"]
    v2 = copy.deepcopy(v1)
    _field(v2, "state")["type"]["symbols"].append("SUSPENDED")
    problems = full_transitive_problems({1: v1, 2: v2})
    assert len(problems) == 1
    assert problems[0].startswith("FORWARD: v1 cannot read v2")
    assert "SUSPENDED" in problems[0]


def test_checker_is_transitive_not_just_consecutive() -> None:
    # v1 -> v2 adds a field with a default, v2 -> v3 removes that default again: each
    # consecutive step is fine for one direction at a time, but v3 cannot read v1 data.
    v1 = _host_state_v1()
    v2 = copy.deepcopy(v1)
    v2["fields"].append({"name": "owner", "type": "string", "default": "", "doc": "d"})
    v3 = copy.deepcopy(v2)
    del _field(v3, "owner")["default"]
    problems = full_transitive_problems({1: v1, 2: v2, 3: v3})
    assert any(p.startswith("BACKWARD: v3 cannot read v1") for p in problems)
