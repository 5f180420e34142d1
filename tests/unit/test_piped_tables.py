"""Issue 18, item 5: piped tables keep machine values whole, for the commands whose output is
built from Kafka or a simulated fleet (``hostgate replay``, ``hostgate fleet simulate``,
``hostgate demo``): each prints through ``services.terminal``, and with stdout captured (not a
terminal) every row is one tab-separated line holding its 64-hex digest, its ids and its
coordinates uncut. The reports are built by hand; nothing needs Kafka or a TPM."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.agent.cli import print_simulation
from services.demo.cli import print_outcome
from services.demo.report import DemoRun, HostOutcome, RuleFailure
from services.verifier.audit_replay import (
    AuditReport,
    Change,
    FieldDiff,
    Finding,
    FindingKind,
    WhatIfReport,
)
from services.verifier.cli_audit_replay import _print_audit, _print_what_if

DIGEST = "9f2c" * 16
"""A SHA-256 value, 64 hex digits."""
HOST = "host-with-a-rather-long-name-0123456789.datacenter-eu-west-1.example.org"
WHERE = "prod-eu.attest.verdicts.v1[11]@123456789"


def _rows(out: str, title: str) -> list[list[str]]:
    """The tab-separated rows (header included) of the table titled ``title``."""
    lines = out.splitlines()
    start = lines.index(f"# {title}") + 1
    rows = []
    for line in lines[start:]:
        if line.startswith("# ") or "\t" not in line:
            break
        rows.append(line.split("\t"))
    return rows


def _whole_on_one_line(out: str, value: str) -> None:
    assert any(value in line for line in out.splitlines()), f"{value} cut or wrapped:\n{out}"


def test_audit_replay_findings(capsys: pytest.CaptureFixture[str]) -> None:
    finding = Finding(FindingKind.MISMATCH, HOST, WHERE, "re-appraisal differs [see diffs]",
                      diffs=(FieldDiff("claims.pcr.7", f"sha256:{DIGEST}", "sha256:" + "0" * 64),
                             FieldDiff("result", "PASS", "FAIL")))
    _print_audit(AuditReport(verdicts=3, reproduced=2, evidences=3, findings=(finding,),
                             by_result={"PASS": 2, "FAIL": 1}))
    out = capsys.readouterr().out
    assert _rows(out, "audit replay")[0] == ["item", "value"]
    assert ["findings", "1"] in _rows(out, "audit replay")
    findings = _rows(out, "findings")
    assert findings[0] == ["kind", "host", "where", "what"]
    assert len(findings) == 2 and findings[1][:3] == ["mismatch", HOST, WHERE]
    assert f"recorded sha256:{DIGEST} / replayed sha256:{'0' * 64}" in findings[1][3]
    assert "[see diffs]" in findings[1][3]  # text in brackets is not taken for markup


def test_audit_replay_what_if(capsys: pytest.CaptureFixture[str]) -> None:
    change = Change(HOST, WHERE, "PASS", "FAIL", ("policy.boot.shim",), (),
                    (f"shim digest sha256:{DIGEST} is not allowed.",))
    _print_what_if(WhatIfReport("new-policy.yaml", 1, (change,)))
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("what-if under new-policy.yaml: 1 evidence records, "
                                   "1 would change (1 hosts)")
    assert _rows(out, "verdicts that would change")[1] == [
        HOST, WHERE, "PASS", "FAIL", f"shim digest sha256:{DIGEST} is not allowed."]


def test_fleet_simulate_hosts_and_timings(capsys: pytest.CaptureFixture[str]) -> None:
    print_simulation({"hosts": [{
        "host_id": HOST, "image": "fedora-40-shim", "tamper": "debug_grub", "enrolled": True,
        "ok": False, "stage": "replay", "reason": f"PCR 4 replays to {DIGEST}, not the quote's"}],
        "timings_s": {"provision": 1.234, "start_swtpm": 0.5, "enrol_prepare": 12.75}})
    out = capsys.readouterr().out
    assert _rows(out, "1 simulated hosts")[1] == [
        HOST, "fedora-40-shim", "debug_grub", "yes", "fail (replay)",
        f"PCR 4 replays to {DIGEST}, not the quote's"]
    assert _rows(out, "timings (s)") == [["provision", "start_swtpm", "enrol_prepare"],
                                         ["1.234", "0.5", "12.75"]]
    _whole_on_one_line(out, DIGEST)


def test_demo_final_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trusted = HostOutcome(HOST, "fedora-40-shim", None, verdict="PASS", trust="TRUSTED",
                          cert_serial=DIGEST[:40], credential_opened=True,
                          credential_detail=DIGEST[:40], answers=1)
    failed = HostOutcome("h-01", "ubuntu-24.04-shim", "secure_boot_off", verdict="FAIL",
                         failed_rules=(RuleFailure("policy.secureboot.enabled",
                                                   f"Secure Boot is off (PCR 7 = {DIGEST}).",
                                                   "PCR 7 event #3"),),
                         trust="QUARANTINED", incident_id="inc-" + DIGEST)
    run = DemoRun(run_id="r1", started_at="2026-01-01T00:00:00+00:00",
                  finished_at="2026-01-01T00:01:00+00:00", duration_s=60.0, policy_id="p",
                  policy_digest="sha256:" + DIGEST, stages=("collector", "verifier"),
                  issuer_running=True, hosts=(trusted, failed))
    print_outcome(run, tmp_path)
    out = capsys.readouterr().out
    title = out.splitlines()[0].removeprefix("# ")
    rows = _rows(out, title)
    assert rows[0][:2] == ["host", "image"] and rows[0][-1] == "check"
    by_host = {r[0]: r for r in rows[1:]}
    assert by_host[HOST][5] == f"TRUSTED (cert {DIGEST[:40]})"
    assert by_host[HOST][6] == f"yes (serial {DIGEST[:40]})"  # not clipped to 12 when piped
    assert by_host["h-01"][5] == f"QUARANTINED (incident inc-{DIGEST})"
    _whole_on_one_line(out, f"PCR 7 = {DIGEST}")
    assert f"Report: {tmp_path / 'report.html'}" in out
