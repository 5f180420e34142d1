"""Audit replay's pure comparison (``services.verifier.audit_replay``) on real swtpm evidence.

Provenance: every quote and log comes from ``tests.unit.verifier_support.sim_fleet`` (one swtpm
per host, the simulator's golden images); the policy is derived from its clean hosts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from services.verifier.audit_replay import (
    FindingKind,
    Located,
    PolicyIndex,
    audit,
    compare_verdicts,
    what_if,
)
from services.verifier.core import appraise
from services.verifier.policy_in_force import load_in_force, published_record
from tests.unit.verifier_support import RECEIVED_AT_MS, SimFleet, collected_for, sim_fleet

COLLECTED = "attest.collected.v1"
VERDICTS = "attest.verdicts.v1"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFleet]:
    with sim_fleet(tmp_path_factory.mktemp("replayfleet"),
                   tampered=("secure_boot_off", "forged_log", "unknown_bootloader"),
                   clean_per_image=2) as s:
        yield s


def _recorded(sim: SimFleet) -> tuple[list[Located], list[Located]]:
    """Collected records and the verdicts the verifier core gives them, with coordinates."""
    collected, verdicts = [], []
    for i, host in enumerate(sim.fleet):
        rec = collected_for(host, offset=i)
        col = Located(COLLECTED, i % 3, i, RECEIVED_AT_MS + i, rec)
        coords = {"topic": COLLECTED, "partition": i % 3, "offset": i}
        verdict = appraise(rec, sim.policy, collected_at=coords).record
        collected.append(col)
        verdicts.append(Located(VERDICTS, i % 3, 100 + i, RECEIVED_AT_MS + i, verdict))
    return collected, verdicts


@pytest.fixture(scope="module")
def recorded(sim: SimFleet) -> tuple[list[Located], list[Located]]:
    return _recorded(sim)


def _index(sim: SimFleet) -> PolicyIndex:
    return PolicyIndex.build([published_record(sim.policy_text, version=1, published_at_ms=0,
                                               author="tests")])


@pytest.mark.swtpm
def test_audit_reproduces_every_verdict(sim: SimFleet,
                                        recorded: tuple[list[Located], list[Located]]) -> None:
    collected, verdicts = recorded
    report = audit(collected, verdicts, _index(sim))
    assert report.findings == ()
    assert report.reproduced == len(verdicts) == len(sim.fleet)
    clean = sum(1 for h in sim.fleet if h.tamper is None)
    assert report.by_result == {"PASS": clean, "FAIL": len(sim.fleet) - clean}


@pytest.mark.swtpm
def test_a_tampered_verdict_record_is_a_finding(
        sim: SimFleet, recorded: tuple[list[Located], list[Located]]) -> None:
    collected, verdicts = recorded
    i = next(i for i, v in enumerate(verdicts) if v.record["result"] == "FAIL")
    forged = dict(verdicts[i].record, result="PASS", failed_rules=[])
    changed = [*verdicts[:i], dataclasses.replace(verdicts[i], record=forged), *verdicts[i + 1:]]
    report = audit(collected, changed, _index(sim))
    (finding,) = report.findings
    assert finding.kind is FindingKind.MISMATCH
    assert finding.host_id == forged["host_id"] and finding.where == verdicts[i].where
    assert [d.field for d in finding.diffs] == ["failed_rules", "result"]
    assert finding.diffs[1].recorded == '"PASS"' and finding.diffs[1].replayed == '"FAIL"'
    assert report.reproduced == len(verdicts) - 1


@pytest.mark.swtpm
def test_one_changed_claims_byte_is_a_finding(
        sim: SimFleet, recorded: tuple[list[Located], list[Located]]) -> None:
    collected, verdicts = recorded
    v = verdicts[0]
    claims = v.record["claims_json"]
    forged = dict(v.record, claims_json=claims[:-2] + ("0" if claims[-2] != "0" else "1")
                  + claims[-1])
    report = audit(collected, [dataclasses.replace(v, record=forged)], _index(sim),
                   expect_all_verdicts=False)
    assert [d.field for f in report.findings for d in f.diffs] == ["claims_json"]
    # the evidence of the other hosts has no verdict in this list
    assert {f.kind for f in report.findings} == {FindingKind.MISMATCH,
                                                 FindingKind.MISSING_VERDICT}


@pytest.mark.swtpm
def test_unknown_policy_and_dangling_coordinates_are_findings(
        sim: SimFleet, recorded: tuple[list[Located], list[Located]]) -> None:
    collected, verdicts = recorded
    v = verdicts[0]
    other = dict(v.record, policy_digest=b"\x01" * 32)
    dangling = dict(verdicts[1].record, collected={"topic": COLLECTED, "partition": 0,
                                                   "offset": 10_000})
    report = audit(collected[:2], [dataclasses.replace(v, record=other),
                                   dataclasses.replace(verdicts[1], record=dangling)],
                   _index(sim))
    kinds = sorted(f.kind.value for f in report.findings)
    assert kinds == ["evidence_not_found", "missing_verdict", "policy_not_found"]


@pytest.mark.swtpm
def test_forked_audit_reports_exactly_what_one_process_reports(
        sim: SimFleet, recorded: tuple[list[Located], list[Located]]) -> None:
    collected, verdicts = recorded
    i = next(i for i, v in enumerate(verdicts) if v.record["result"] == "FAIL")
    forged = dataclasses.replace(verdicts[i], record=dict(verdicts[i].record, result="PASS"))
    second = dataclasses.replace(verdicts[0], offset=999, record=dict(
        verdicts[0].record, verdict_id="f" * 64))  # a second verdict for the same evidence
    mixed = [*verdicts[:i], forged, *verdicts[i + 1:], second] * 2
    seen: list[int] = []
    one = audit(collected, mixed, _index(sim), jobs=1)
    two = audit(collected, mixed, _index(sim), jobs=2, progress=seen.append)
    assert two == one
    assert seen == list(range(1, len(mixed) + 1))
    assert {f.kind for f in one.findings} == {FindingKind.MISMATCH, FindingKind.DUPLICATE_VERDICT}


def without_grub_of(text: str, source: str) -> str:
    """``text`` with the grubx64.efi digest that ``source`` (a derivation comment) allowed
    removed: hosts booting that grub then run a boot application the policy does not allow."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if '- name: "grubx64.efi"' in line)
    i = next(i for i in range(start, len(lines)) if f"# {source} event" in lines[i])
    assert "sha256:" in lines[i] and "name:" in lines[i + 1]
    return "".join(lines[:i] + lines[i + 2:])


