"""The collector's identity rules in its pure core (no broker): the partition check, pending
activations per challenge id, the EK registry's grant/refuse/release, identity commands.
The Kafka paths of the same rules are in ``tests/security/test_identity_*.py``."""

from __future__ import annotations

from typing import Any

import pytest

from services.collector.config import CollectorConfig
from services.ekid import ek_key_sha256
from services.runtime.stage import Coordinates, InputRecord
from tests.unit.collector_support import (
    NOW_MS,
    EkPki,
    Harness,
    SeededRandom,
    SoftHost,
    ak_public_of,
    only,
)

ENROLL, PROOF = "hostgate.EnrollmentRequested", "hostgate.ActivationProof"
COMMAND = "hostgate.IdentityCommand"
ASK = "hostgate.ChallengeRequested"


@pytest.fixture(scope="module")
def pki() -> EkPki:
    return EkPki()


@pytest.fixture()
def rnd() -> SeededRandom:
    return SeededRandom(5)


@pytest.fixture()
def hx(pki: EkPki, rnd: SeededRandom) -> Harness:
    return Harness(CollectorConfig(trusted_cas=(pki.root,), intermediates=(pki.ica,),
                                   random_bytes=rnd))


def _challenge(hx: Harness, host: SoftHost, rid: str = "enr-1", **kw: Any) -> dict[str, Any]:
    return dict(only(hx.feed(ENROLL, host.enroll(rid, **kw)), "hostgate.ActivationChallenge"))


def _enrol(hx: Harness, host: SoftHost, rnd: SeededRandom, rid: str = "enr-1",
           **kw: Any) -> Any:
    ch = _challenge(hx, host, rid, **kw)
    return hx.feed(PROOF, host.proof(ch["challenge_id"], rnd.handed_out[-1], f"proof-{rid}"))


def rejection(decision: Any) -> tuple[str, str]:
    """(reason, detail) of the decision's ``IntakeRejected`` (a refused enrolment step also
    tells the host, with the same reason)."""
    (rec,) = [o.record for o in decision.outputs if o.subject == "hostgate.IntakeRejected"]
    told = [o.record for o in decision.outputs if o.subject == "hostgate.EnrollmentResult"]
    assert all(t["result"] == "REFUSED" and t["reason"] == rec["reason"] for t in told)
    return str(rec["reason"]), str(rec["detail"])


def _command(host_id: str, **kw: Any) -> dict[str, Any]:
    return {"command_id": "idc-1", "host_id": host_id, "action": "RELEASE", "actor": "alice",
            "reason": "new TPM", "issued_at": NOW_MS, **kw}


def test_a_misrouted_record_is_refused_first_and_changes_nothing(hx: Harness, pki: EkPki
                                                                 ) -> None:
    host = SoftHost("web-042", pki)
    rec = hx.codec.decode(hx.codec.encode(ENROLL, host.enroll())).record
    for key_partition in (3, None):
        inp = InputRecord("web-042", ENROLL, rec, Coordinates("attest.requests.v1", 1, 9),
                          NOW_MS, key_partition=key_partition)
        decision = hx.stage.decide(inp, hx.state)
        reason, detail = rejection(decision)
        assert reason == "WRONG_PARTITION" and decision.state_updates == ()
        assert "'web-042'" in detail and "partition 1" in detail
        if key_partition is not None:
            assert "partition 3 of attest.requests.v1" in detail
    # An internal record on the wrong partition is not a host's doing: DLQ (it raises).
    internal = InputRecord("ab" * 32, "hostgate.EkBindingRequested", {
        "request_id": "r", "action": "BIND", "ek_key_sha256": bytes(32), "host_id": "web-042",
        "challenge_id": None, "command_id": None, "requested_at": NOW_MS,
        "cause": {"topic": "t", "partition": 0, "offset": 0}},
        Coordinates("collector.ek-bindings.v1", 1, 3), NOW_MS, key_partition=2)
    with pytest.raises(Exception, match="not its key's"):
        hx.stage.decide(internal, hx.state)


