"""Coverage belongs to the policy, not to the host under appraisal.

The challenge asks for the banks and PCRs the policy in force reads (``coverage(policy)``), plus
``HOSTGATE_REQUIRED_PCRS`` in every bank; what the host offers changes nothing. Intake refuses,
with ``SELECTION_MISMATCH``, a quote whose selection is not exactly the challenge's (a host that
leaves out the PCRs a rule reads would otherwise make that rule unanswerable).

The collector's core runs as the runtime runs it (codec on every edge, state through a view);
its configuration comes from the environment, as ``hostgate run collector`` reads it. Quotes in
the swtpm test are made by a real TPM.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from services.collector.config import CollectorConfig
from tests.security.intake_support import (
    ASK,
    COLLECTED,
    EVIDENCE,
    NONCE,
    REJECTED,
    now_ms,
    tpm_lab,
)
from tests.unit.collector_support import (
    EkPki,
    Harness,
    SeededRandom,
    SoftHost,
    only,
    rejection,
)

POLICY_ID = "cov-policy"
# Secure Boot reads PCR 7, the kernel debugger flag PCRs 12-14 (SIPA), the kernel command line
# PCRs 8, 9 and 12: the policy's coverage is SHA-256 x 0-9, 12-14.
COVERAGE_POLICY = f"""\
apiVersion: hostgate/v1
kind: AttestationPolicy
metadata:
  id: {POLICY_ID}
  version: 1
spec:
  secureBoot:
    enabled: true
  debug:
    kernelDebugger: false
  bootChain:
    kernelCmdline:
      forbidden: ["init=/bin/sh"]
"""
POLICY_PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14]
TWO_BANKS_POLICY = COVERAGE_POLICY + """\
  banks:
    require: [sha1, sha256]
