"""The issuer's core on verdict and incident records (no TPM, no broker)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.errors import HostgateError
from services.issuer.ca import Secret, load_pem_ca
from services.issuer.certificates import build_crl
from services.issuer.config import IssuerConfig
from services.issuer.core import (
    apply_incident_event,
    apply_verdict,
    credential_id_for,
    crl_entries,
    decide,
)
from services.issuer.errors import CaKeyError, IssuanceError
from services.issuer.extension import attestation_binding
from services.issuer.hoststate import HostTrust, HostTrustState
from services.issuer.sealing import encrypt_payload, open_credential, pcr_values_digest
from services.runtime.codec import Codec
from services.runtime.stage import Coordinates, InputRecord
from services.tpm.credential import pcr_selection, policy_pcr_digest
from tests.unit.issuer_support import (
    APPRAISED,
    PASSPHRASE,
    PCRS,
    POLICY_DIGEST,
    incident,
    pem_ca,
    pem_ca_material,
    software_ek_public,
    verdict,
)

CODEC = Codec.load()
H = dt.timedelta(hours=1)
EK = software_ek_public()


class Tables:
    """A StateView over plain dicts, updated like the runtime does after a commit."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Mapping[str, Any]] = {}

    def get(self, table: str, key: str) -> Mapping[str, Any] | None:
        return self.rows.get((table, key))


def _input(subject: str, record: Mapping[str, Any], offset: int) -> InputRecord:
    topic = "attest.verdicts.v1" if subject == "hostgate.Verdict" else "attest.incidents.v1"
    return InputRecord(record["host_id"], subject, record, Coordinates(topic, 0, offset), 0)


def test_pass_issues_a_sealed_credential_and_trusts_the_host() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    out = apply_verdict(verdict("v-1", ek_public=EK), None, cfg)
    assert out.state.state is HostTrust.TRUSTED and out.credential is not None
    cred = out.credential
    cert = x509.load_der_x509_certificate(cred["certificate"])
    cert.verify_directly_issued_by(ca.certificate)
    assert cred["credential_id"] == credential_id_for("v-1")
    assert cred["serial"] == format(cert.serial_number, "x") == out.state.cert_serial
    assert cred["not_after"] == cert.not_valid_after_utc == APPRAISED + 24 * H
    assert cred["issued_at"] == APPRAISED
    sel = pcr_selection({"sha256": range(8)})
    pcrs = {"sha256": PCRS}
    binding = attestation_binding(cert)
    assert binding.policy_digest == POLICY_DIGEST
    assert binding.seal_policy_digest == policy_pcr_digest(sel, pcrs)
    assert cred["pcr_digest"] == pcr_values_digest(sel, pcrs) == hashlib.sha256(
        b"".join(PCRS[i] for i in range(8))).digest()
    assert cred["pcr_selection"] == [{"bank": "SHA256", "pcrs": list(range(8))}]
    assert cred["sealed"]["encrypted_payload"][:4] == b"HGC1"
    # Every output encodes with the published schemas.
    CODEC.encode("hostgate.CredentialIssued", cred)
    CODEC.encode("hostgate.HostState", out.host_state or {})
    CODEC.encode("hostgate.IssuerHostState", out.state.to_record())
    assert out.host_state == {"host_id": "host-0007", "state": "TRUSTED",
                              "cert_serial": cred["serial"], "cert_not_after": cred["not_after"],
                              "incident_id": None, "verdict_id": "v-1", "since": APPRAISED,
                              "reason": f"verdict v-1 passed; credential {cred['serial']} issued"}


