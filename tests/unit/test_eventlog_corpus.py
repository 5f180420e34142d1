"""Real-log conformance: every TCG event log of ../shared/corpus parses and replays to the PCR
values the manifest records (source-repository truths, real quotes, independent replay).

The corpus is read in place (never copied): ``HOSTGATE_CORPUS`` or ``../shared/corpus`` relative
to the repository root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.tpm import (
    EventType,
    parse_event_log,
    replay,
    startup_locality,
    verify_replay,
)
from services.tpm.errors import LimitExceeded, MalformedLog, ReplayMismatch

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("HOSTGATE_CORPUS", REPO_ROOT / ".." / "shared" / "corpus"))
if not CORPUS.is_absolute():
    CORPUS = REPO_ROOT / CORPUS
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text())
TCG_ENTRIES = [e for e in MANIFEST["entries"] if not e["category"].startswith("ima")]
BY_ID = {e["id"]: e for e in TCG_ENTRIES}

# Logs that must be rejected: (error class, byte offset, field). The manifest's independent
# replay marks the same set with an error (checked below); offsets are hostgate's own reading:
# M03 is ASCII text, whose first "pcrIndex" is out of range; M04 is empty; F05's Spec ID event
# declares vendorInfoSize 4 but its eventSize leaves no byte for the vendor info (the 4 bytes
# follow the event, where the independent parser then failed at offset 69).
EXPECTED_ERRORS: dict[str, tuple[type[Exception], int, str | None]] = {
    "M03": (MalformedLog, 0, "pcrIndex"),
    "M04": (MalformedLog, 0, None),
    "F05": (MalformedLog, 68, "vendorInfoSize"),
}

# Known defect (README): S08's firmware extended the two ExitBootServices EV_EFI_ACTION events
# into PCR 5 without logging them.
QUIRKY = {"S08": ("ebs-invocation-success", 5)}


def _log_bytes(entry: dict[str, Any]) -> bytes:
    return (CORPUS / entry["file"]).read_bytes()


def _hex_banks(values: dict[str, dict[str, str]]) -> dict[str, dict[int, bytes]]:
    return {b: {int(p): bytes.fromhex(v) for p, v in vs.items()} for b, vs in values.items()}


def _truths(entry: dict[str, Any]) -> list[tuple[str, dict[str, dict[int, bytes]]]]:
    """PCR truths of an entry: source-repo values, real quote, else the independent replay."""
    out = []
    for item in entry.get("expected_from_source_repos") or []:
        value = item.get("value")
        if not isinstance(value, dict):
            continue
        if item["kind"].startswith("tool_output_golden"):
            value = value.get("pcrs")
            if not isinstance(value, dict):
                continue
        elif not item["kind"].startswith(("pcr_values", "rtmr_values")):
            continue
        if value:
            out.append((item["source"], _hex_banks(value)))
    if entry.get("quoted_pcrs"):
        out.append(("quoted_pcrs", _hex_banks(entry["quoted_pcrs"]["pcrs"])))
    replayed = (entry.get("independent_replay") or {}).get("replayed_pcrs")
    if not out and replayed:
        out.append(("independent_replay", _hex_banks(replayed)))
    return out


def test_expected_errors_match_manifest() -> None:
    flagged = {e["id"] for e in TCG_ENTRIES if (e.get("independent_replay") or {}).get("error")}
    assert flagged == set(EXPECTED_ERRORS)


@pytest.mark.parametrize("entry_id", sorted(BY_ID))
def test_corpus_log(entry_id: str) -> None:
    entry = BY_ID[entry_id]
    data = _log_bytes(entry)
    if entry_id in EXPECTED_ERRORS:
        cls, offset, field = EXPECTED_ERRORS[entry_id]
        with pytest.raises(cls) as info:
            parse_event_log(data)
        assert not isinstance(info.value, LimitExceeded) or cls is LimitExceeded
        assert info.value.offset == offset  # type: ignore[attr-defined]
        assert info.value.field == field  # type: ignore[attr-defined]
        assert f"byte offset {offset}" in str(info.value)
        return
    log = parse_event_log(data)
    independent = entry.get("independent_replay") or {}
    assert len(log.events) == independent["events"]
    assert log.trailing_padding == independent["trailing_padding_bytes"]
    assert startup_locality(log) == independent["startup_locality_used_for_pcr0"]
    ours = replay(log)
    truths = _truths(entry)
    if entry_id == "S09":
        assert truths == [] and ours == {}
    else:
        assert truths, "every non-fragment log has some PCR truth"
    for source, truth in truths:
        in_log = {b: v for b, v in truth.items() if b in log.banks}
        assert in_log, f"{source}: no bank of the truth is in the log"
        if entry_id in QUIRKY:
            quirk, pcr = QUIRKY[entry_id]
            with pytest.raises(ReplayMismatch) as info:
                verify_replay(log, in_log, pcrs=_pcrs(in_log))
            assert info.value.first == (log.banks[0], pcr)
            result = verify_replay(log, in_log, pcrs=_pcrs(in_log), allowed_quirks=[quirk])
            assert result.applied_quirks == (quirk,)
            continue
        if source == "quoted_pcrs":
            # A quote covers every PCR; the boot log must account for all but IMA's PCR 10,
            # which the caller names as extended by another log.
            with pytest.raises(ReplayMismatch):
                verify_replay(log, in_log)
            result = verify_replay(log, in_log, external=(10,))
            for bank, values in ours.items():
                assert all(in_log[bank][p] == v for p, v in values.items())
        else:
            # Every listed PCR, including untouched ones (compared with their reset value).
            result = verify_replay(log, in_log, pcrs=_pcrs(in_log))
        assert result.applied_quirks == ()
        for bank, values in in_log.items():
            for pcr, value in values.items():
                if pcr in ours.get(bank, {}):
                    assert ours[bank][pcr] == value, (source, bank, pcr)


def _pcrs(banks: dict[str, dict[int, bytes]]) -> set[int]:
    return {p for values in banks.values() for p in values}


def _log(entry_id: str):  # type: ignore[no-untyped-def]
    return parse_event_log(_log_bytes(BY_ID[entry_id]))


def _tool(entry_id: str) -> dict[str, Any]:
    """tpm2_eventlog 5.4's recorded output for a corpus log (a second opinion, not a truth)."""
    out: dict[str, Any] = BY_ID[entry_id]["tpm2_eventlog_5_4"]
    return out


