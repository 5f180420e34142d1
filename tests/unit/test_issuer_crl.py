"""The CRL from the issuer's hosts changelog (``services.issuer.crl``), without a broker."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from services.issuer.config import IssuerConfig
from services.issuer.core import apply_verdict
from services.issuer.crl import ChangelogRecord, crl_summary, current_crl, fold_states
from services.issuer.hoststate import HostTrustState
from services.runtime.codec import Codec
from tests.unit.issuer_support import APPRAISED, pem_ca, software_ek_public, verdict

CODEC = Codec.load()


def _rec(state: HostTrustState, offset: int) -> ChangelogRecord:
    value = CODEC.decode(CODEC.encode("hostgate.IssuerHostState", state.to_record())).record
    return ChangelogRecord(state.host_id, value, f"cl[0]@{offset}")


def test_revoked_certificates_of_the_newest_states_are_listed_and_signed() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    ek = software_ek_public()
    trusted = apply_verdict(verdict("v1", ek_public=ek), None, cfg)
    serial = trusted.credential["serial"] if trusted.credential else ""
    failed = apply_verdict(verdict("v2", result="FAIL", rules=("r",),
                                   at=APPRAISED + dt.timedelta(minutes=1)), trusted.state, cfg)
    other = apply_verdict(verdict("v3", host_id="host-0008", ek_public=ek), None, cfg)
    records = [_rec(trusted.state, 0), _rec(other.state, 1), _rec(failed.state, 2)]
    folded = fold_states(records)
    assert folded.problems == [] and set(folded.states) == {"host-0007", "host-0008"}
    crl = current_crl(ca, folded.states.values(), now=APPRAISED + dt.timedelta(minutes=2),
                      interval=dt.timedelta(hours=1))
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    assert [format(r.serial_number, "x") for r in crl] == [serial]
    summary = crl_summary(crl)
    assert summary["revoked"][0]["serial"] == serial
    assert summary["next_update"] == "2025-03-01T13:02:00+00:00"

    # only the newest state per host counts: an older record after it is not "newer"
    assert [format(r.serial_number, "x") for r in current_crl(
        ca, fold_states(records[:2]).states.values(), now=APPRAISED)] == []


def test_an_unreadable_record_keeps_the_last_good_state_and_is_reported() -> None:
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    ek = software_ek_public()
    trusted = apply_verdict(verdict("v1", ek_public=ek), None, cfg)
    failed = apply_verdict(verdict("v2", result="FAIL", rules=("r",),
                                   at=APPRAISED + dt.timedelta(minutes=1)), trusted.state, cfg)
    bad = ChangelogRecord("host-0007", {"_undecodable": "garbage"}, "cl[0]@9")
    wrong_key = ChangelogRecord("host-0009", _rec(failed.state, 8).value, "cl[0]@10")
    folded = fold_states([_rec(failed.state, 1), bad, wrong_key])
    assert len(folded.problems) == 2
    assert "cl[0]@9" in folded.problems[0] and "cl[0]@10" in folded.problems[1]
    assert [r.serial for r in folded.states["host-0007"].revoked] == [
        failed.state.revoked[0].serial]
    tomb = fold_states([_rec(failed.state, 1), ChangelogRecord("host-0007", None, "cl[0]@2")])
    assert tomb.states == {}
    assert isinstance(current_crl(ca, folded.states.values(), now=APPRAISED),
                      x509.CertificateRevocationList)