def test_each_pass_renews_with_a_fresh_key_and_a_duplicate_verdict_is_a_no_op() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    first = apply_verdict(verdict("v-1", ek_public=EK), None, cfg)
    again = apply_verdict(verdict("v-1", ek_public=EK), first.state, cfg)
    assert again.credential is None and again.host_state is None and again.state == first.state
    second = apply_verdict(verdict("v-2", ek_public=EK, at=APPRAISED + 8 * H), first.state, cfg)
    assert second.credential is not None and first.credential is not None
    c1 = x509.load_der_x509_certificate(first.credential["certificate"])
    c2 = x509.load_der_x509_certificate(second.credential["certificate"])
    assert c1.public_key() != c2.public_key() and c1.serial_number != c2.serial_number
    assert [h.verdict_id for h in second.state.held] == ["v-1", "v-2"]
    assert second.state.since == APPRAISED  # still TRUSTED since the first pass


def test_fail_quarantines_and_revokes_every_held_certificate_into_the_crl() -> None:
    ca, ca_key = pem_ca()
    cfg = IssuerConfig(ca=ca)
    s = apply_verdict(verdict("v-1", ek_public=EK), None, cfg).state
    s = apply_verdict(verdict("v-2", ek_public=EK, at=APPRAISED + H), s, cfg).state
    failed = apply_verdict(verdict("v-3", result="FAIL", rules=("secureboot.enabled",),
                                   at=APPRAISED + 2 * H), s, cfg)
    st = failed.state
    assert st.state is HostTrust.QUARANTINED and failed.credential is None
    assert st.held == () and {r.serial for r in st.revoked} == {h.serial for h in s.held}
    assert failed.host_state is not None
    assert failed.host_state["cert_serial"] is None
    assert failed.host_state["reason"] == "verdict v-3 failed: secureboot.enabled"
    crl = build_crl(ca, crl_entries([st]), this_update=APPRAISED + 2 * H,
                    next_update=APPRAISED + 3 * H)
    assert crl.is_signature_valid(ca_key.public_key())
    assert {format(r.serial_number, "x") for r in crl} == {h.serial for h in s.held}
    CODEC.encode("hostgate.IssuerHostState", st.to_record())


@pytest.mark.parametrize(("result", "rules"), [("UNKNOWN", ()), ("PASS", ("dbx.current",))])
def test_unknown_results_and_passes_with_failed_rules_fail_closed(
        result: str, rules: tuple[str, ...]) -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    out = apply_verdict(verdict("v-1", result=result, rules=rules, ek_public=EK), None, cfg)
    assert out.state.state is HostTrust.QUARANTINED and out.credential is None


def test_quarantine_lasts_until_resolution_and_a_later_pass() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    t = APPRAISED
    s = apply_verdict(verdict("v-1", ek_public=EK), None, cfg).state
    s = apply_verdict(verdict("v-2", result="FAIL", rules=("r",), at=t + H), s, cfg).state
    s = apply_incident_event(incident("inc-9", "OPENED", "OPEN", t + H), s).state
    assert s.incident_id == "inc-9"
    blocked = apply_verdict(verdict("v-3", ek_public=EK, at=t + 2 * H), s, cfg)
    assert blocked.state.state is HostTrust.QUARANTINED and blocked.credential is None
    assert blocked.host_state is not None
    assert blocked.host_state["reason"] == "verdict v-3 passed but incident inc-9 is OPEN"
    assert blocked.host_state["incident_id"] == "inc-9"
    s = apply_incident_event(incident("inc-9", "ACKNOWLEDGED", "ACKNOWLEDGED", t + 3 * H),
                             blocked.state).state
    s = apply_incident_event(incident("inc-9", "REMEDIATED", "REMEDIATED", t + 4 * H), s).state
    assert s.state is HostTrust.QUARANTINED
    # evidence appraised before the remediation does not count
    early = apply_verdict(verdict("v-4", ek_public=EK, at=t + 4 * H - dt.timedelta(seconds=1)),
                          s, cfg)
    assert early.credential is None and early.state.state is HostTrust.QUARANTINED
    released = apply_verdict(verdict("v-5", ek_public=EK, at=t + 5 * H), early.state, cfg)
    assert released.state.state is HostTrust.TRUSTED and released.credential is not None
    assert released.state.since == t + 5 * H


