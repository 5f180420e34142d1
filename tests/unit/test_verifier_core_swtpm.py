"""The verifier core on real swtpm evidence from the fleet simulator (no mocks).

One fleet per module: one host per tamper profile that reaches the verifier, two clean hosts of
each golden image. The policy is derived (``from-log``) from the first clean host of each
image only, so the second clean host of each image shows a policy generalises across hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.runtime.codec import Codec
from services.tpm import ima as tpm_ima
from services.tpm import ima_replay as tpm_ima_replay
from services.tpm.quote import decode_attest
from services.verifier import core, reasons
from services.verifier.core import appraise, verdict_id
from services.verifier.policy_in_force import PolicyUnusable
from services.wire.records import QuoteCounters
from tests.unit.verifier_support import (
    RECEIVED_AT_MS,
    VERIFIER_PROFILES,
    SimFleet,
    collected_for,
    sim_fleet,
    with_ima_pcr,
)

pytestmark = pytest.mark.swtpm
REPO = Path(__file__).resolve().parents[2]

#: Which rule or reason each profile must fail with (it may fail others too).
EXPECTED: dict[str, str] = {
    "secure_boot_off": "policy.secureboot.enabled",
    "boot_debugging_on": "policy.debug.boot_debugging",
    "kernel_debugger_on": "policy.debug.kernel_debugger",
    "test_signing_on": "policy.debug.test_signing",
    "code_integrity_off": "policy.codeintegrity.enabled",
    "unknown_bootloader": "policy.bootchain.applications",
    "unknown_kernel": "policy.bootchain.applications",
    "revoked_in_dbx": "policy.bootchain.applications",
    "db_tampered": "policy.secureboot.db",
    "kernel_cmdline_tampered": "policy.bootchain.kernel_cmdline",
    "forged_log": reasons.REPLAY_PCR_MISMATCH,
    # PCRs 12-14 quoted, none of their events logged: every quoted PCR must be accounted for
    "windows_events_dropped": reasons.REPLAY_PCR_MISMATCH,
    # the relabelled unknown kernel stays in the boot chain (opaque code in PCR 4)
    "boot_app_relabelled": "policy.bootchain.applications",
    # SHA-1 and SHA-256 quoted, SHA-1 logged: every quoted bank must be replayed
    "sha1_only_log": reasons.REPLAY_PCR_MISMATCH,
    # PCRs 0-7 quoted of a policy that reads 8, 9 and 12-14 (intake refuses it first)
    "quote_fewer_pcrs": "policy.banks.required_pcrs",
    "pcr_bank_downgrade": reasons.BANKS_DOWNGRADE,
}
#: The PCR of the offending event each profile's expected failure must name (None: no event).
EXPECTED_PCR: dict[str, int | None] = {
    "secure_boot_off": 7, "boot_debugging_on": 12, "kernel_debugger_on": 12,
    "test_signing_on": 12, "code_integrity_off": 12, "unknown_bootloader": 4,
    "unknown_kernel": 4,
    "revoked_in_dbx": 4, "db_tampered": 7, "kernel_cmdline_tampered": 8, "forged_log": 7,
    "windows_events_dropped": None, "boot_app_relabelled": 4, "sha1_only_log": None,
    "quote_fewer_pcrs": None, "pcr_bank_downgrade": None,
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFleet]:
    with sim_fleet(tmp_path_factory.mktemp("vfleet")) as s:
        yield s


def test_every_verifier_profile_has_an_expectation() -> None:
    assert set(EXPECTED) == set(VERIFIER_PROFILES) == set(EXPECTED_PCR)


def test_clean_hosts_of_every_image_pass(sim: SimFleet) -> None:
    clean = sim.hosts(None)
    assert len({h.image for h in clean}) == 3
    assert any(h.host_id not in sim.reference_hosts for h in clean)
    codec = Codec.load()
    for i, h in enumerate(clean):
        col = collected_for(h, offset=i)
        v = appraise(col, sim.policy)
        assert v.passed, (h.host_id, h.image, v.failures)
        rec = v.record
        assert rec["result"] == "PASS" and rec["failed_rules"] == []
        assert rec["policy_id"] == "fleet-baseline" and rec["policy_version"] == 1
        assert rec["policy_digest"] == sim.policy.digest
        assert rec["verdict_id"] == verdict_id(col["evidence_digest"], sim.policy.digest)
        assert rec["appraised_at"] == RECEIVED_AT_MS + i
        assert rec["ear_status"] == "AFFIRMING"
        assert rec["trustworthiness"]["instance_identity"] == "AFFIRMING"
        assert rec["trustworthiness"]["executables"] == "AFFIRMING"
        ear = json.loads(rec["ear_json"])["submods"]["tpm-measured-boot"]
        assert ear["ear.status"] == "affirming"
        assert ear["ear.trustworthiness-vector"]["executables"] == 3  # approved boot
        quoted = {(p["bank"], p["pcr"]) for p in rec["attested_pcrs"]}
        assert ("SHA256", 7) in quoted and ("SHA1", 0) in quoted
        claims = json.loads(rec["claims_json"])
        assert claims["secure_boot"] is True and claims["replay_verified"] is True
        codec.encode(core.VERDICT_SUBJECT, rec)  # the record fits the schema


@pytest.mark.parametrize("profile", VERIFIER_PROFILES)
def test_tamper_profile_fails_with_its_rule_and_event(sim: SimFleet, profile: str) -> None:
    (host,) = sim.hosts(profile)
    v = appraise(collected_for(host), sim.policy)
    assert not v.passed
    assert v.record["result"] == "FAIL" and v.record["attested_pcrs"] == []
    matching = [f for f in v.failures if f.rule_id == EXPECTED[profile]]
    assert matching, (profile, [(f.rule_id, f.sentence) for f in v.failures])
    failure = matching[0]
    assert failure.sentence.endswith(".") and len(failure.sentence) > 20
    want_pcr = EXPECTED_PCR[profile]
    if want_pcr is None:
        assert failure.event is None
    else:
        assert failure.event is not None, failure
        assert failure.event["pcr"] == want_pcr
        assert failure.event["seq"] >= 0 and failure.event["digest"]
        assert failure.event["event_type_name"].startswith("EV_")
    assert v.record["ear_status"] == "CONTRAINDICATED"


def test_a_rooted_windows_host_hiding_its_boot_configuration_fails_replay(sim: SimFleet) -> None:
    """Kernel debugger on: the honest log fails the debugger rule, so root leaves PCRs 11-14 out
    of the log. PCRs 12-14 are quoted (the policy reads them) and no longer accounted for."""
    (host,) = sim.hosts("windows_events_dropped")
    honest = appraise(collected_for(host, round_no=1, submitted_changes={
        "boot_log": host.measured_boot.log_bytes()}), sim.policy)
    assert "policy.debug.kernel_debugger" in honest.reason_ids, honest.failures
    v = appraise(collected_for(host), sim.policy)
    assert "policy.debug.kernel_debugger" not in v.reason_ids  # nothing to read it from...
    (f,) = [f for f in v.failures if f.rule_id == reasons.REPLAY_PCR_MISMATCH]
    assert "PCR 12" in f.sentence  # ...and the quote is not accounted for


def test_a_relabelled_kernel_stays_in_the_boot_chain(sim: SimFleet) -> None:
    """Root relabelled the unknown kernel's PCR 4 event as EV_IPL and extended and logged the
    approved kernel after it: the log replays, and the boot chain still holds the unknown one."""
    from services.agent.measured_boot import boot_binary
    from services.tpm.eventlog_builder import TPM_ALG_SHA256

    (host,) = sim.hosts("boot_app_relabelled")
    assert [e.pcr for e in host.after_boot_extends] == [4]  # a real extend in its swtpm
    v = appraise(collected_for(host), sim.policy)
    assert reasons.REPLAY_PCR_MISMATCH not in v.reason_ids  # the edited log replays
    apps = json.loads(v.record["claims_json"])["boot_applications"]
    assert [a["kind"] for a in apps] == ["application", "application", "opaque", "application"]
    unknown = boot_binary(host.image, "vmlinuz", "unknown").authenticode(TPM_ALG_SHA256)
    golden = boot_binary(host.image, "vmlinuz").authenticode(TPM_ALG_SHA256)
    assert [apps[2]["digests"]["sha256"], apps[3]["digests"]["sha256"]] == [unknown.hex(),
                                                                          golden.hex()]
    (f,) = [f for f in v.failures if f.rule_id == "policy.bootchain.applications"]
    assert "4 boot application(s)" in f.sentence


@pytest.mark.parametrize(("label", "data", "reason"), [
    # outside PCR 4's row of the per-PCR type table: fails closed
    (0x00000001, b"ACPI DATA", "tpm.event.unexpected_type: EV_POST_CODE in PCR 4"),
    # GRUB's string convention: the data must hash to the digest, and it does not
    (0x0000000D, b"grub_cmd: insmod part_gpt\x00", "tpm.binding.digest_mismatch"),
])
def test_the_relabelled_kernel_under_another_label_fails_closed(
        sim: SimFleet, label: int, data: bytes, reason: str) -> None:
    """The same host and TPM state (root's extend of the approved kernel is in), the kernel's
    event logged under another label: the log still replays, the evidence fails closed."""
    from services.agent.tamper import LogEdit

    (host,) = sim.hosts("boot_app_relabelled")
    log = LogEdit(relabel_last_application_as=label, relabel_data=data,
                  append_application="vmlinuz").apply(host.measured_boot).log
    v = appraise(collected_for(host, round_no=2, submitted_changes={"boot_log": log}),
                 sim.policy)
    assert reasons.REPLAY_PCR_MISMATCH not in v.reason_ids
    (f,) = [f for f in v.failures if f.rule_id == "policy.evidence.anomalies"]
    assert reason in f.sentence and "PCR 4" in f.sentence


def test_quotes_that_leave_out_what_the_policy_reads_fail(sim: SimFleet) -> None:
    """Past intake (which refuses both selections first), the verifier still fails them: a
    SHA-1-only log under a SHA-1 + SHA-256 quote, and a quote of PCRs 0-7 only."""
    (sha1_log,) = sim.hosts("sha1_only_log")
    col = collected_for(sha1_log)
    assert {p["bank"] for p in col["evidence"]["pcr_values"]} == {"SHA1", "SHA256"}
    (f,) = [f for f in appraise(col, sim.policy).failures
            if f.rule_id == reasons.REPLAY_PCR_MISMATCH]
    assert "sha256" in f.sentence and "does not carry" in f.sentence
    (fewer,) = sim.hosts("quote_fewer_pcrs")
    col = collected_for(fewer)
    assert {p["pcr"] for p in col["evidence"]["pcr_values"]} == set(range(8))
    (f,) = [f for f in appraise(col, sim.policy).failures
            if f.rule_id == "policy.banks.required_pcrs"]
    assert "PCRs 8, 9, 12, 13, 14 are required but not quoted" in f.sentence


def test_forged_log_names_first_pcr_and_the_events_that_built_it(sim: SimFleet) -> None:
    (host,) = sim.hosts("forged_log")
    v = appraise(collected_for(host), sim.policy)
    (f,) = [f for f in v.failures if f.rule_id == reasons.REPLAY_PCR_MISMATCH]
    assert "PCR 7" in f.sentence and "built by events [" in f.sentence
    assert json.loads(v.record["ear_json"])["submods"]["tpm-measured-boot"][
        "ear.trustworthiness-vector"]["executables"] == 96


def test_bad_signature_fails_even_past_intake(sim: SimFleet) -> None:
    host = sim.hosts(None)[0]
    col = collected_for(host)
    sig = bytearray(col["evidence"]["quote_signature"])
    sig[-1] ^= 0x01
    col["evidence"]["quote_signature"] = bytes(sig)
    v = appraise(col, sim.policy)
    assert v.reason_ids == (reasons.QUOTE_BAD_SIGNATURE,)
    assert v.record["quote_counters"] is None and v.record["claims_json"] == "{}"
    assert v.record["trustworthiness"]["instance_identity"] == "CONTRAINDICATED"


def test_quote_from_a_never_enrolled_ak_fails(sim: SimFleet, tmp_path: Path) -> None:
    a, b = sim.hosts(None)[:2]
    col = collected_for(a)
    col["ak_public"], col["ak_name"] = b.ak_public, collected_for(b)["ak_name"]
    v = appraise(col, sim.policy)
    assert v.reason_ids == (reasons.QUOTE_BAD_SIGNATURE,)


def test_nonce_and_pcr_value_tampering_fail_with_distinct_reasons(sim: SimFleet) -> None:
    host = sim.hosts(None)[0]
    col = collected_for(host)
    col["evidence"]["nonce"] = bytes(32)
    assert appraise(col, sim.policy).reason_ids == (reasons.QUOTE_NONCE_MISMATCH,)
    col = collected_for(host)
    values = col["evidence"]["pcr_values"]
    values[0] = {**values[0], "value": bytes(len(values[0]["value"]))}
    assert appraise(col, sim.policy).reason_ids == (reasons.QUOTE_PCR_DIGEST_MISMATCH,)


def _counters(col: dict[str, Any]) -> dict[str, Any]:
    return QuoteCounters.from_clock_info(
        decode_attest(col["evidence"]["quote_attest"]).clock_info).to_avro()


def test_counters_going_backwards_fail_and_a_reboot_passes(sim: SimFleet) -> None:
    host = sim.hosts(None)[0]
    col = collected_for(host)
    now = _counters(col)
    ahead = {**now, "reset_count": now["reset_count"] + 1}
    v = appraise(collected_for(host, previous_counters=ahead), sim.policy)
    assert v.reason_ids == (reasons.COUNTERS_WENT_BACKWARDS,)
    assert "resetCount went backwards" in v.failures[0].sentence
    assert v.record["quote_counters"] is None  # never hand backwards counters on
    later = {**now, "clock": now["clock"] + 10_000_000}
    v = appraise(collected_for(host, previous_counters=later), sim.policy)
    assert v.reason_ids == (reasons.COUNTERS_WENT_BACKWARDS,)
    if now["reset_count"] > 0:
        before_reboot = {**now, "reset_count": now["reset_count"] - 1, "clock": 10**12}
        assert appraise(collected_for(host, previous_counters=before_reboot), sim.policy).passed
    earlier = {**now, "clock": max(0, now["clock"] - 1)}
    v = appraise(collected_for(host, previous_counters=earlier), sim.policy)
    assert v.passed, v.failures
    assert v.record["quote_counters"]["reset_count"] == now["reset_count"]


def test_truncated_log_is_a_failed_verdict_naming_the_offset(sim: SimFleet) -> None:
    host = sim.hosts(None)[0]
    col = collected_for(host)
    log = col["evidence"]["boot_log"]
    col["evidence"]["boot_log"] = log[: len(log) - 7]  # cut inside the last event's data
    v = appraise(col, sim.policy)
    assert v.reason_ids == (reasons.LOG_MALFORMED,)
    assert "byte offset" in v.failures[0].sentence
    col["evidence"]["boot_log"] = b"\x00" * 3
    v = appraise(col, sim.policy)
    assert v.reason_ids == (reasons.LOG_MALFORMED,) and "byte offset 0" in v.failures[0].sentence


def test_no_policy_or_unusable_policy_fails_closed(sim: SimFleet) -> None:
    host = sim.hosts(None)[0]
    col = collected_for(host)
    v = appraise(col, None)
    assert v.reason_ids == (reasons.POLICY_NONE_IN_FORCE,)
    assert v.record["policy_id"] == "" and v.record["verdict_id"] == verdict_id(
        col["evidence_digest"], b"")
    assert json.loads(v.record["claims_json"])["secure_boot"] is True  # claims still reported
    v = appraise(col, PolicyUnusable("policy 'x' version 3: digest is not the SHA-256"))
    assert v.reason_ids == (reasons.POLICY_UNUSABLE,)


def test_verdict_bytes_are_identical_twice_and_across_processes(sim: SimFleet,
                                                                tmp_path: Path) -> None:
    codec = Codec.load()
    cols = [collected_for(sim.hosts(p)[0]) for p in ("db_tampered", "forged_log")]
    cols.append(collected_for(sim.hosts(None)[0]))
    blobs = []
    for col in cols:
        first = codec.encode(core.VERDICT_SUBJECT, appraise(col, sim.policy).record)
        second = codec.encode(core.VERDICT_SUBJECT, appraise(col, sim.policy).record)
        assert first == second
        blobs.append(first)
    (tmp_path / "policy.yaml").write_text(sim.policy_text)
    for i, col in enumerate(cols):
        (tmp_path / f"c{i}.avro").write_bytes(codec.encode("hostgate.EvidenceCollected", col))
    script = (
        "import sys, pathlib\n"
        "from services.runtime.codec import Codec\n"
        "from services.verifier.core import appraise, VERDICT_SUBJECT\n"
        "from services.verifier.policy_in_force import published_record, load_in_force\n"
        "d = pathlib.Path(sys.argv[1]); c = Codec.load()\n"
        "p = load_in_force(published_record((d / 'policy.yaml').read_text(), version=1,\n"
        "                  published_at_ms=0, author='x'))\n"
        "for i in range(int(sys.argv[2])):\n"
        "    rec = c.decode((d / f'c{i}.avro').read_bytes()).record\n"
        "    out = c.encode(VERDICT_SUBJECT, appraise(rec, p).record)\n"
        "    (d / f'v{i}.avro').write_bytes(out)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(len(cols))], cwd=REPO,
                   env=env, check=True, timeout=120)
    for i, blob in enumerate(blobs):
        other = (tmp_path / f"v{i}.avro").read_bytes()
        assert hashlib.sha256(other).hexdigest() == hashlib.sha256(blob).hexdigest(), i


def test_ima_list_replays_to_pcr_10_and_its_foreign_boot_aggregate_fails(
        sim: SimFleet, corpus_dir: Path) -> None:
    """Corpus J04 (tpm2-tss sml-ima-ng-sha1.bin, a real kernel's list) extended into PCR 10 of
    a simulated host: the list replays to the quote, but its boot_aggregate was computed from
    another machine's PCRs, so the verdict names that."""
    # the manifest notes one trailing 0x0a byte in this file (a fixture artefact): drop it
    raw = (corpus_dir / "logs" / "J04__tpm2-tss__sml-ima-ng-sha1.bin").read_bytes()[:-1]
    parsed = tpm_ima.parse(raw)
    host = sim.hosts(None)[-1]
    for entry in parsed.entries:
        digests = {b: tpm_ima_replay.template_digest(entry, b) for b in ("sha1", "sha256")}
        host.extend(entry.pcr, digests)
    col = collected_for(host, pcrs=(*range(11), 12, 13, 14), ima_log=raw, round_no=5)
    # PCR 10 is quoted and moved; a policy that does not say IMA accounts for it cannot
    # confirm it from the boot log
    unaccounted = appraise(col, sim.policy)
    assert reasons.REPLAY_PCR_MISMATCH in unaccounted.reason_ids
    policy = with_ima_pcr(sim.policy)
    v = appraise(col, policy)
    assert v.reason_ids == (reasons.IMA_BOOT_AGGREGATE,), v.failures
    ima = json.loads(v.record["claims_json"])["ima"]
    assert len(ima) == len(parsed.entries) and ima[0]["path"] == "boot_aggregate"
    col["evidence"]["ima_log"] = raw[:-3]
    assert appraise(col, policy).reason_ids == (reasons.IMA_MALFORMED,)
    col["evidence"]["ima_log"] = None
    assert appraise(col, policy).reason_ids == (reasons.IMA_MISSING,)
