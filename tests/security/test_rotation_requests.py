"""An unauthenticated EnrollmentRequested must not spend an enrolled host's state.

The collector's own core (``tests.unit.collector_support.Harness``: ``decide`` with the codec on
every edge and the EK registry's records followed, as the runtime would). Attacker (c): may
write any record to ``attest.requests.v1`` and holds no TPM at all, only the victim's EK
certificate and EK public area, which are public material (a manufacturer's EK certificate is
not a secret; it is read from the TPM's NV by anyone with the device, and is what every
enrolment request carries).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from services.collector.config import CollectorConfig
from tests.unit.collector_support import (
    EkPki,
    Harness,
    SeededRandom,
    SoftHost,
    ak_public_of,
    only,
)

ENROLL, PROOF = "hostgate.EnrollmentRequested", "hostgate.ActivationProof"


def test_copied_ek_certificate_fills_an_enrolled_hosts_activation_slots() -> None:
    """Attack: ``web-042`` is ENROLLED. The attacker sends ``max_pending_enrolments`` (4)
    EnrollmentRequested records for ``web-042`` carrying web-042's own EK public and EK
    certificate (so no EK_CHANGED, and the chain verifies) and AK publics of keys it made in
    software with the right attribute bits. Each is challenged and stored as a pending
    activation; nobody can ever answer them, and the attacker re-sends when they expire.
    Gets: web-042's genuine AK rotation is refused RATE_LIMITED for as long as the attacker
    keeps the slots full, without the attacker holding any TPM (identity.md section 5 calls
    slot filling a first-enrolment risk needing certified EKs of one's own)."""
    pki, rnd = EkPki(), SeededRandom(7)
    hx = Harness(CollectorConfig(trusted_cas=(pki.root,), intermediates=(pki.ica,),
                                 random_bytes=rnd))
    victim = SoftHost("web-042", pki)
    ek_cert = victim.ek_cert  # the victim's real certificate, copied once
    ch = only(hx.feed(ENROLL, victim.enroll("enr-1", ek_cert=ek_cert)),
              "hostgate.ActivationChallenge")
    hx.feed(PROOF, victim.proof(ch["challenge_id"], rnd.handed_out[-1]))
    assert hx.state.get("enrollments", "web-042")["state"] == "ENROLLED"  # type: ignore[index]

    before = hx.state.get("enrollments", "web-042")
    for i in range(hx.cfg.max_pending_enrolments):
        fake_ak = ak_public_of(ec.generate_private_key(ec.SECP256R1()))
        forged = {**victim.enroll(f"attacker-{i}", ek_cert=ek_cert), "ak_public": fake_ak}
        refused = hx.feed(ENROLL, forged)
        assert [o.record["reason"] for o in refused.outputs
                if o.subject == "hostgate.IntakeRejected"] == ["UNAUTHENTICATED"]
        assert refused.state_updates == ()
    assert hx.state.get("enrollments", "web-042") == before

    new_ak = ak_public_of(ec.generate_private_key(ec.SECP256R1()))
    signed = victim.enroll("rotate-1", ak_public=new_ak, ek_cert=ek_cert,
                           rotating_from=victim.ak_key)
    rotation = hx.feed(ENROLL, signed)
    subjects = [o.subject for o in rotation.outputs]
    reasons = [o.record.get("reason") for o in rotation.outputs
               if o.subject == "hostgate.IntakeRejected"]
    assert "hostgate.ActivationChallenge" in subjects, (
        f"the host's own rotation was refused {reasons}: unauthenticated requests filled its "
        "activation slots")
    # ... and the captured signed request cannot be replayed into a second slot
    again = hx.feed(ENROLL, signed)
    assert [o.record["reason"] for o in again.outputs
            if o.subject == "hostgate.IntakeRejected"] == ["UNAUTHENTICATED"]
