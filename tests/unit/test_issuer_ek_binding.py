"""The issuer's EK binding in its core (no broker): the first verdict binds the host's EK, a
verdict naming another EK issues nothing and quarantines until an operator release, and a
release never launders a failed attestation. The broker path is
``tests/security/test_issuer_ek_binding.py``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from services.ekid import ek_key_sha256
from services.issuer.config import IssuerConfig
from services.issuer.core import apply_identity_event, apply_incident_event, apply_verdict
from services.issuer.hoststate import HostTrust, HostTrustState, RevocationReason
from services.runtime.codec import Codec
from tests.unit.issuer_support import APPRAISED, incident, pem_ca, software_ek_public, verdict

CODEC = Codec.load()
H = dt.timedelta(hours=1)
EK_A, EK_B = software_ek_public(), software_ek_public()


def _released(at: dt.datetime, kind: str = "RELEASED") -> dict[str, Any]:
    return {"event_id": "e", "host_id": "host-0007", "event": kind, "command_id": "c",
            "actor": "alice", "reason": "new TPM", "previous_state": "ENROLLED",
            "released_ek_sha256": [], "released_ak_name": None, "detail": "d",
            "occurred_at": at, "source": {"topic": "attest.identity.v1", "partition": 0,
                                          "offset": 0}}


def _roundtrip(state: HostTrustState) -> HostTrustState:
    """Through the changelog's Avro (v2) and back, as a restore would read it."""
    blob = CODEC.encode("hostgate.IssuerHostState", state.to_record())
    return HostTrustState.from_record(CODEC.decode(blob).record)


def test_a_verdict_naming_another_ek_issues_nothing_and_quarantines() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    first = apply_verdict(verdict("v-1", ek_public=EK_A), None, cfg)
    assert first.credential is not None and first.state.ek_key_sha256 == ek_key_sha256(EK_A)
    state = _roundtrip(first.state)
    other = apply_verdict(verdict("v-2", ek_public=EK_B, at=APPRAISED + H), state, cfg)
    assert other.credential is None and other.state.state is HostTrust.QUARANTINED
    assert "v-2" in other.state.reason and "EK" in other.state.reason
    assert other.state.ek_key_sha256 == ek_key_sha256(EK_A)  # the binding is kept
    assert [r.reason for r in other.state.revoked] == [RevocationReason.KEY_COMPROMISE]
    # A pass with the host's own EK does not lift it; neither does a resolved incident.
    state = _roundtrip(other.state)
    own = apply_verdict(verdict("v-3", ek_public=EK_A, at=APPRAISED + 2 * H), state, cfg)
    assert own.credential is None and own.state.state is HostTrust.QUARANTINED
    closed = apply_incident_event(incident("inc-1", "CLOSED", "CLOSED", APPRAISED + 3 * H),
                                  own.state)
    after = apply_verdict(verdict("v-4", ek_public=EK_A, at=APPRAISED + 4 * H), closed.state, cfg)
    assert after.credential is None
    # The operator release resets the binding; the new TPM then gets credentials.
    released = apply_identity_event(_released(APPRAISED + 5 * H), _roundtrip(after.state))
    assert released.host_state is not None
    assert released.state.state is HostTrust.REVOKED
    assert released.state.ek_key_sha256 is None and released.state.ek_mismatch_at is None
    new = apply_verdict(verdict("v-5", ek_public=EK_B, at=APPRAISED + 6 * H),
                        _roundtrip(released.state), cfg)
    assert new.credential is not None and new.state.state is HostTrust.TRUSTED
    assert new.state.ek_key_sha256 == ek_key_sha256(EK_B)


def test_a_release_revokes_the_old_tpms_certificates_but_keeps_a_pending_failure() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    trusted = apply_verdict(verdict("v-1", ek_public=EK_A), None, cfg).state
    released = apply_identity_event(_released(APPRAISED + H), trusted)
    assert released.state.state is HostTrust.REVOKED and released.state.held == ()
    assert [r.reason for r in released.state.revoked] == \
        [RevocationReason.CESSATION_OF_OPERATION]
    failed = apply_verdict(verdict("v-2", result="FAIL", rules=("secureboot.enabled",),
                                   ek_public=EK_A, at=APPRAISED + 2 * H), trusted, cfg).state
    kept = apply_identity_event(_released(APPRAISED + 3 * H), failed)
    assert kept.state.state is HostTrust.QUARANTINED and kept.state.ek_key_sha256 is None
    # Refused commands and unknown hosts change nothing.
    assert apply_identity_event(_released(APPRAISED, "REFUSED"), trusted).host_state is None
    assert apply_identity_event(_released(APPRAISED), None).host_state is None


def test_verdicts_without_a_usable_ek_bind_nothing() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    failed = apply_verdict(verdict("v-1", result="FAIL", rules=("x",)), None, cfg)
    assert failed.state.ek_key_sha256 is None
    garbage = apply_verdict(verdict("v-2", result="FAIL", rules=("x",), ek_public=b"\x00\x01",
                                    at=APPRAISED + H), failed.state, cfg)
    assert garbage.state.ek_key_sha256 is None and garbage.state.ek_mismatch_at is None
