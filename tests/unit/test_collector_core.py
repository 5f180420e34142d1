"""The collector's pure core: enrolment, challenges and intake decisions (no broker, no TPM).

Inputs, outputs and state rows all pass through the real Avro codec (see ``collector_support``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.constants import TPMA_OBJECT

from services.collector.config import CollectorConfig, IntakeLimits, parse_pcr_list
from services.errors import ConfigError
from services.runtime.codec import Codec
from services.runtime.stage import Decision
from services.tpm.errors import MalformedTpmStructure
from services.wire.ids import record_digest
from tests.unit.collector_support import (
    AK_ATTRS,
    NOW_MS,
    EkPki,
    Harness,
    SeededRandom,
    SoftHost,
    ak_public_of,
    only,
    request_digest_spec,
)
from tests.unit.collector_support import rejection as single_rejection

ENROLL = "hostgate.EnrollmentRequested"
PROOF = "hostgate.ActivationProof"
ASK = "hostgate.ChallengeRequested"
EVIDENCE = "hostgate.EvidenceSubmitted"
TTL = 120_000
RESULT = "hostgate.EnrollmentResult"


def refused(decision: Decision) -> dict[str, Any]:
    """The REFUSED ``EnrollmentResult`` beside a decision's ``IntakeRejected``; it must repeat
    the rejection's reason and detail and sit on the challenges topic under the host's key."""
    assert [o.subject for o in decision.outputs] == ["hostgate.IntakeRejected", RESULT], decision
    rej, res = decision.outputs
    assert res.topic == "attest.challenges.v1" and res.key == rej.key
    assert res.record["result"] == "REFUSED" and res.id == res.record["result_id"]
    assert res.record["reason"] == rej.record["reason"]
    assert res.record["detail"] == rej.record["detail"]
    assert res.record["decided_at"] == rej.record["rejected_at"]
    return dict(res.record)


def rejection(decision: Decision) -> tuple[str, str]:
    """(reason, detail) of a refusal: an ``IntakeRejected`` alone, or followed by the host's
    REFUSED ``EnrollmentResult`` (checked by ``refused``)."""
    if len(decision.outputs) == 2:
        refused(decision)
        return single_rejection(dataclasses.replace(decision, outputs=decision.outputs[:1]))
    return single_rejection(decision)


@pytest.fixture(scope="module")
def pki() -> EkPki:
    return EkPki()


def _config(pki: EkPki, rnd: SeededRandom, **kw: Any) -> CollectorConfig:
    return CollectorConfig(trusted_cas=(pki.root,), intermediates=(pki.ica,),
                           random_bytes=rnd, nonce_ttl_ms=TTL, **kw)


@pytest.fixture()
def rnd() -> SeededRandom:
    return SeededRandom()


@pytest.fixture()
def hx(pki: EkPki, rnd: SeededRandom) -> Harness:
    return Harness(_config(pki, rnd))


def _enrol(hx: Harness, host: SoftHost, rnd: SeededRandom) -> None:
    challenge = only(hx.feed(ENROLL, host.enroll()), "hostgate.ActivationChallenge")
    secret = rnd.handed_out[-1]
    decision = hx.feed(PROOF, host.proof(challenge["challenge_id"], secret))
    assert only(decision, RESULT)["result"] == "ENROLLED"
    assert decision.log["outcome"] == "enrolled"


def _nonce(hx: Harness, host: SoftHost, at_ms: int = NOW_MS, rid: str = "ask-1"
           ) -> dict[str, Any]:
    return dict(only(hx.feed(ASK, host.ask(rid), at_ms=at_ms), "hostgate.NonceIssued"))


# -- enrolment ---------------------------------------------------------------------------------

def test_enrolment_accepted_with_correct_proof(hx: Harness, pki: EkPki,
                                               rnd: SeededRandom) -> None:
    host = SoftHost("host-a", pki)
    decision = hx.feed(ENROLL, host.enroll())
    challenge = only(decision, "hostgate.ActivationChallenge")
    assert challenge["host_id"] == "host-a" and challenge["request_id"] == "enr-1"
    assert challenge["expires_at"] == NOW_MS + hx.cfg.activation_ttl_ms
    # A real TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (RSA-2048 EK: 256-byte OAEP seed).
    assert struct.unpack(">H", challenge["encrypted_secret"][:2])[0] == 256
    assert len(challenge["credential_blob"]) > 32
    row = hx.state.get("enrollments", "host-a")
    assert row is not None and row["state"] == "CHALLENGED"
    secret = rnd.handed_out[-1]
    (pending,) = row["pending"]
    assert pending["challenge_id"] == challenge["challenge_id"]
    assert pending["stage"] == "CHALLENGED"
    assert pending["secret_sha256"] == hashlib.sha256(secret).digest()
    assert not any(secret in blob for blob in hx.encoded_state), "secret stored in state"
    assert secret not in repr(decision.log).encode()
    assert row["ek"]["chain_verified"] is True

    proof = host.proof(challenge["challenge_id"], secret)
    done = hx.feed(PROOF, proof)
    row = hx.state.get("enrollments", "host-a")
    assert row is not None and row["state"] == "ENROLLED"
    # The host is told, once, on its challenges partition, with the enrolled AK's name.
    (told,) = done.outputs
    assert told.subject == RESULT and told.topic == "attest.challenges.v1"
    assert told.key == "host-a" and told.id == told.record["result_id"]
    # It answers the EK registry's grant (collector.ek-grants.v1), which follows the proof.
    assert told.id.startswith("collector:enrollment-result:collector.ek-grants.v1:0:")
    assert told.record == {
        "result_id": told.id, "host_id": "host-a", "request_id": proof["request_id"],
        "challenge_id": challenge["challenge_id"], "result": "ENROLLED", "reason": "",
        "detail": told.record["detail"], "ak_name": row["ak_name"], "decided_at": NOW_MS}
    assert row["ak_name"] == b"\x00\x0b" + hashlib.sha256(host.ak_public[2:]).digest()
    assert "enrolled" in told.record["detail"] and secret.hex() not in told.record["detail"]
    assert row["pending"] == [] and row["ek_key_sha256"] is not None
    assert row["ak_public"] == host.ak_public


def test_wrong_proof_is_refused_and_burns_nothing(hx: Harness, pki: EkPki,
                                                  rnd: SeededRandom) -> None:
    host = SoftHost("host-b", pki)
    challenge = only(hx.feed(ENROLL, host.enroll()), "hostgate.ActivationChallenge")
    secret = rnd.handed_out[-1]
    before = hx.state.get("enrollments", "host-b")
    wrong = hx.feed(PROOF, host.proof(challenge["challenge_id"], bytes(32)))
    reason, detail = rejection(wrong)
    assert reason == "FAILED_ACTIVATION" and "secret_proof" in detail
    # Anyone may send a proof: a wrong one changes no state (32 random bytes: no guessing).
    assert wrong.state_updates == () and hx.state.get("enrollments", "host-b") == before
    assert rejection(hx.feed(ASK, host.ask()))[0] == "UNENROLLED_AK"
    # The right secret afterwards still enrols.
    hx.feed(PROOF, host.proof(challenge["challenge_id"], secret, request_id="proof-2"))
    row = hx.state.get("enrollments", "host-b")
    assert row is not None and row["state"] == "ENROLLED"


def test_late_proof_fails(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-late", pki)
    challenge = only(hx.feed(ENROLL, host.enroll()), "hostgate.ActivationChallenge")
    late = NOW_MS + hx.cfg.activation_ttl_ms + 1
    reason, detail = rejection(hx.feed(
        PROOF, host.proof(challenge["challenge_id"], rnd.handed_out[-1]), at_ms=late))
    assert reason == "FAILED_ACTIVATION" and "expired" in detail


def test_cert_from_untrusted_ca_is_refused(hx: Harness) -> None:
    host = SoftHost("host-c", EkPki("Rogue Manufacturer"))
    reason, detail = rejection(hx.feed(ENROLL, host.enroll()))
    assert reason == "BAD_EK_CERTIFICATE" and "ek_cert" in detail
    assert hx.state.get("enrollments", "host-c") is None


def test_cert_for_another_key_is_refused(hx: Harness, pki: EkPki) -> None:
    host, other = SoftHost("host-d", pki), SoftHost("host-d2", pki)
    reason, detail = rejection(hx.feed(ENROLL, host.enroll(ek_cert=other.ek_cert)))
    assert reason == "BAD_EK_CERTIFICATE" and "not the TPM's EK" in detail


def test_no_cert_refused_unless_configured(pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-nocert", pki)
    reason, _ = rejection(Harness(_config(pki, rnd)).feed(ENROLL, host.enroll(ek_cert=False)))
    assert reason == "BAD_EK_CERTIFICATE"
    hx = Harness(_config(pki, rnd, allow_ek_without_cert=True))
    only(hx.feed(ENROLL, host.enroll(ek_cert=False)), "hostgate.ActivationChallenge")
    row = hx.state.get("enrollments", "host-nocert")
    assert row is not None and row["ek"]["chain_verified"] is False


@pytest.mark.parametrize("drop", [TPMA_OBJECT.RESTRICTED, TPMA_OBJECT.FIXEDTPM,
                                  TPMA_OBJECT.FIXEDPARENT, TPMA_OBJECT.SENSITIVEDATAORIGIN])
def test_ak_without_required_attribute_is_refused(hx: Harness, pki: EkPki,
                                                  drop: TPMA_OBJECT) -> None:
    host = SoftHost("host-e", pki)
    weak = ak_public_of(host.ak_key, AK_ATTRS & ~drop)
    reason, detail = rejection(hx.feed(ENROLL, host.enroll(ak_public=weak)))
    assert reason == "BAD_AK_ATTRIBUTES"
    expected = {TPMA_OBJECT.RESTRICTED: "RESTRICTED", TPMA_OBJECT.FIXEDTPM: "FIXED_TPM",
                TPMA_OBJECT.FIXEDPARENT: "FIXED_PARENT",
                TPMA_OBJECT.SENSITIVEDATAORIGIN: "SENSITIVE_DATA_ORIGIN"}[drop]
    assert expected in detail


def test_garbage_ak_is_malformed(hx: Harness, pki: EkPki) -> None:
    host = SoftHost("host-g", pki)
    reason, detail = rejection(hx.feed(ENROLL, host.enroll(ak_public=b"\x00\x04abcd")))
    assert reason == "MALFORMED" and "ak_public" in detail


def test_reenrolment_with_new_ek_fails_closed(hx: Harness, pki: EkPki,
                                              rnd: SeededRandom) -> None:
    host = SoftHost("host-f", pki)
    _enrol(hx, host, rnd)
    before = dict(hx.state.get("enrollments", "host-f") or {})
    imposter = SoftHost("host-f", pki)  # same host id, another TPM with a valid EK cert
    decision = hx.feed(ENROLL, imposter.enroll("enr-2"))
    reason, detail = rejection(decision)
    assert reason == "UNAUTHENTICATED" and "enrolled AK" in detail  # it cannot sign for it
    assert hx.state.get("enrollments", "host-f") == before
    # the host itself (its enrolled AK signs) presenting another EK: refused too, as EK_CHANGED
    imposter.clock = host.clock
    decision = hx.feed(ENROLL, imposter.enroll("enr-3", rotating_from=host.ak_key))
    reason, detail = rejection(decision)
    assert reason == "EK_CHANGED" and "another EK" in detail
    assert decision.log["anomaly"] is True
    assert hx.state.get("enrollments", "host-f") == before


def test_ak_rotation_keeps_old_ak_until_proof(hx: Harness, pki: EkPki,
                                              rnd: SeededRandom) -> None:
    host = SoftHost("host-rot", pki)
    _enrol(hx, host, rnd)
    old_ak = host.ak_public
    new_key = ec.generate_private_key(ec.SECP256R1())
    unsigned = hx.feed(ENROLL, host.enroll("enr-u", ak_public=ak_public_of(new_key)))
    assert rejection(unsigned)[0] == "UNAUTHENTICATED"  # a rotation needs the current AK
    challenge = only(hx.feed(ENROLL, host.enroll("enr-2", ak_public=ak_public_of(new_key),
                                                 rotating_from=host.ak_key)),
                     "hostgate.ActivationChallenge")
    row = hx.state.get("enrollments", "host-rot")
    assert row is not None and row["state"] == "ENROLLED" and row["ak_public"] == old_ak
    # Evidence signed by the old AK still passes while the rotation is pending.
    nonce = _nonce(hx, host)
    only(hx.feed(EVIDENCE, host.evidence(nonce["challenge_id"], nonce["nonce"])),
         "hostgate.EvidenceCollected")
    hx.feed(PROOF, host.proof(challenge["challenge_id"], rnd.handed_out[-2]))
    row = hx.state.get("enrollments", "host-rot")
    assert row is not None and row["ak_public"] == ak_public_of(new_key)
    assert row["pending"] == []


def test_record_for_another_host_is_refused(hx: Harness, pki: EkPki) -> None:
    host = SoftHost("host-h", pki)
    reason, _ = rejection(hx.feed(ENROLL, host.enroll(), key="host-other"))
    assert reason == "HOST_MISMATCH"


# -- challenges ------------------------------------------------------------------------------

def test_unknown_host_gets_a_rejection_not_a_nonce(hx: Harness, pki: EkPki) -> None:
    host = SoftHost("host-unknown", pki)
    assert rejection(hx.feed(ASK, host.ask()))[0] == "UNENROLLED_AK"
    reason, _ = rejection(hx.feed(EVIDENCE, host.evidence("nonce-x", bytes(32))))
    assert reason == "UNENROLLED_AK"


def test_nonce_issued_with_selection_and_expiry(hx: Harness, pki: EkPki,
                                                rnd: SeededRandom) -> None:
    host = SoftHost("host-n", pki)
    _enrol(hx, host, rnd)
    issued = _nonce(hx, host)
    assert issued["nonce"] == rnd.handed_out[-1] and len(issued["nonce"]) == 32
    assert issued["expires_at"] == NOW_MS + TTL
    # No policy in force here: SHA-256 with PCRs 0-7 (the host offered SHA-256 and SHA-1).
    assert issued["pcr_selection"] == [{"bank": "SHA256", "pcrs": list(range(8))}]
    pending = hx.state.get("challenges", issued["challenge_id"])
    assert pending is not None and pending["host_id"] == "host-n"


def test_rate_limit_per_host_and_window(pki: EkPki, rnd: SeededRandom) -> None:
    hx = Harness(_config(pki, rnd, challenge_rate_count=3, challenge_rate_window_ms=60_000,
                         max_open_challenges=10))
    host = SoftHost("host-r", pki)
    _enrol(hx, host, rnd)
    for i in range(3):
        _nonce(hx, host, NOW_MS + i, rid=f"ask-{i}")
    reason, detail = rejection(hx.feed(ASK, host.ask("ask-4"), at_ms=NOW_MS + 10))
    assert reason == "RATE_LIMITED" and "limit 3" in detail
    _nonce(hx, host, NOW_MS + 60_000, rid="ask-5")  # next window


def test_request_binding_is_the_documented_one() -> None:
    from services.collector.request_auth import request_binding

    for host, rid in (("web-042", "ask-1"), ("hôte-ü", "ask-✓"), ("", "")):
        assert request_binding(host, rid) == request_digest_spec(host, rid)
    # Length prefixes: moving a character from one id to the other changes the binding.
    assert request_binding("ab", "c") != request_binding("a", "bc")


def test_authenticated_request_records_its_clock_and_oversize_proofs_are_refused(
        hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-clk", pki)
    _enrol(hx, host, rnd)
    _nonce(hx, host)
    track = hx.state.get("hosts", "host-clk")
    assert track is not None
    assert track["last_request_counters"] == {"reset_count": 3, "restart_count": 0,
                                              "clock": host.clock, "safe": True}
    big = dict(host.ask("ask-2"), request_attest=b"\x00" * 4096)
    before = hx.snapshot()
    decision = hx.feed(ASK, big)
    reason, detail = rejection(decision)
    assert reason == "UNAUTHENTICATED" and "request_attest has 4096 bytes" in detail
    assert decision.state_updates == () and hx.snapshot() == before


def test_open_challenges_are_capped_and_expired_ones_swept(pki: EkPki,
                                                           rnd: SeededRandom) -> None:
    hx = Harness(_config(pki, rnd, max_open_challenges=2, challenge_rate_count=100))
    host = SoftHost("host-s", pki)
    _enrol(hx, host, rnd)
    first = _nonce(hx, host, rid="a")
    _nonce(hx, host, rid="b")
    assert rejection(hx.feed(ASK, host.ask("c")))[0] == "RATE_LIMITED"
    later = NOW_MS + TTL + 1
    _nonce(hx, host, at_ms=later, rid="d")
    assert hx.state.get("challenges", first["challenge_id"]) is None  # tombstoned
    track = hx.state.get("hosts", "host-s")
    assert track is not None and len(track["open_challenges"]) == 1


# -- intake ----------------------------------------------------------------------------------

def test_evidence_collected_with_digest_identity_and_previous_counters(
        hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-i", pki)
    _enrol(hx, host, rnd)
    n1 = _nonce(hx, host)
    ev1 = host.evidence(n1["challenge_id"], n1["nonce"])
    clock1 = host.clock  # the first quote's clock (the signed request after it moves it on)
    d1 = hx.feed(EVIDENCE, ev1, at_ms=NOW_MS + 500)
    c1 = only(d1, "hostgate.EvidenceCollected")
    assert c1["previous_counters"] is None
    assert c1["received_at"] == NOW_MS + 500 and c1["nonce_issued_at"] == NOW_MS
    assert c1["ak_public"] == host.ak_public
    assert c1["ek"]["ek_public"] == host.ek_public and c1["ek"]["chain_verified"]
    assert c1["source"] == {"topic": "attest.evidence.v1", "partition": 0,
                            "offset": hx.offset}
    assert c1["evidence_digest"] == record_digest(EVIDENCE, Codec.load().decode(
        Codec.load().encode(EVIDENCE, ev1)).record)
    assert d1.outputs[0].id == f"collector:collected:attest.evidence.v1:0:{hx.offset}"
    n2 = _nonce(hx, host, rid="ask-2")
    c2 = only(hx.feed(EVIDENCE, host.evidence(n2["challenge_id"], n2["nonce"],
                                              evidence_id="ev-2")),
              "hostgate.EvidenceCollected")
    assert c2["previous_counters"] == {"reset_count": 3, "restart_count": 0,
                                       "clock": clock1, "safe": True}


def test_nonce_used_twice_is_replayed(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-j", pki)
    _enrol(hx, host, rnd)
    n = _nonce(hx, host)
    ev = host.evidence(n["challenge_id"], n["nonce"])
    only(hx.feed(EVIDENCE, ev), "hostgate.EvidenceCollected")
    decision = hx.feed(EVIDENCE, host.evidence(n["challenge_id"], n["nonce"],
                                               evidence_id="ev-again"))
    reason, detail = rejection(decision)
    assert reason == "REPLAYED_NONCE" and "already used by evidence" in detail
    assert decision.log["anomaly"] is True
    # A fresh challenge, but the quote is made over the used nonce: also a replay.
    n2 = _nonce(hx, host, rid="ask-2")
    reason, _ = rejection(hx.feed(EVIDENCE, host.evidence(
        n2["challenge_id"], n2["nonce"], quote_nonce=n["nonce"], evidence_id="ev-3")))
    assert reason == "REPLAYED_NONCE"


def test_expired_nonce_is_stale(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-k", pki)
    _enrol(hx, host, rnd)
    n = _nonce(hx, host)
    ev = host.evidence(n["challenge_id"], n["nonce"])
    reason, detail = rejection(hx.feed(EVIDENCE, ev, at_ms=NOW_MS + TTL + 1))
    assert reason == "STALE_NONCE" and "expired 1 ms" in detail
    assert hx.state.get("challenges", n["challenge_id"]) is None


def test_unknown_nonce_and_mismatched_nonce(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-l", pki)
    _enrol(hx, host, rnd)
    assert rejection(hx.feed(EVIDENCE, host.evidence("nonce-made-up", bytes(32))))[0] == \
        "UNKNOWN_NONCE"
    n = _nonce(hx, host)
    reason, detail = rejection(hx.feed(EVIDENCE, host.evidence(n["challenge_id"], bytes(32))))
    assert reason == "UNKNOWN_NONCE" and "field nonce" in detail
    # The failed attempts did not consume the challenge: the honest evidence still passes.
    only(hx.feed(EVIDENCE, host.evidence(n["challenge_id"], n["nonce"])),
         "hostgate.EvidenceCollected")


def test_nonce_issued_to_another_host(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    a, b = SoftHost("host-m1", pki), SoftHost("host-m2", pki)
    _enrol(hx, a, rnd)
    _enrol(hx, b, rnd)
    n = _nonce(hx, a)
    decision = hx.feed(EVIDENCE, b.evidence(n["challenge_id"], n["nonce"]))
    reason, detail = rejection(decision)
    assert reason == "UNKNOWN_NONCE" and "issued to another host" in detail
    assert decision.log["anomaly"] is True


def test_quote_by_another_key_is_bad_signature(hx: Harness, pki: EkPki,
                                               rnd: SeededRandom) -> None:
    host = SoftHost("host-w", pki)
    _enrol(hx, host, rnd)
    n = _nonce(hx, host)
    rogue = ec.generate_private_key(ec.SECP256R1())
    reason, detail = rejection(hx.feed(EVIDENCE, host.evidence(n["challenge_id"], n["nonce"],
                                                               key=rogue)))
    assert reason == "BAD_SIGNATURE" and "enrolled AK" in detail
    assert hx.state.get("challenges", n["challenge_id"]) is not None  # not consumed


@pytest.mark.parametrize(("limits", "field", "kw"), [
    (IntakeLimits(max_boot_log_bytes=1000), "boot_log", {"boot_log": b"\x00" * 1001}),
    (IntakeLimits(max_ima_bytes=10), "ima_log", {"ima_log": b"\x01" * 11}),
])
def test_size_limits(pki: EkPki, rnd: SeededRandom, limits: IntakeLimits, field: str,
                     kw: dict[str, Any]) -> None:
    hx = Harness(_config(pki, rnd, limits=limits))
    host = SoftHost("host-o", pki)
    _enrol(hx, host, rnd)
    n = _nonce(hx, host)
    reason, detail = rejection(hx.feed(EVIDENCE, host.evidence(n["challenge_id"], n["nonce"],
                                                               **kw)))
    assert reason == "OVER_LIMITS" and field in detail


def test_event_count_limit_on_a_real_log(corpus_dir: Path, pki: EkPki,
                                         rnd: SeededRandom) -> None:
    log = (corpus_dir / "logs" / "A31__go-attestation__ubuntu_2104_shielded_vm_no_secure_boot"
           "_eventlog").read_bytes()
    host = SoftHost("host-p", pki)
    for max_events, passes in ((10_000, True), (20, False)):
        hx = Harness(_config(pki, rnd, limits=IntakeLimits(max_log_events=max_events)))
        _enrol(hx, host, rnd)
        n = _nonce(hx, host)
        decision = hx.feed(EVIDENCE, host.evidence(n["challenge_id"], n["nonce"], boot_log=log))
        if passes:
            only(decision, "hostgate.EvidenceCollected")
        else:
            reason, detail = rejection(decision)
            assert reason == "OVER_LIMITS" and "boot_log" in detail and "20" in detail


def test_unparsable_log_is_left_to_the_verifier(hx: Harness, pki: EkPki,
                                                rnd: SeededRandom) -> None:
    host = SoftHost("host-q", pki)
    _enrol(hx, host, rnd)
    n = _nonce(hx, host)
    only(hx.feed(EVIDENCE, host.evidence(n["challenge_id"], n["nonce"], boot_log=b"junk")),
         "hostgate.EvidenceCollected")


# -- determinism, digests, config -------------------------------------------------------------

def test_decisions_replay_identically(pki: EkPki) -> None:
    host = SoftHost("host-replay", pki)
    records = [(ENROLL, host.enroll())]
    runs = []
    for _ in range(2):
        rnd = SeededRandom(7)
        hx = Harness(_config(pki, rnd))
        d = hx.feed(*records[0])
        ch = only(d, "hostgate.ActivationChallenge")
        row = dict(hx.state.get("enrollments", "host-replay") or {})
        runs.append((ch["challenge_id"], d.outputs[0].id, row["pending"][0]["secret_sha256"]))
    assert runs[0] == runs[1]


def test_digest_does_not_depend_on_framing(pki: EkPki) -> None:
    host = SoftHost("host-dig", pki)
    ev = host.evidence("c", bytes(32))
    single = Codec.load().decode(Codec.load().encode(EVIDENCE, ev)).record
    confluent = Codec.load(framing="confluent")
    framed = confluent.encode(EVIDENCE, ev)
    assert framed[0] == 0
    assert record_digest(EVIDENCE, single) == record_digest(EVIDENCE,
                                                            confluent.decode(framed).record)
    changed = dict(single, boot_log=b"\x01" + bytes(single["boot_log"])[1:])
    assert record_digest(EVIDENCE, changed) != record_digest(EVIDENCE, single)


def test_a_crash_is_a_bug_never_a_rejection_of_the_host(pki: EkPki,
                                                        rnd: SeededRandom) -> None:
    def broken(n: int) -> bytes:
        raise RuntimeError("entropy pool unavailable")

    hx = Harness(dataclasses.replace(_config(pki, rnd), random_bytes=broken))
    with pytest.raises(RuntimeError):  # the runtime dead-letters it (services.runtime.faults)
        hx.feed(ENROLL, SoftHost("host-x", pki).enroll())


def test_a_host_fault_is_a_malformed_rejection_naming_it(pki: EkPki, rnd: SeededRandom) -> None:
    def broken(n: int) -> bytes:
        raise MalformedTpmStructure("cut short", offset=17, field="credentialBlob")

    hx = Harness(dataclasses.replace(_config(pki, rnd), random_bytes=broken))
    reason, detail = rejection(hx.feed(ENROLL, SoftHost("host-x", pki).enroll()))
    assert reason == "MALFORMED" and "MalformedTpmStructure" in detail and "17" in detail


def test_config_parsing() -> None:
    assert parse_pcr_list("0-3,7") == (0, 1, 2, 3, 7)
    for bad in ("", "24", "3-1", "a"):
        with pytest.raises(ConfigError):
            parse_pcr_list(bad)
    with pytest.raises(ConfigError):
        CollectorConfig(trusted_cas=(), nonce_ttl_ms=5)


# -- EnrollmentResult: the host hears the outcome -----------------------------------------------

def test_enrolled_result_is_emitted_once(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-once", pki)
    challenge = only(hx.feed(ENROLL, host.enroll()), "hostgate.ActivationChallenge")
    proof = host.proof(challenge["challenge_id"], rnd.handed_out[-1])
    first = only(hx.feed(PROOF, proof, at_ms=NOW_MS + 5), RESULT)
    assert first["result"] == "ENROLLED" and first["decided_at"] == NOW_MS + 5
    # The same proof again is not a second enrolment: it is refused, and the host told so.
    again = hx.feed(PROOF, proof, at_ms=NOW_MS + 6)
    told = refused(again)
    assert told["reason"] == "FAILED_ACTIVATION" and told["challenge_id"] == proof["challenge_id"]
    assert told["result_id"] != first["result_id"]
    row = hx.state.get("enrollments", "host-once")
    assert row is not None and row["state"] == "ENROLLED"


def test_wrong_proof_is_refused_to_the_host(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-wp", pki)
    challenge = only(hx.feed(ENROLL, host.enroll()), "hostgate.ActivationChallenge")
    pending = hx.state.get("enrollments", "host-wp")
    assert pending is not None
    told = refused(hx.feed(PROOF, host.proof(challenge["challenge_id"], bytes(32), "proof-9")))
    assert told["reason"] == "FAILED_ACTIVATION" and told["request_id"] == "proof-9"
    assert told["challenge_id"] == challenge["challenge_id"] and told["host_id"] == "host-wp"
    assert told["ak_name"] == pending["ak_name"]
    assert rnd.handed_out[-1].hex() not in told["detail"]


def test_untrusted_ek_ca_is_refused_to_the_host(hx: Harness) -> None:
    host = SoftHost("host-rogue", EkPki("Rogue Manufacturer"))
    decision = hx.feed(ENROLL, host.enroll("enr-7"))
    told = refused(decision)
    assert told["reason"] == "BAD_EK_CERTIFICATE" and told["request_id"] == "enr-7"
    assert told["challenge_id"] is None and told["ak_name"][:2] == b"\x00\x0b"
    assert decision.outputs[1].key == "host-rogue"


def test_ek_changed_is_refused_to_the_host(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-ekc", pki)
    _enrol(hx, host, rnd)
    other = SoftHost("host-ekc", pki)
    other.clock = host.clock
    told = refused(hx.feed(ENROLL, other.enroll("enr-2", rotating_from=host.ak_key)))
    assert told["reason"] == "EK_CHANGED" and told["request_id"] == "enr-2"
    assert "another EK" in told["detail"]


def test_record_for_another_host_gets_no_result(hx: Harness, pki: EkPki) -> None:
    host = SoftHost("host-h", pki)
    decision = hx.feed(ENROLL, host.enroll(), key="host-other")
    assert single_rejection(decision)[0] == "HOST_MISMATCH"


def test_host_fault_on_an_enrolment_is_refused_to_the_host(pki: EkPki,
                                                           rnd: SeededRandom) -> None:
    def broken(n: int) -> bytes:
        raise MalformedTpmStructure("cut short", offset=17, field="credentialBlob")

    hx = Harness(dataclasses.replace(_config(pki, rnd), random_bytes=broken))
    told = refused(hx.feed(ENROLL, SoftHost("host-x2", pki).enroll()))
    assert told["reason"] == "MALFORMED" and "MalformedTpmStructure" in told["detail"]


def test_the_workers_memo_changes_no_decision(pki: EkPki) -> None:
    """The same host's enrolment, requests and evidence (a good quote, one by another key,
    a good one) decided with and without the AK memo: the same outcomes, and a remembered
    key never lets the rogue quote through. (ECDSA signatures are randomised, so outcomes are
    compared, not bytes.)"""
    from services.tpm.memo import Memo

    rogue = ec.generate_private_key(ec.SECP256R1())
    keys = SoftHost("host-memo", pki)
    runs = []
    for memo in (None, Memo()):
        rnd = SeededRandom(11)
        hx = Harness(dataclasses.replace(_config(pki, rnd), memo=memo))
        host = SoftHost("host-memo", pki, ek_key=keys.ek_key, ak_key=keys.ak_key)
        _enrol(hx, host, rnd)
        outcomes = []
        for i, key in enumerate((None, rogue, None)):
            n = _nonce(hx, host, rid=f"ask-{i}")
            d = hx.feed(EVIDENCE, host.evidence(n["challenge_id"], n["nonce"], key=key))
            subject = d.outputs[0].subject
            outcomes.append((subject, rejection(d)[0] if subject.endswith("Rejected") else None))
        runs.append(outcomes)
        if memo is not None:
            assert len(memo.tpm_publics) == 1  # the enrolled AK, decoded once, used 5 times
    assert runs[0] == runs[1] == [("hostgate.EvidenceCollected", None),
                                  ("hostgate.IntakeRejected", "BAD_SIGNATURE"),
                                  ("hostgate.EvidenceCollected", None)]