def _check_sp800_155_not_extended() -> None:
    log = _log("A38")
    sp = [e for e in log.events if e.data.startswith(b"SP800-155 Event")]
    assert len(sp) == 2 and all(e.event_type == EventType.EV_NO_ACTION for e in sp)
    assert not any(e.extends for e in sp)
    ours = replay(log)["sha256"][0].hex()
    truth = BY_ID["A38"]["expected_from_source_repos"][0]["value"]["sha256"]["0"]
    wrong = _tool("A38")["pcrs"]["sha256"]["0"]
    assert ours == truth != wrong


def _check_startup_locality_3() -> None:
    log = _log("A39")
    assert startup_locality(log) == 3
    ours = replay(log)["sha1"][0].hex()
    assert ours == BY_ID["A39"]["independent_replay"]["replayed_pcrs"]["sha1"]["0"]
    assert ours != _tool("A39")["pcrs"]["sha1"]["0"]


def _check_hcrtm_locality_4() -> None:
    log = _log("A52")
    assert startup_locality(log) == 4
    assert log.events[1].event_type == EventType.EV_EFI_HCRTM_EVENT
    truth = BY_ID["A52"]["expected_from_source_repos"][0]["value"]["sha1"]["0"]
    ours = replay(log)
    assert ours["sha1"][0].hex() == truth
    assert "sm3_256" in ours


def _check_pcr_not_extended() -> None:
    log = _log("W03")
    minus_one = [e for e in log.events if e.pcr == 0xFFFFFFFF]
    assert len(minus_one) == 1 and not minus_one[0].extends
    assert all(p < 24 for p in replay(log)["sha256"])
    tool = _tool("W03")
    assert tool["exit_code"] != 0 and tool["pcrs"] == {}


def _check_ccel() -> None:
    log = _log("C04")
    assert log.banks == ("sha384",) and log.events[0].pcr == 1
    truth = BY_ID["C04"]["expected_from_source_repos"][0]["value"]["sha384"]
    ours = replay(log)["sha384"]
    assert {str(p): v.hex() for p, v in ours.items() if str(p) in truth} == truth
    tool = _tool("C04")
    assert tool["exit_code"] != 0 and tool["pcrs"] == {}


def _check_f05_offset() -> None:
    with pytest.raises(MalformedLog) as info:
        parse_event_log(_log_bytes(BY_ID["F05"]))
    assert (info.value.offset, info.value.field) == (68, "vendorInfoSize")
    assert "offset 69" in BY_ID["F05"]["independent_replay"]["error"]
    tool = _tool("F05")
    assert tool["exit_code"] == 0 and tool["pcrs"] == {}


@dataclass(frozen=True)
class Deviation:
    """Where hostgate departs from the TCG spec or from another tool, checked on a corpus log."""

    id: str
    corpus_id: str
    departs_from: str
    hostgate: str
    why: str
    check: Callable[[], None]