def test_a_failure_after_remediation_needs_a_new_resolution() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    t = APPRAISED
    s = apply_verdict(verdict("v-1", result="FAIL", rules=("r",)), None, cfg).state
    s = apply_incident_event(incident("inc-1", "OPENED", "OPEN", t), s).state
    s = apply_incident_event(incident("inc-1", "REMEDIATED", "REMEDIATED", t + H), s).state
    # the host fails again before the incidents stage's REGRESSED reaches the issuer
    s = apply_verdict(verdict("v-2", result="FAIL", rules=("r",), at=t + 2 * H), s, cfg).state
    out = apply_verdict(verdict("v-3", ek_public=EK, at=t + 3 * H), s, cfg)
    assert out.state.state is HostTrust.QUARANTINED and out.credential is None


def test_an_incident_quarantines_a_trusted_host_and_revokes() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    s = apply_verdict(verdict("v-1", ek_public=EK), None, cfg).state
    out = apply_incident_event(incident("inc-2", "OPENED", "OPEN", APPRAISED + H), s)
    assert out.state.state is HostTrust.QUARANTINED
    assert [r.serial for r in out.state.revoked] == [s.cert_serial]
    assert out.host_state is not None and out.host_state["incident_id"] == "inc-2"
    # a resolved incident event on an untouched host changes nothing about its trust
    fresh = apply_incident_event(incident("inc-3", "CLOSED", "CLOSED", APPRAISED), None)
    assert fresh.state.state is HostTrust.PENDING
    # a status claiming resolution without the flag is not trusted
    bogus = {**incident("inc-2", "REMEDIATED", "REMEDIATED", APPRAISED + 2 * H),
             "resolved": False}
    assert apply_incident_event(bogus, out.state).state.incident_resolved is False


def test_missing_attested_pcrs_refuse_issuance() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    with pytest.raises(IssuanceError, match="PCR sha256:7"):
        apply_verdict(verdict("v-1", ek_public=EK, pcrs={i: PCRS[i] for i in range(7)}), None,
                      cfg)
    dup = verdict("v-1", ek_public=EK)
    dup["attested_pcrs"] = dup["attested_pcrs"] + dup["attested_pcrs"][:1]
    with pytest.raises(IssuanceError, match="listed twice"):
        apply_verdict(dup, None, cfg)


def test_decide_produces_outputs_and_state_and_checks_the_key() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    tables = Tables()
    d = decide(_input("hostgate.Verdict", verdict("v-1", ek_public=EK), 5), tables, cfg)
    assert [o.topic for o in d.outputs] == ["attest.credentials.v1", "attest.hosts.v1"]
    assert d.outputs[0].id == credential_id_for("v-1")
    assert [u.table for u in d.state_updates] == ["hosts"]
    assert d.log["trust"] == "TRUSTED" and d.log["trigger"] == "PASS"
    for upd in d.state_updates:
        tables.rows[(upd.table, upd.key)] = CODEC.decode(
            CODEC.encode("hostgate.IssuerHostState", upd.value or {})).record
    d2 = decide(_input("hostgate.Verdict", verdict("v-2", result="FAIL", rules=("r",),
                                                   at=APPRAISED + H), 6), tables, cfg)
    assert [o.topic for o in d2.outputs] == ["attest.hosts.v1"]
    state = HostTrustState.from_record(d2.state_updates[0].value or {})
    assert state.state is HostTrust.QUARANTINED and len(state.revoked) == 1
    wrong_key = InputRecord("host-9", "hostgate.Verdict", verdict("v-3"),
                            Coordinates("attest.verdicts.v1", 0, 7), 0)
    with pytest.raises(IssuanceError, match="record key 'host-9' is not its host_id"):
        decide(wrong_key, tables, cfg)
    other = InputRecord("host-0007", "hostgate.RemediationRejected", {},
                        Coordinates("attest.incidents.v1", 0, 8), 0)
    assert decide(other, tables, cfg).outputs == ()


