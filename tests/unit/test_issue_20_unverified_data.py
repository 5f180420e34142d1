"""Issue 20: untrusted event data degrades a claim, not the whole log.

Each case starts from a real corpus log (``$HOSTGATE_CORPUS``) and changes one event's *data*
in place, byte for byte the same length, under its unchanged digests: what a firmware that logs
something other than what it hashed (the real server of issue 20: an ``EV_S_CRTM_VERSION`` whose
UTF-16 string is not what was measured) or an attacker editing the log produces. The quote is
the honest replay of the digests, so only the data-to-digest binding can tell.

* informational data (no security decision reads it): the event still counts by its digest,
  the host is admitted under the policy derived from that log, the verdict's claims list the
  anomaly, and a rule that reads the claim fails "cannot be confirmed" naming the event;
* security-relevant data (``services.tpm.binding_consequences.SECURITY_RELEVANT``): the whole
  evidence fails closed, as before.
"""

from __future__ import annotations

import json
from functools import cache

import pytest

from services.tpm.binding_consequences import SECURITY_RELEVANT, data_decides
from services.tpm.claims import REASONS
from services.tpm.errors import TpmError
from services.tpm.eventlog import Event, EventType, parse_event_log
from services.verifier.core import appraise
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy.errors import PolicyError
from services.verifier.policy_in_force import PolicyInForce, load_in_force, published_record
from tests.conftest import corpus_log, corpus_path
from tests.support.soft_evidence import RECEIVED_AT_MS, collected

CORPUS = corpus_path()
UNVERIFIED = "tpm.binding.data_unverified"


_log = cache(corpus_log)


def _event(entry_id: str, etype: int, pcr: int, needle: bytes = b"") -> Event:
    return next(e for e in parse_event_log(_log(entry_id)).events
                if e.event_type == etype and e.pcr == pcr and needle in e.data)


def _altered(entry_id: str, ev: Event, data: bytes) -> bytes:
    """The log with ``ev``'s data replaced in place (same length, digests untouched)."""
    assert len(data) == len(ev.data) and data != ev.data
    raw = bytearray(_log(entry_id))
    assert raw[ev.data_offset:ev.data_offset + len(data)] == ev.data
    raw[ev.data_offset:ev.data_offset + len(data)] = data
    return bytes(raw)


def _crtm_forged(entry_id: str) -> tuple[Event, bytes]:
    """The log with its S-CRTM version string's first UTF-16 unit changed to "X"."""
    ev = _event(entry_id, EventType.EV_S_CRTM_VERSION, 0)
    return ev, _altered(entry_id, ev, "X".encode("utf-16-le") + ev.data[2:])


def _in_force(text: str) -> PolicyInForce:
    record = published_record(text, version=1, published_at_ms=RECEIVED_AT_MS, author="issue-20")
    return load_in_force(record)


def _claims_json(verdict: object) -> dict[str, object]:
    return dict(json.loads(str(verdict.record["claims_json"])))  # type: ignore[attr-defined]


# --- informational data -------------------------------------------------------------------
@pytest.mark.parametrize("entry_id", ["A42", "A39", "A47"])
def test_unbound_crtm_version_is_admitted_with_the_anomaly_listed(entry_id: str) -> None:
    ev, forged = _crtm_forged(entry_id)
    golden = golden_from_log(forged, entry_id)
    assert [(a.reason, a.seq, a.fatal) for a in golden.claims.anomalies
            if a.seq == ev.seq] == [(UNVERIFIED, ev.seq, False)]
    assert golden.claims.unverified_claim("s_crtm_version") is not None
    assert golden.claims.s_crtm_version == ()  # the data is never read
    derived = derive_policy([golden], policy_id="issue-20", version="1")
    assert "does not hash to its digest" in derived.text  # the comment saying why
    verdict = appraise(collected(entry_id, forged, range(24)), _in_force(derived.text))
    assert verdict.passed, verdict.reason_ids
    listed = [a for a in _claims_json(verdict)["anomalies"]  # type: ignore[attr-defined]
              if a["seq"] == ev.seq]
    assert [(a["reason"], a["fatal"]) for a in listed] == [(UNVERIFIED, False)]


def test_the_derived_policy_pins_the_digest_a_host_with_another_fails() -> None:
    ev, forged = _crtm_forged("A42")
    derived = derive_policy([golden_from_log(forged, "A42")], policy_id="issue-20", version="1")
    policy = _in_force(derived.text)
    # another host: same (unverifiable) data, another firmware build under it (digest differs)
    raw = bytearray(forged)
    sha256 = bytes(ev.digests["sha256"])
    at = raw.index(sha256, ev.offset)
    raw[at] ^= 0xFF
    other = bytes(raw)
    verdict = appraise(collected("A42", other, range(24)), policy)
    assert not verdict.passed
    assert "policy.reference.groups" in verdict.reason_ids


def test_a_rule_reading_an_unverified_claim_fails_cannot_be_confirmed() -> None:
    ev, forged = _crtm_forged("A42")
    text = derive_policy([golden_from_log(forged, "A42")], policy_id="issue-20",
                         version="1").text
    # would pass on absence: the claim is empty because its data was not read
    rule = ("  customRules:\n  - name: crtm_not_debug\n"
            "    expression: '!(\"DEBUG\" in claims.s_crtm_version)'\n")
    text = text.replace("\n  evidence:\n", "\n" + rule + "  evidence:\n", 1)
    assert "customRules" in text
    verdict = appraise(collected("A42", forged, range(24)), _in_force(text))
    assert not verdict.passed
    failed = [f for f in verdict.failures if "crtm_not_debug" in f.rule_id]
    assert len(failed) == 1
    assert "cannot be confirmed" in failed[0].sentence
    assert f"event {ev.seq}" in failed[0].sentence