"""


@pytest.fixture(scope="module")
def pki() -> EkPki:
    return EkPki()


def _harness(pki: EkPki, tmp_path: Path, **env: str) -> Harness:
    """The collector core configured from the environment, as ``hostgate run collector``."""
    ca_dir = tmp_path / "ek-ca"
    ca_dir.mkdir(exist_ok=True)
    (ca_dir / "root.pem").write_bytes(pki.root.public_bytes(Encoding.PEM))
    (ca_dir / "ica.pem").write_bytes(pki.ica.public_bytes(Encoding.PEM))
    cfg = CollectorConfig.from_env({"HOSTGATE_EK_CA_DIR": str(ca_dir), "HOSTGATE_POLICY_ID": POLICY_ID,
                       **env})
    return Harness(dataclasses.replace(cfg, random_bytes=SeededRandom(),
                                       challenge_rate_count=100, max_open_challenges=64))


def _enrol(hx: Harness, host: SoftHost) -> None:
    challenge = only(hx.feed("hostgate.EnrollmentRequested", host.enroll()),
                     "hostgate.ActivationChallenge")
    secret = hx.cfg.random_bytes.handed_out[-1]  # type: ignore[attr-defined]
    done = hx.feed("hostgate.ActivationProof", host.proof(challenge["challenge_id"], secret))
    assert only(done, "hostgate.EnrollmentResult")["result"] == "ENROLLED"


def _selection(issued: Any) -> list[tuple[str, list[int]]]:
    return [(s["bank"], list(s["pcrs"])) for s in issued["pcr_selection"]]


def test_the_challenge_asks_for_the_policy_coverage_whatever_the_host_offers(
        pki: EkPki, tmp_path: Path) -> None:
    hx = _harness(pki, tmp_path)
    hx.publish_policy(COVERAGE_POLICY)
    host = SoftHost("host-cov", pki)
    _enrol(hx, host)
    # A host offering only SHA-1 and the firmware PCRs still gets SHA-256 with every PCR the
    # policy's rules read (PCR 8 for the command line, 12-14 for the debugger flag).
    issued = only(hx.feed(ASK, host.ask("a1", tuple(range(8)), banks=("SHA1",))), NONCE)
    assert _selection(issued) == [("SHA256", POLICY_PCRS)]
    # Offering fewer PCRs does not shrink it; offering more banks and PCRs does not widen it.
    for rid, pcrs, banks in (("a2", (0,), ("SHA256",)),
                             ("a3", tuple(range(24)), ("SHA1", "SHA256", "SHA384"))):
        issued = only(hx.feed(ASK, host.ask(rid, pcrs, banks=banks)), NONCE)
        assert _selection(issued) == [("SHA256", POLICY_PCRS)], (rid, issued)
    # The selection asked is the one intake holds the evidence to.
    pending = hx.state.get("challenges", issued["challenge_id"])
    assert pending is not None and _selection(pending) == [("SHA256", POLICY_PCRS)]


def test_required_pcrs_are_added_to_every_bank_the_policy_requires(
        pki: EkPki, tmp_path: Path) -> None:
    hx = _harness(pki, tmp_path, HOSTGATE_REQUIRED_PCRS="0-7,16,23")
    hx.publish_policy(TWO_BANKS_POLICY)
    host = SoftHost("host-req", pki)
    _enrol(hx, host)
    issued = only(hx.feed(ASK, host.ask("a1", tuple(range(8)), banks=("SHA256",))), NONCE)
    want = sorted({*POLICY_PCRS, 16, 23})
    assert sorted(_selection(issued)) == [("SHA1", want), ("SHA256", want)]


def test_without_a_usable_policy_the_challenge_asks_sha256_firmware_and_required_pcrs(
        pki: EkPki, tmp_path: Path) -> None:
    hx = _harness(pki, tmp_path, HOSTGATE_REQUIRED_PCRS="0-7,10")
    host = SoftHost("host-nopolicy", pki)
    _enrol(hx, host)
    decision = hx.feed(ASK, host.ask("a1", tuple(range(24)), banks=("SHA1",)))
    issued = only(decision, NONCE)
    assert _selection(issued) == [("SHA256", [0, 1, 2, 3, 4, 5, 6, 7, 10])]
    assert decision.log.get("policy") == "none", decision.log
    # A policy record that cannot be used (its digest is not its document's) is no policy.
    hx.publish_policy(COVERAGE_POLICY)
    rows = hx.state.tables["policies"]
    rows[POLICY_ID] = {**rows[POLICY_ID], "digest": b"\x00" * 32}
    decision = hx.feed(ASK, host.ask("a2", tuple(range(24)), banks=("SHA1",)))
    assert _selection(only(decision, NONCE)) == [("SHA256", [0, 1, 2, 3, 4, 5, 6, 7, 10])]
    assert decision.log.get("policy") == "unusable", decision.log


@pytest.mark.parametrize(("label", "quoted"), [
    ("fewer PCRs", "sha256:0,1,2,3,4,5,6,7"),
    ("more PCRs", "sha256:0,1,2,3,4,5,6,7,8,9,12,13,14,15"),
    ("another bank only", "sha1:0,1,2,3,4,5,6,7,8,9,12,13,14"),
    ("an extra bank", "sha1:0,1,2,3,4,5,6,7,8,9,12,13,14+sha256:0,1,2,3,4,5,6,7,8,9,12,13,14"),
    ("the bank split in two", "sha256:0,1,2,3,4,5,6,7+sha256:8,9,12,13,14"),
])
def test_a_quote_over_another_selection_is_refused(pki: EkPki, tmp_path: Path, label: str,
                                                   quoted: str) -> None:
    hx = _harness(pki, tmp_path)
    hx.publish_policy(COVERAGE_POLICY)
    host = SoftHost("host-sel", pki)
    _enrol(hx, host)
    issued = only(hx.feed(ASK, host.ask("a1")), NONCE)
    decision = hx.feed(EVIDENCE, host.evidence(issued["challenge_id"], issued["nonce"],
                                               pcrs=quoted))
    reason, detail = rejection(decision)
    assert reason == "SELECTION_MISMATCH", (label, detail)
    assert "sha256:0-9,12-14" in detail, detail  # names what was asked ...
    assert quoted.split("+")[0].split(":")[0] in detail  # ... and what was quoted
    # It is the host's own signed evidence: its challenge is used up, nothing is accepted.
    assert hx.state.get("challenges", issued["challenge_id"]) is None
    track = hx.state.get("hosts", "host-sel")
    assert track is not None and track["last_counters"] is None
    again = hx.feed(EVIDENCE, host.evidence(issued["challenge_id"], issued["nonce"],
                                            pcrs="sha256:0,1,2,3,4,5,6,7,8,9,12,13,14",
                                            evidence_id="ev-2"))
    assert rejection(again)[0] == "REPLAYED_NONCE"


def test_a_real_quote_over_fewer_pcrs_than_asked_is_refused_and_the_exact_one_collected(
        tmp_path: Path) -> None:
    """A swtpm host quotes PCRs 0-7 when the challenge asked for 0-14 (the policy plus
    ``HOSTGATE_REQUIRED_PCRS=0-14``): refused, naming both; then it quotes exactly what a new
    challenge asks and is collected."""
    with tpm_lab(tmp_path, ["tpm-host"]) as lab:
        hx = lab.harness({"HOSTGATE_POLICY_ID": POLICY_ID, "HOSTGATE_REQUIRED_PCRS": "0-14"})
        hx.publish_policy(COVERAGE_POLICY)
        lab.enrol(hx, "tpm-host")
        host = lab.hosts["tpm-host"]
        issued = only(hx.feed(ASK, host.ask("a1"), at_ms=now_ms()), NONCE)
        asked = _selection(issued)
        assert asked == [("SHA256", list(range(15)))]
        short = host.quote(bytes(issued["nonce"]), [("sha256", range(8))])
        decision = hx.feed(EVIDENCE, host.evidence(issued, short), at_ms=now_ms())
        reason, detail = rejection(decision)
        assert reason == "SELECTION_MISMATCH" and decision.outputs[0].subject == REJECTED
        assert "sha256:0-14" in detail and "sha256:0-7" in detail, detail

        issued = only(hx.feed(ASK, host.ask("a2"), at_ms=now_ms()), NONCE)
        exact = host.quote(bytes(issued["nonce"]), [("sha256", range(15))])
        collected = only(hx.feed(EVIDENCE, host.evidence(issued, exact, evidence_id="ev-2"),
                                 at_ms=now_ms()), COLLECTED)
        assert collected["evidence"]["quote_attest"] == exact.attest