def test_payload_opens_only_for_its_certificate_and_credential_id() -> None:
    key = pem_ca_material()[2]
    content_key = bytes(range(32))
    payload = encrypt_payload(content_key, key, credential_id="cred-1", certificate_der=b"cert")
    got = open_credential(content_key, payload, credential_id="cred-1", certificate_der=b"cert")
    assert got.private_numbers() == key.private_numbers()
    from services.issuer.errors import SealedPayloadError
    for kwargs in ({"credential_id": "cred-2", "certificate_der": b"cert"},
                   {"credential_id": "cred-1", "certificate_der": b"other"}):
        with pytest.raises(SealedPayloadError, match="does not authenticate") as info:
            open_credential(content_key, payload, **kwargs)  # type: ignore[arg-type]
        assert info.value.offset == 16
    with pytest.raises(SealedPayloadError, match="HGC1"):
        open_credential(content_key, b"XXXX" + payload[4:], credential_id="cred-1",
                        certificate_der=b"cert")
    with pytest.raises(SealedPayloadError, match="truncated"):
        open_credential(content_key, payload[:20], credential_id="cred-1",
                        certificate_der=b"cert")


def test_no_key_material_in_any_output_log_or_error(caplog: pytest.LogCaptureFixture) -> None:
    """Issue, revoke, fail deliberately; nothing produced, logged or raised holds a key."""
    key_pem, cert_pem, ca_key = pem_ca_material()
    produced: list[str] = []
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        ca = load_pem_ca(key_pem, cert_pem, Secret(PASSPHRASE, "file ca.pass"))
        cfg = IssuerConfig(ca=ca)
        tables = Tables()
        for offset, (subject, rec) in enumerate([
            ("hostgate.Verdict", verdict("v-1", ek_public=EK)),
            ("hostgate.Verdict", verdict("v-2", result="FAIL", rules=("r",), at=APPRAISED + H)),
            ("hostgate.IncidentEvent", incident("inc-1", "OPENED", "OPEN", APPRAISED + H)),
        ]):
            d = decide(_input(subject, rec, offset), tables, cfg)
            produced += [repr(d), repr(d.log)]
            produced += [CODEC.encode(o.subject, o.record).hex() for o in d.outputs]
            for upd in d.state_updates:
                tables.rows[(upd.table, upd.key)] = upd.value or {}
                produced.append(CODEC.encode("hostgate.IssuerHostState", upd.value or {}).hex())
            logging.getLogger("hostgate.issuer").info("decision %s", d.log)
            structlog.get_logger().info("decision", **d.log)
        for bad in (b"wrong passphrase!", PASSPHRASE + b"x"):
            with pytest.raises(CaKeyError) as info:
                load_pem_ca(key_pem, cert_pem, Secret(bad, "env X"))
            produced += [str(info.value), repr(info.value)]
        with pytest.raises(HostgateError) as info2:
            apply_verdict(verdict("v-9", ek_public=b"\x00\x01"), None, cfg)
        produced += [str(info2.value), repr(ca), str(ca)]
        produced += [repr(log) for log in logs]
    produced += [r.getMessage() for r in caplog.records]
    text = "\n".join(produced)
    numbers = ca_key.private_numbers().private_value
    secret_forms = [PASSPHRASE.decode(), PASSPHRASE.hex(), "PRIVATE KEY", "ENCRYPTED",
                    format(numbers, "x"), str(numbers),
                    numbers.to_bytes(32, "big").hex()]
    for form in secret_forms:
        assert form not in text, f"secret material ({form[:12]}...) leaked"
    assert len(text) > 1000  # the capture really captured the outputs
    der = ca_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    assert der.hex() not in text