KNOWN_DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "sp800-155-not-extended", "A38", "tpm2_eventlog 5.4",
        "SP800-155 EV_NO_ACTION events (reference-manifest events) are kept, never extended",
        "PFP 1.05 10.4.5: EV_NO_ACTION is never extended; tpm2_eventlog 5.4 extends every "
        "non-Spec-ID EV_NO_ACTION into PCR 0, so its PCR 0 differs from the source repo's truth",
        _check_sp800_155_not_extended,
    ),
    Deviation(
        "startup-locality", "A39", "tpm2_eventlog 5.4",
        "PCR 0 starts at 00..03 when a StartupLocality event says locality 3",
        "PFP 1.05 10.4.5.3 (TCG_EfiStartupLocalityEvent); tpm2_eventlog 5.4 ignores it",
        _check_startup_locality_3,
    ),
    Deviation(
        "hcrtm-locality-4", "A52", "tpm2_eventlog 5.4",
        "PCR 0 starts at 00..04 when its first measurement is EV_EFI_HCRTM_EVENT",
        "H-CRTM (_TPM_Hash_Start) runs at locality 4 (PFP 1.05 3.3.4); tpm2-tss asserts this "
        "PCR 0 for A52; tpm2_eventlog 5.4 ignores the H-CRTM locality",
        _check_hcrtm_locality_4,
    ),
    Deviation(
        "pcr-ffffffff-kept", "W03", "tpm2_eventlog 5.4",
        "events with PCR index 0xFFFFFFFF (Windows log-only) are parsed and kept, not extended",
        "Windows logs them for information only; tpm2_eventlog 5.4 rejects the whole log",
        _check_pcr_not_extended,
    ),
    Deviation(
        "ccel-accepted", "C04", "tpm2_eventlog 5.4",
        "Intel TDX CCEL logs parse (Spec ID in MR index 1) and replay to the RTMRs",
        "same TCG_PCR_EVENT2 wire format; tpm2_eventlog 5.4 rejects the Spec ID event's index",
        _check_ccel,
    ),
    Deviation(
        "f05-vendorinfo-offset", "F05", "independent parser and tpm2_eventlog 5.4",
        "rejects the Spec ID event at byte 68, field vendorInfoSize",
        "its eventSize leaves no room for the declared vendorInfoSize 4; the independent parser "
        "fails later (offset 69, reading the stray bytes as a header) and tpm2_eventlog 5.4 "
        "exits 0 printing nothing: hostgate names the field that is inconsistent",
        _check_f05_offset,
    ),
)


def test_known_deviations_table_is_well_formed() -> None:
    assert len({d.id for d in KNOWN_DEVIATIONS}) == len(KNOWN_DEVIATIONS)
    for d in KNOWN_DEVIATIONS:
        assert d.corpus_id in BY_ID, d
        assert d.departs_from and d.hostgate and d.why


@pytest.mark.parametrize("deviation", KNOWN_DEVIATIONS, ids=lambda d: d.id)
def test_known_deviation(deviation: Deviation) -> None:
    """Each row's check asserts hostgate's behaviour on its corpus log, so the table cannot rot."""
    deviation.check()


def test_quirk_ebs_invocation_success() -> None:
    """S08 (go-attestation ebs_event_missing_eventlog): PCR 5 only matches with the quirk."""
    log = _log("S08")
    both = _hex_banks(BY_ID["S08"]["expected_from_source_repos"][0]["value"])
    with pytest.raises(ReplayMismatch, match="sha256 that the log does not carry"):
        verify_replay(log, both)  # the log is SHA-1 only: the quoted SHA-256 bank is unproven
    quoted = {"sha1": both["sha1"]}
    with pytest.raises(ReplayMismatch) as info:
        verify_replay(log, quoted)
    assert info.value.first == ("sha1", 5)
    assert info.value.invalid_pcrs == {"sha1": [5]}
    assert info.value.event_seqs == tuple(e.seq for e in log.events if e.pcr == 5)
    # A quirk that does not fix it is not enough, and it was tried on a copy.
    with pytest.raises(ReplayMismatch):
        verify_replay(log, quoted, allowed_quirks=["ebs-invocation-failure"])
    n_events = len(log.events)
    result = verify_replay(log, quoted, allowed_quirks=["ebs-invocation-failure",
                                                        "ebs-invocation-success"])
    assert result.applied_quirks == ("ebs-invocation-success",)
    assert result.unverified_banks == ()
    assert len(log.events) == n_events
    assert all(e.offset >= 0 for e in result.verified_events)


def test_quoted_pcr_mismatch_names_first_pcr_and_events() -> None:
    """A36's real quote, with PCR 4 altered in one bank, fails on PCR 4 with its events."""
    log = _log("A36")
    quoted = _hex_banks(BY_ID["A36"]["quoted_pcrs"]["pcrs"])
    quoted["sha256"][4] = bytes(32)
    with pytest.raises(ReplayMismatch) as info:
        verify_replay(log, quoted)
    assert info.value.first == ("sha256", 4)
    assert info.value.event_seqs == tuple(e.seq for e in log.events if e.pcr == 4 and e.extends)
    assert "PCR 4 (sha256)" in str(info.value)