@pytest.mark.swtpm
def test_what_if_flags_exactly_the_hosts_running_the_disallowed_application(
        sim: SimFleet, recorded: tuple[list[Located], list[Located]]) -> None:
    collected, verdicts = recorded
    ref = next(h for h in sim.reference_hosts if sim.fleet.host(h).image == "fedora-40-shim")
    policy = load_in_force(published_record(without_grub_of(sim.policy_text, ref), version=2,
                                            published_at_ms=0, author="tests"))
    clean = [c for c in collected
             if sim.fleet.host(c.record["evidence"]["host_id"]).tamper is None]
    report = what_if(clean, verdicts, policy)
    fedora = {h.host_id for h in sim.fleet if h.tamper is None and h.image == "fedora-40-shim"}
    assert fedora and set(report.hosts) == fedora
    for change in report.changes:
        assert (change.recorded, change.would_be) == ("PASS", "FAIL")
        assert change.added_rules == ("policy.bootchain.applications",)
        assert change.sentences and change.removed_rules == ()


@pytest.mark.swtpm
def test_what_if_under_the_same_policy_changes_nothing(
        sim: SimFleet, recorded: tuple[list[Located], list[Located]]) -> None:
    collected, verdicts = recorded
    assert what_if(collected, verdicts, sim.policy).changes == ()


def test_compare_verdicts_canonicalises_bytes_and_timestamps() -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    a: dict[str, Any] = {"x": b"\x01\x02", "t": when, "n": [{"b": 1, "a": b""}]}
    b: dict[str, Any] = {"x": b"\x01\x02", "t": int(when.timestamp() * 1000),
                         "n": [{"a": b"", "b": 1}]}
    assert compare_verdicts(a, b) == ()
    (diff,) = compare_verdicts(a, {**b, "x": b"\x01\x03"})
    assert (diff.field, diff.recorded, diff.replayed) == ("x", '"0102"', '"0103"')
    (missing,) = compare_verdicts(a, {k: v for k, v in b.items() if k != "t"})
    assert missing.field == "t" and missing.replayed == '"<absent>"'


