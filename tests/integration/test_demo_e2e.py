"""``hostgate demo`` end to end on the real broker with real swtpm hosts, then audit replay over
the records it left on the pipeline's topics.

The demo runs as a separate process (as ``make demo`` runs it) with its own ``HOSTGATE_HOME``;
its host ids are unique per run (``demo-<run-id>-NN``), so replay here looks only at this run's
hosts even though the topics are shared. The mix covers the verifier (secure_boot_off,
forged_log), intake (wrong_ak) and the agent client's protocol hooks (replayed_nonce: an honest
round, then that used nonce again; stale_quote: evidence held past the nonce's expiry). Intake
rejections are SOC findings, never incidents: only failed verdicts quarantine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.demo.report import EXPECTED_REASONS
from services.verifier.cli_replay import Recorded, read_recorded, run_replay
from services.verifier.replay import AuditReport, FindingKind, WhatIfReport
from tests.unit.test_replay_core import without_grub_of

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
MIX = {"secure_boot_off": 1, "forged_log": 1, "wrong_ak": 1, "replayed_nonce": 1,
       "stale_quote": 1}
HOSTS = 8
# Refused at intake: an intake rejection is a SOC finding, never an incident, so these hosts are
# neither quarantined nor trusted (no verdict, no credential).
AT_INTAKE = {"stale_quote", "wrong_ak"}
# An honest first round (trusted, credential), then the replay of its nonce, refused at intake:
# the refused record changes nothing, the host stays as its own verdict left it.
TRUSTED_THEN_REFUSED = {"replayed_nonce"}


@dataclasses.dataclass(frozen=True)
class DemoResult:
    status: int
    doc: dict[str, Any]
    run_dir: Path
    output: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[DemoResult]:
    home = tmp_path_factory.mktemp("demohome")
    run_dir = home / "run"
    env = {**os.environ, "HOSTGATE_BOOTSTRAP": kafka_bootstrap, "HOSTGATE_HOME": str(home)}
    cmd = [sys.executable, "-m", "services.cli", "demo", "--hosts", str(HOSTS), "--json",
           "--seed", "7", "--out", str(run_dir),
           *(a for name, n in MIX.items() for a in ("--tamper", f"{name}={n}"))]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    assert out.strip(), f"no JSON from the demo (status {proc.returncode}):\n{err[-4000:]}"
    yield DemoResult(proc.returncode, json.loads(out), run_dir, err)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_matches_the_tamper_mix(demo: DemoResult) -> None:
    doc = demo.doc
    assert demo.status == 0, (doc["hosts"], demo.output[-3000:])
    assert doc["ok"] is True and doc["issuer_running"] is True
    assert sorted(doc["stages"]) == ["collector", "incidents", "issuer", "verifier"]
    hosts = doc["hosts"]
    assert len(hosts) == HOSTS and len({h["host_id"] for h in hosts}) == HOSTS
    tampers = [h["tamper"] for h in hosts if h["tamper"]]
    assert sorted(tampers) == sorted(n for n, c in MIX.items() for _ in range(c))
    for h in hosts:
        if h["tamper"] is None:
            assert h["status"] == "TRUSTED" and h["verdict"] == "PASS", h
            assert h["cert_serial"] and not h["failed_rules"]
        elif h["tamper"] in AT_INTAKE:
            assert h["status"] == "REJECTED" and not h["incident_id"], h
            assert h["verdict"] is None and h["cert_serial"] is None, h
        elif h["tamper"] in TRUSTED_THEN_REFUSED:
            assert h["status"] == "TRUSTED" and not h["incident_id"], h
            assert h["verdict"] == "PASS" and h["rejection"], h
        else:
            assert h["status"] == "QUARANTINED" and h["incident_id"], h
        if h["tamper"] is not None:
            reasons = {r["rule_id"] for r in h["failed_rules"]}
            if h["rejection"]:
                reasons.add(f"intake.{h['rejection']}")
            assert reasons & EXPECTED_REASONS[h["tamper"]], h
    at_intake = sum(1 for t in tampers if t in AT_INTAKE)
    kept = sum(1 for t in tampers if t in TRUSTED_THEN_REFUSED)
    assert doc["counts"] == {"TRUSTED": HOSTS - len(tampers) + kept,
                             "QUARANTINED": len(tampers) - at_intake - kept,
                             "REJECTED": at_intake}
    # the reports are on disk, the HTML self-contained
    assert json.loads((demo.run_dir / "report.json").read_text())["run_id"] == doc["run_id"]
    page = (demo.run_dir / "report.html").read_text()
    assert all(h["host_id"] in page for h in hosts) and "https://" not in page


def test_every_trusted_host_opened_its_credential_in_its_tpm(demo: DemoResult) -> None:
    hosts = demo.doc["hosts"]
    trusted = [h for h in hosts if h["status"] == "TRUSTED" and h["tamper"] is None]
    assert len(trusted) == HOSTS - sum(MIX.values())
    for h in trusted:
        # the serial the host's own TPM recovered is the one the issuer's host state names
        assert h["credential_opened"] == {"ok": True, "detail": h["cert_serial"]}, h
        assert h["credential_id"] and h["check"]["ok"] is True
    for h in hosts:  # (replayed_nonce stays TRUSTED from its honest round: not judged here)
        if h["status"] != "TRUSTED":
            assert h["credential_opened"]["ok"] is None, h
    page = (demo.run_dir / "report.html").read_text()
    assert "credential opened in TPM" in page
    assert all(f"yes (serial {h['cert_serial']})" in page for h in trusted)


def test_protocol_tampers_are_refused_for_what_they_did(demo: DemoResult) -> None:
    by_tamper = {h["tamper"]: h for h in demo.doc["hosts"] if h["tamper"]}
    replayed = by_tamper["replayed_nonce"]
    # its honest first round passed (and was trusted); the replay of that round's nonce is
    # refused as a nonce the collector issued and saw used, not as an unknown one
    assert replayed["verdict"] == "PASS" and replayed["cert_serial"], replayed
    assert replayed["rejection"] == "REPLAYED_NONCE", replayed
    assert "already used by evidence attest.evidence.v1[" in replayed["rejection_detail"]
    # ... and, refused at intake, it opens no incident and does not quarantine the host
    assert replayed["status"] == "TRUSTED" and not replayed["incident_id"]
    stale = by_tamper["stale_quote"]
    assert stale["rejection"] == "STALE_NONCE" and "expired" in stale["rejection_detail"]


def test_nothing_of_the_run_is_left_running(demo: DemoResult) -> None:
    procs = json.loads((demo.run_dir / "processes.json").read_text())
    assert sorted(procs) == ["collector", "incidents", "issuer", "verifier"]
    assert [n for n, p in procs.items() if _alive(int(p["pid"]))] == []
    assert all(p["exit_status"] == 0 for p in procs.values()), procs
    marker = str(demo.run_dir)
    left = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and _alive(int(d.name)):
                left.append(cmd)
    assert left == []


def _recorded(demo: DemoResult, bootstrap: str) -> Recorded:
    ids = {h["host_id"] for h in demo.doc["hosts"]}
    rec = asyncio.run(read_recorded(bootstrap))

    def mine(locs: list[Any], key: Any) -> list[Any]:
        return [loc for loc in locs if key(loc.record) in ids]

    return Recorded(mine(rec.collected, lambda r: r["evidence"]["host_id"]),
                    mine(rec.verdicts, lambda r: r["host_id"]), rec.policies)


def test_replay_reproduces_every_verdict_of_the_run(demo: DemoResult,
                                                    kafka_bootstrap: str) -> None:
    rec = _recorded(demo, kafka_bootstrap)
    with_evidence = [h for h in demo.doc["hosts"] if h["verdict"]]
    assert len(rec.verdicts) == len(rec.collected) == len(with_evidence)
    report = run_replay(rec, policy_text=None, time_filtered=False)
    assert isinstance(report, AuditReport)
    assert report.findings == () and report.reproduced == len(with_evidence)
    # the CLI gives the same answer for one host
    host = with_evidence[0]["host_id"]
    env = {**os.environ, "HOSTGATE_BOOTSTRAP": kafka_bootstrap}
    cli = subprocess.run([sys.executable, "-m", "services.cli", "replay", "--host", host,
                          "--json"], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert cli.returncode == 0, cli.stderr.decode()[-2000:]
    out = json.loads(cli.stdout)
    assert (out["ok"], out["reproduced"], out["verdicts"]) == (True, 1, 1)


def test_a_tampered_verdict_record_is_reported(demo: DemoResult, kafka_bootstrap: str) -> None:
    rec = _recorded(demo, kafka_bootstrap)
    i = next(i for i, v in enumerate(rec.verdicts) if v.record["result"] == "PASS")
    forged = dataclasses.replace(rec.verdicts[i], record={
        **rec.verdicts[i].record, "attested_pcrs": rec.verdicts[i].record["attested_pcrs"][1:]})
    changed = Recorded(rec.collected, [*rec.verdicts[:i], forged, *rec.verdicts[i + 1:]],
                       rec.policies)
    report = run_replay(changed, policy_text=None, time_filtered=False)
    assert isinstance(report, AuditReport)
    (finding,) = report.findings
    assert finding.kind is FindingKind.MISMATCH and finding.where == forged.where
    assert [d.field for d in finding.diffs] == ["attested_pcrs"]


def test_what_if_policy_flags_the_hosts_running_the_application(
        demo: DemoResult, kafka_bootstrap: str) -> None:
    rec = _recorded(demo, kafka_bootstrap)
    text = without_grub_of((demo.run_dir / "policy.yaml").read_text(),
                           "golden image fedora-40-shim")
    report = run_replay(rec, policy_text=text, time_filtered=False)
    assert isinstance(report, WhatIfReport)
    # hosts whose boot reaches policy evaluation and runs Fedora's grub
    expected = {h["host_id"] for h in demo.doc["hosts"] if h["image"] == "fedora-40-shim"
                and h["verdict"] and h["tamper"] in (None, "secure_boot_off", "replayed_nonce")}
    assert expected
    flagged = {c.host_id for c in report.changes
               if "policy.bootchain.applications" in c.added_rules}
    assert flagged == expected
    assert set(report.hosts) == expected
