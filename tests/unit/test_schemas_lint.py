"""House rules for ``schemas/`` (see schemas/README.md), checked on the files themselves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
TEST_SCHEMAS = REPO / "tests" / "support" / "schemas"
"""The runtime tests' own records, held to the same rules."""
FILES = sorted(SCHEMAS.glob("*/v*.avsc")) + sorted(TEST_SCHEMAS.glob("*/v*.avsc"))
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Yield (path, schema node) for every type node, following nested definitions."""
    yield path, node
    if isinstance(node, list):
        for i, branch in enumerate(node):
            yield from _walk(branch, f"{path}[{i}]")
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind == "record":
            for field in node["fields"]:
                yield from _walk(field["type"], f"{path}.{field['name']}")
        elif kind == "array":
            yield from _walk(node["items"], f"{path}[]")
        elif kind == "map":
            yield from _walk(node["values"], f"{path}{{}}")
        elif isinstance(kind, dict | list):
            yield from _walk(kind, path)


def _load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return schema


def test_there_is_a_schema_for_every_record_type_in_the_design() -> None:
    subjects = {p.parent.name for p in FILES}
    for name in (
        "EnrollmentRequested", "ActivationProof", "ChallengeRequested", "ActivationChallenge",
        "NonceIssued", "EvidenceSubmitted", "EvidenceCollected", "IntakeRejected",
        "PolicyPublished", "Verdict", "CredentialIssued", "HostState", "IncidentEvent",
        "RemediationCommand", "RemediationRejected", "EnrollmentState", "PendingChallenge",
        "UsedNonce", "HostTrackState", "IncidentState",
    ):  # fmt: skip
        assert f"hostgate.{name}" in subjects
    tests_only = {p.parent.name for p in FILES if TEST_SCHEMAS in p.parents}
    assert tests_only == {"hostgate.test.TestInput", "hostgate.test.TestOutput",
                          "hostgate.test.TestCounter"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_record_name_is_the_subject_and_every_record_and_field_has_a_doc(path: Path) -> None:
    schema = _load(path)
    assert schema["type"] == "record"
    assert schema["name"] == path.parent.name
    records = [(p, n) for p, n in _walk(schema, "") if isinstance(n, dict)]
    assert records
    for where, node in records:
        if node.get("type") in ("record", "enum"):
            assert node.get("doc", "").strip(), f"{node['name']} at {where or '/'} has no doc"
        if node.get("type") == "record":
            for field in node["fields"]:
                assert field.get("doc", "").strip(), f"field {where}.{field['name']} has no doc"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_enum_has_a_default_listed_first_and_a_doc_per_symbol(path: Path) -> None:
    enums = [
        n for _, n in _walk(_load(path), "") if isinstance(n, dict) and n.get("type") == "enum"
    ]
    for enum in enums:
        assert "default" in enum, f"enum {enum['name']} has no default"
        assert enum["symbols"][0] == enum["default"], f"enum {enum['name']}: default not first"
        docs = enum.get("symbolDocs", {})
        assert set(docs) == set(enum["symbols"]), f"enum {enum['name']}: symbolDocs mismatch"
        assert all(d.strip() for d in docs.values())


def _zero_size(node: Any, names: dict[str, Any]) -> bool:
    """Can a value of this type encode to zero bytes?"""
    if isinstance(node, str):
        return node == "null" or (node in names and _zero_size(names[node], names))
    if isinstance(node, list):
        return False  # a union always writes its branch index
    kind = node.get("type")
    if kind == "record":
        return all(_zero_size(f["type"], names) for f in node["fields"])
    if kind == "fixed":
        return int(node["size"]) == 0
    if isinstance(kind, str) and kind in PRIMITIVES:
        return kind == "null"
    return False


def _open_record_references(node: Any, open_records: tuple[str, ...]) -> Iterator[str]:
    """Yield every by-name reference made to a record still being defined (recursion)."""
    if isinstance(node, str):
        if node in open_records:
            yield node
    elif isinstance(node, list):
        for branch in node:
            yield from _open_record_references(branch, open_records)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind == "record":
            inner = (*open_records, node["name"])
            for field in node["fields"]:
                yield from _open_record_references(field["type"], inner)
        elif kind == "array":
            yield from _open_record_references(node["items"], open_records)
        elif kind == "map":
            yield from _open_record_references(node["values"], open_records)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_recursion_and_no_zero_size_collection_items(path: Path) -> None:
    schema = _load(path)
    assert list(_open_record_references(schema, ())) == []
    names: dict[str, Any] = {}
    for where, node in _walk(schema, ""):
        if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
            assert node["name"] not in names, f"{node['name']} defined twice (at {where})"
            assert "." in node["name"], f"{node['name']} is not a full name"
            names[node["name"]] = node
        if isinstance(node, str) and node not in PRIMITIVES:
            assert node in names, f"{where}: reference to undefined {node}"
    for where, node in _walk(schema, ""):
        if isinstance(node, dict) and node.get("type") in ("array", "map"):
            items = node.get("items", node.get("values"))
            assert not _zero_size(items, names), f"{where}: items can encode to zero bytes"


def test_the_recursion_and_zero_size_checks_can_fail() -> None:
    linked = {"type": "record", "name": "x.Node", "fields": [
        {"name": "next", "type": ["null", "x.Node"]}]}  # fmt: skip
    assert list(_open_record_references(linked, ())) == ["x.Node"]
    empty = {"type": "record", "name": "x.Empty", "fields": [{"name": "n", "type": "null"}]}
    assert _zero_size(empty, {})
    assert _zero_size("x.Empty", {"x.Empty": empty})
    assert not _zero_size("long", {})


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_times_are_timestamp_millis(path: Path) -> None:
    for where, node in _walk(_load(path), ""):
        if isinstance(node, dict) and node.get("type") == "record":
            for field in node["fields"]:
                name = field["name"]
                if name.endswith("_at") or name in ("since", "not_before", "not_after"):
                    ftype = field["type"]
                    branch = ftype[1] if isinstance(ftype, list) else ftype
                    assert branch == {"type": "long", "logicalType": "timestamp-millis"}, (
                        f"{where}.{name} is not timestamp-millis"
                    )


def test_registry_lists_every_file_once_with_unique_ids() -> None:
    registry = [e for d in (SCHEMAS, TEST_SCHEMAS)
                for e in json.loads((d / "registry.json").read_text("utf-8"))["schemas"]]
    listed = [(e["subject"], e["version"]) for e in registry]
    on_disk = [(p.parent.name, int(p.stem[1:])) for p in FILES]
    assert sorted(listed) == sorted(on_disk)
    ids = [e["id"] for e in registry]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, int) and 0 < i < 2**31 for i in ids)