# --- security-relevant data ---------------------------------------------------------------
def _flip_last(ev: Event) -> bytes:
    return ev.data[:-1] + bytes([ev.data[-1] ^ 0x01])


SECURITY_CASES = [
    ("A42", EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, 7, "SecureBoot".encode("utf-16-le")),
    ("A42", EventType.EV_SEPARATOR, 4, b""),
    ("A42", EventType.EV_EFI_VARIABLE_AUTHORITY, 7, b""),
    ("A42", EventType.EV_IPL, 8, b"grub_cmd: linux"),
    ("A39", EventType.EV_EFI_ACTION, 4, b"Calling"),
    ("W03", EventType.EV_EVENT_TAG, 12, b""),
]


@pytest.mark.parametrize(("entry_id", "etype", "pcr", "needle"), SECURITY_CASES,
                         ids=[f"{c[0]}-{EventType(c[1]).name}-pcr{c[2]}" for c in SECURITY_CASES])
def test_unbound_security_relevant_data_fails_closed(entry_id: str, etype: int, pcr: int,
                                                     needle: bytes) -> None:
    ev = _event(entry_id, etype, pcr, needle)
    assert data_decides("tpm", ev.pcr, ev.event_type) is not None
    forged = _altered(entry_id, ev, _flip_last(ev))
    golden = golden_from_log(forged, entry_id)
    assert golden.claims.failed_closed
    assert ("tpm.binding.digest_mismatch", True) in [
        (a.reason, a.fatal) for a in golden.claims.anomalies if a.seq == ev.seq]
    with pytest.raises(PolicyError, match="fails closed"):
        derive_policy([golden], policy_id="issue-20", version="1")
    own = golden_from_log(_log(entry_id), entry_id)
    policy = _in_force(derive_policy([own], policy_id="issue-20", version="1").text)
    verdict = appraise(collected(entry_id, forged, range(24)), policy)
    assert not verdict.passed


def test_the_table_gives_a_reason_for_every_row_and_covers_what_decisions_read() -> None:
    assert SECURITY_RELEVANT and all(row.reason for row in SECURITY_RELEVANT)
    for pcr in (7, 8, 12, 13, 14):  # every label in these PCRs feeds a decision
        assert data_decides("tpm", pcr, EventType.EV_S_CRTM_VERSION) is not None
    for t in (EventType.EV_SEPARATOR, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
              EventType.EV_EFI_VARIABLE_AUTHORITY, EventType.EV_IPL, EventType.EV_EFI_ACTION):
        for pcr in range(16):
            assert data_decides("tpm", pcr, t) is not None, (t, pcr)
    assert data_decides("tpm", 0, EventType.EV_S_CRTM_VERSION) is None
    for mr in (1, 3):  # CCEL registers that hold PCR 7's and the boot loader's measurements
        assert data_decides("ccel", mr, EventType.EV_EFI_GPT_EVENT) is not None
    assert UNVERIFIED in REASONS


# --- TPM 1.2 -------------------------------------------------------------------------------
TPM12_LINE = "TPM 1.2 event log: hostgate attests TPM 2.0 hosts"


@pytest.mark.parametrize("entry_id", ["S06", "S07"])
def test_tpm12_logs_are_refused_with_one_clear_line(entry_id: str) -> None:
    with pytest.raises(TpmError, match=TPM12_LINE):
        golden_from_log(_log(entry_id), entry_id)
    verdict = appraise(collected(entry_id, _log(entry_id), range(24)),
                       _in_force(derive_policy([golden_from_log(_log("A40"), "A40")]).text))
    assert not verdict.passed
    assert any(TPM12_LINE in f.sentence for f in verdict.failures)
    assert not any("digest" in f.rule_id for f in verdict.failures)


@pytest.mark.parametrize("entry_id", ["S08", "S10", "W04"])
def test_tpm2_hosts_logging_the_sha1_format_are_not_tpm12(entry_id: str) -> None:
    golden_from_log(_log(entry_id), entry_id)  # no refusal: TPM 2.0 firmware, SHA-1 format


# --- named quirk: the duplicate separator of early Intel TDX firmware ----------------------
DUPLICATE_SEPARATOR = "tdx-duplicate-separator"


@pytest.mark.parametrize("entry_id", ["C03", "C04"])
def test_quirk_tdx_duplicate_separator(entry_id: str) -> None:
    with pytest.raises(PolicyError, match=DUPLICATE_SEPARATOR) as info:
        derive_policy([golden_from_log(_log(entry_id), entry_id)])
    assert "duplicate EV_SEPARATOR" in str(info.value)
    golden = golden_from_log(_log(entry_id), entry_id, allowed_quirks=[DUPLICATE_SEPARATOR])
    assert not golden.claims.failed_closed
    assert DUPLICATE_SEPARATOR in [q.quirk for q in golden.claims.quirks_applied]
    derived = derive_policy([golden])
    assert DUPLICATE_SEPARATOR in derived.text
    assert DUPLICATE_SEPARATOR in derived.policy.spec.evidence.allowed_quirks