def test_enrolment_needs_the_registry_grant(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-a", pki)
    ch = _challenge(hx, host)
    proof = hx.feed(PROOF, host.proof(ch["challenge_id"], rnd.handed_out[-1]), follow=False)
    (ask,) = proof.outputs
    digest = ek_key_sha256(host.ek_public)
    assert ask.topic == "collector.ek-bindings.v1" and ask.key == digest.hex()
    assert ask.record["action"] == "BIND" and ask.record["host_id"] == "host-a"
    row = hx.state.get("enrollments", "host-a")
    assert row is not None and row["state"] == "CHALLENGED"  # not yet: no grant
    assert [p["stage"] for p in row["pending"]] == ["BINDING"]
    # A replay of the correct proof now is refused: the activation was answered.
    again = hx.feed(PROOF, host.proof(ch["challenge_id"], rnd.handed_out[-1], "proof-2"),
                    follow=False)
    assert rejection(again)[0] == "FAILED_ACTIVATION" and again.state_updates == ()
    # The registry grants, the answer enrols.
    granted = hx.feed(ask.subject, ask.record, key=ask.key, follow=False)
    (answer,) = granted.outputs
    assert answer.topic == "collector.ek-grants.v1" and answer.record["outcome"] == "GRANTED"
    assert hx.state.get("ek_bindings", digest.hex())["host_id"] == "host-a"  # type: ignore[index]
    told = only(hx.feed(answer.subject, answer.record, key=answer.key, follow=False),
                "hostgate.EnrollmentResult")
    assert told["result"] == "ENROLLED" and told["request_id"] == "proof-1"
    row = hx.state.get("enrollments", "host-a")
    assert row is not None and row["state"] == "ENROLLED" and row["ek_key_sha256"] == digest


def test_one_ek_cannot_enrol_a_second_host_id(hx: Harness, pki: EkPki,
                                              rnd: SeededRandom) -> None:
    first = SoftHost("host-1", pki)
    _enrol(hx, first, rnd)
    twin = SoftHost("host-2", pki, ek_key=first.ek_key)
    done = _enrol(hx, twin, rnd)
    reasons = {o.record["reason"] for o in done.outputs}
    assert reasons == {"EK_IN_USE"}
    rejected = next(o for o in done.outputs if o.subject == "hostgate.IntakeRejected")
    told = next(o for o in done.outputs if o.subject == "hostgate.EnrollmentResult")
    assert "host-1" in rejected.record["detail"] and "host-1" not in told.record["detail"]
    assert told.record["result"] == "REFUSED"
    row = hx.state.get("enrollments", "host-2")
    assert row is not None and row["state"] == "FAILED" and row["pending"] == []
    # The holder rotating its AK under the same EK is granted.
    again = SoftHost("host-1", pki, ek_key=first.ek_key, clock=first.clock)
    rotated = _enrol(hx, again, rnd, "enr-2", rotating_from=first.ak_key)
    assert only(rotated, "hostgate.EnrollmentResult")["result"] == "ENROLLED"


def test_requests_never_displace_and_are_bounded(hx: Harness, pki: EkPki,
                                                 rnd: SeededRandom) -> None:
    host = SoftHost("host-p", pki)
    mine = _challenge(hx, host)
    my_secret = rnd.handed_out[-1]
    for i in range(3):  # other certified TPMs ask for the same, not yet enrolled, id
        _challenge(hx, SoftHost("host-p", pki), f"enr-x{i}")
    assert rejection(hx.feed(ENROLL, SoftHost("host-p", pki).enroll("enr-full")))[0] == \
        "RATE_LIMITED"
    # None of that displaced the host's own challenge.
    done = hx.feed(PROOF, host.proof(mine["challenge_id"], my_secret, "proof-mine"))
    assert only(done, "hostgate.EnrollmentResult")["result"] == "ENROLLED"
    row = hx.state.get("enrollments", "host-p")
    assert row is not None and len(row["pending"]) == 3
    # Expired unproved activations are swept by the next request.
    later = NOW_MS + hx.cfg.activation_ttl_ms + 1
    only(hx.feed(ENROLL, host.enroll("enr-late", rotating_from=host.ak_key), at_ms=later),
         "hostgate.ActivationChallenge")
    row = hx.state.get("enrollments", "host-p")
    assert row is not None and [p["request_id"] for p in row["pending"]] == ["enr-late"]


def test_wrong_and_unknown_proofs_change_nothing(hx: Harness, pki: EkPki,
                                                 rnd: SeededRandom) -> None:
    host = SoftHost("host-w", pki)
    ch = _challenge(hx, host)
    secret = rnd.handed_out[-1]
    _challenge(hx, SoftHost("host-w", pki), "enr-other")  # someone else's request
    before = hx.state.get("enrollments", "host-w")
    for proof in (host.proof(ch["challenge_id"], bytes(32)),
                  host.proof("act-unknown", secret),
                  host.proof(ch["challenge_id"], secret + b"x")):
        decision = hx.feed(PROOF, proof)
        assert rejection(decision)[0] == "FAILED_ACTIVATION"
        assert decision.state_updates == ()
    assert hx.state.get("enrollments", "host-w") == before
    done = hx.feed(PROOF, host.proof(ch["challenge_id"], secret, "proof-ok"))
    assert only(done, "hostgate.EnrollmentResult")["result"] == "ENROLLED"


def test_rotation_pending_survives_a_strangers_request(hx: Harness, pki: EkPki,
                                                       rnd: SeededRandom) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    host = SoftHost("host-r", pki)
    _enrol(hx, host, rnd)
    new_ak = ak_public_of(ec.generate_private_key(ec.SECP256R1()))
    rot = _challenge(hx, host, "enr-rot", ak_public=new_ak, rotating_from=host.ak_key)
    rot_secret = rnd.handed_out[-1]
    # A stranger's request for the enrolled id is refused (it cannot sign with the host's AK),
    # nothing displaced.
    assert rejection(hx.feed(ENROLL, SoftHost("host-r", pki).enroll("enr-s")))[0] == \
        "UNAUTHENTICATED"
    done = hx.feed(PROOF, host.proof(rot["challenge_id"], rot_secret, "proof-rot"))
    assert only(done, "hostgate.EnrollmentResult")["result"] == "ENROLLED"
    assert hx.state.get("enrollments", "host-r")["ak_public"] == new_ak  # type: ignore[index]


def test_release_removes_enrolment_and_binding_and_is_audited(hx: Harness, pki: EkPki,
                                                              rnd: SeededRandom) -> None:
    host = SoftHost("host-rel", pki)
    _enrol(hx, host, rnd)
    only(hx.feed(ASK, host.ask()), "hostgate.NonceIssued")  # the host's clock is now on record
    digest = ek_key_sha256(host.ek_public)
    done = hx.feed(COMMAND, _command("host-rel"))
    (event,) = [o for o in done.outputs if o.subject == "hostgate.IdentityEvent"]
    assert event.topic == "attest.identity.events.v1" and event.key == "host-rel"
    assert event.record["event"] == "RELEASED" and event.record["actor"] == "alice"
    assert event.record["released_ek_sha256"] == [digest]
    assert event.record["previous_state"] == "ENROLLED"
    assert hx.state.get("enrollments", "host-rel") is None
    assert hx.state.get("ek_bindings", digest.hex()) is None
    track = hx.state.get("hosts", "host-rel")
    assert track is not None and track["last_counters"] is None
    assert track["last_request_counters"] is None
    # The EK may now enrol another id, and a new TPM the released one.
    assert only(_enrol(hx, SoftHost("host-new", pki, ek_key=host.ek_key), rnd, "enr-n"),
                "hostgate.EnrollmentResult")["result"] == "ENROLLED"
    reimaged = SoftHost("host-rel", pki)  # its TPM's clock starts where the old one's was
    assert only(_enrol(hx, reimaged, rnd, "enr-m"),
                "hostgate.EnrollmentResult")["result"] == "ENROLLED"
    only(hx.feed(ASK, reimaged.ask("ask-2")), "hostgate.NonceIssued")


def test_refused_commands_change_nothing(hx: Harness, pki: EkPki, rnd: SeededRandom) -> None:
    host = SoftHost("host-keep", pki)
    _enrol(hx, host, rnd)
    for cmd in (_command("host-unknown"), _command("host-keep", actor=" "),
                _command("host-keep", reason="")):
        decision = hx.feed(COMMAND, cmd)
        (event,) = decision.outputs
        assert event.record["event"] == "REFUSED" and decision.state_updates == ()
    assert hx.state.get("enrollments", "host-keep")["state"] == "ENROLLED"  # type: ignore[index]


def test_a_grant_nobody_waits_for_is_handed_back(hx: Harness, pki: EkPki,
                                                 rnd: SeededRandom) -> None:
    host = SoftHost("host-g", pki)
    digest = ek_key_sha256(host.ek_public)
    answer = {"decision_id": "d", "host_id": "host-g", "ek_key_sha256": digest,
              "challenge_id": "act-gone", "outcome": "GRANTED", "holder_host_id": None,
              "decided_at": NOW_MS, "request": {"topic": "t", "partition": 0, "offset": 1}}
    back = hx.feed("hostgate.EkBindingDecided", answer, key="host-g", follow=False)
    (release,) = back.outputs
    assert release.record["action"] == "RELEASE" and release.key == digest.hex()
    # A RELEASE naming another host than the holder changes nothing.
    _enrol(hx, host, rnd)
    stray = dict(release.record, host_id="host-other")
    assert hx.feed(release.subject, stray, key=release.key, follow=False).state_updates == ()
    assert hx.state.get("ek_bindings", digest.hex())["host_id"] == "host-g"  # type: ignore[index]
