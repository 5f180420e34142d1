"""``hostgate demo`` end to end on the real broker with real swtpm hosts, then audit replay over
the records it left on the pipeline's topics.

The demo runs as a separate process (as ``make demo`` runs it) with its own ``HOSTGATE_HOME``;
its host ids are unique per run (``demo-<run-id>-NN``), so replay here looks only at this run's
hosts even though the topics are shared. The mix covers the verifier (secure_boot_off,
forged_log), intake (wrong_ak) and the agent client's protocol hooks (replayed_nonce: an honest
round, then that used nonce again; stale_quote: evidence held past the nonce's expiry), and
every attack of the soundness issue in the same run: a rooted host's edited logs
(windows_events_dropped, boot_app_relabelled, sha1_only_log: real extends and quotes of its
swtpm), quotes over less than the challenge asks (quote_fewer_pcrs, pcr_bank_downgrade), and
the protocol attacks of ``services.agent.attacks`` (foreign_partition, borrowed_host_id,
challenge_flood), two of them naming a clean host that must still end TRUSTED. Intake
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

from services.agent.attacks import FLOOD_COUNT
from services.demo.report import EXPECTED_REASONS
from services.runtime.codec import Codec
from services.verifier.audit_replay import AuditReport, FindingKind, WhatIfReport
from services.verifier.cli_audit_replay import Recorded, read_recorded, run_replay
from tests.integration import runtime_support as rs
from tests.unit.test_replay_core import without_grub_of

pytestmark = [pytest.mark.kafka, pytest.mark.swtpm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
MIX = {"secure_boot_off": 1, "forged_log": 1, "wrong_ak": 1, "replayed_nonce": 1,
       "stale_quote": 1, "windows_events_dropped": 1, "boot_app_relabelled": 1,
       "sha1_only_log": 1, "quote_fewer_pcrs": 1, "pcr_bank_downgrade": 1,
       "foreign_partition": 1, "borrowed_host_id": 1, "challenge_flood": 1}
HOSTS = 16  # three clean hosts: one per image, two of them the attacks' victims
# Refused at intake: an intake rejection is a SOC finding, never an incident, so these hosts are
# neither quarantined nor trusted (no verdict, no credential).
AT_INTAKE = {"stale_quote", "wrong_ak", "quote_fewer_pcrs", "pcr_bank_downgrade",
             "foreign_partition", "borrowed_host_id", "challenge_flood"}
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
            reasons.update(f"intake.{r}" for r in h["rejections"])
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


def test_attacks_naming_another_host_are_refused_and_it_stays_trusted(demo: DemoResult) -> None:
    hosts = {h["host_id"]: h for h in demo.doc["hosts"]}
    attackers = [h for h in hosts.values() if h["tamper"] in ("borrowed_host_id",
                                                              "challenge_flood")]
    assert len(attackers) == 2 and len({a["target"] for a in attackers}) == 2
    for a in attackers:
        victim = hosts[a["target"]]
        assert victim["tamper"] is None and victim["named_by"] == [a["host_id"]]
        # the victim got its nonce after the attack, passed, and opened its credential
        assert victim["status"] == "TRUSTED" and victim["rejections"] == [], victim
        assert victim["credential_opened"] == {"ok": True, "detail": victim["cert_serial"]}
        # every record the attacker wrote was refused, and is shown on the attacker's row
        assert len(a["rejections"]) == a["attack"]["sent"] and a["attack"]["got_through"] == []
        assert a["verdict"] is None and a["incident_id"] is None and a["trust"] is None
    flood = next(a for a in attackers if a["tamper"] == "challenge_flood")
    assert flood["attack"]["sent"] == FLOOD_COUNT
    assert flood["rejections"] == ["UNAUTHENTICATED"] * FLOOD_COUNT
    borrowed = next(a for a in attackers if a["tamper"] == "borrowed_host_id")
    # its enrolment under the enrolled id is not signed by that id's AK, nor its request
    assert borrowed["rejections"] == ["UNAUTHENTICATED", "UNAUTHENTICATED"]
    assert borrowed["attack"]["heard"] == ["enrolment REFUSED: UNAUTHENTICATED"]
    foreign = next(h for h in hosts.values() if h["tamper"] == "foreign_partition")
    assert foreign["rejections"] == ["WRONG_PARTITION"] * 2 and foreign["target"] is None


def test_the_topics_say_the_same_as_the_demo(demo: DemoResult) -> None:
    """The demo attributes a refused record to its writer by the record's coordinates; read
    the rejections and host states straight from the topics and check the same facts."""
    from aiokafka.partitioner import DefaultPartitioner

    hosts = {h["host_id"]: h for h in demo.doc["hosts"]}
    codec = Codec.load()

    async def read(topic: str, subject: str) -> list[tuple[Any, dict[str, Any]]]:
        return [(r, codec.decode(r.value, expected={subject}).record)
                for r in await rs.read_committed(topic)
                if r.value is not None and r.key is not None and r.key.decode() in hosts]

    rejections = asyncio.run(read("attest.rejections.v1", "hostgate.IntakeRejected"))
    by_host: dict[str, list[dict[str, Any]]] = {}
    for _, rec in rejections:
        by_host.setdefault(rec["host_id"], []).append(rec)
    flood = next(h for h in hosts.values() if h["tamper"] == "challenge_flood")
    borrowed = next(h for h in hosts.values() if h["tamper"] == "borrowed_host_id")
    # records naming the victims: exactly the attackers', all refused as they should be
    assert sorted(r["reason"] for r in by_host[flood["target"]]) == \
        ["UNAUTHENTICATED"] * FLOOD_COUNT
    assert sorted(r["reason"] for r in by_host[borrowed["target"]]) == [
        "UNAUTHENTICATED", "UNAUTHENTICATED"]
    assert all(r["record_subject"] == "hostgate.ChallengeRequested"
               for r in by_host[flood["target"]])
    # a foreign partition's records really were off their key's partition
    foreign = next(h for h in hosts.values() if h["tamper"] == "foreign_partition")
    wrong = by_host[foreign["host_id"]]
    assert [r["reason"] for r in wrong] == ["WRONG_PARTITION"] * 2
    assert {r["source"]["topic"] for r in wrong} == {"attest.requests.v1",
                                                     "attest.evidence.v1"}
    for r in wrong:
        parts = list(range(asyncio.run(rs.partition_count(r["source"]["topic"]))))
        assert r["source"]["partition"] != DefaultPartitioner()(
            foreign["host_id"].encode(), parts, parts)
    # the selection refusals name what the challenge asked
    for name in ("quote_fewer_pcrs", "pcr_bank_downgrade"):
        h = next(h for h in hosts.values() if h["tamper"] == name)
        (r,) = by_host[h["host_id"]]
        assert r["reason"] == "SELECTION_MISMATCH", r
        assert "the challenge asked for sha256:0-9,12-14" in r["detail"], r
    # the victims' last host state is TRUSTED: no record naming them changed it
    states = asyncio.run(read("attest.hosts.v1", "hostgate.HostState"))
    last = {rec["host_id"]: rec["state"] for _, rec in states}
    assert last[flood["target"]] == last[borrowed["target"]] == "TRUSTED"
    assert flood["host_id"] not in last and borrowed["host_id"] not in last


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
