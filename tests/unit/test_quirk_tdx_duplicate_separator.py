"""Issue 20 item 3: the duplicate separator of early Intel TDX firmware is a named quirk.

The real COS 113 TDX CCEL (corpus C03, C04 the same log unpadded) logs a second EV_SEPARATOR in
MR 1 (RTMR0) and none in MR 2 (RTMR1); go-eventlog refuses it. hostgate refuses it too, with a
message naming the defect and the quirk ``tdx-duplicate-separator``; a policy that names the
quirk accepts exactly that shape (and reports it), and no other separator anomaly. The variants
below edit C04 byte for byte (a record copied, an MR index or a separator value changed with
its digest), and are read log-only, so each replays to itself: only the fold can refuse them.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from services.tpm.claims import Claims, extract_claims
from services.tpm.errors import Unsupported
from services.tpm.eventlog import Event, EventType, parse_event_log
from services.tpm.quirks import QUIRK_TDX_DUPLICATE_SEPARATOR as QUIRK
from services.tpm.quirks import Acceptance, Layer, quirk_by_id
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.evaluate import evaluate, prepare
from services.verifier.policy.ids import EVIDENCE_ANOMALIES
from services.verifier.policy.lint import findings
from services.verifier.policy.results import Outcome
from tests.conftest import corpus_log, corpus_manifest, corpus_path

CORPUS = corpus_path()
REPO = Path(__file__).resolve().parents[2]
DUPLICATE = "tpm.separator.duplicate"
DEFECT = "the duplicate separator of early Intel TDX firmware"
HINT = f"a policy may accept it with allowedQuirks: [{QUIRK}]"
MISPLACED_SEQ = 16  # C03/C04: the second separator of MR 1, RTMR1's


_log = cache(corpus_log)


def _claims(data: bytes, *quirks: str) -> Claims:
    return golden_from_log(data, "variant", allowed_quirks=quirks).claims


def _separators(data: bytes) -> list[Event]:
    return [e for e in parse_event_log(data).events if e.event_type == EventType.EV_SEPARATOR]


def _fatal(claims: Claims) -> list[tuple[str, int, str]]:
    return [(a.reason, a.seq, a.detail) for a in claims.anomalies if a.fatal]


def _record(data: bytes, ev: Event) -> bytes:
    """The bytes of ``ev``'s record (C04: one SHA-384 digest per event)."""
    return data[ev.offset:ev.data_offset + len(ev.data)]


def _with_mr(record: bytes, mr: int) -> bytes:
    return struct.pack("<I", mr) + record[4:]


def _inserted_after(data: bytes, ev: Event, record: bytes) -> bytes:
    end = ev.data_offset + len(ev.data)
    return data[:end] + record + data[end:]


def _third_separator_in_mr1() -> bytes:
    data = _log("C04")
    ev = next(e for e in _separators(data) if e.seq == MISPLACED_SEQ)
    return _inserted_after(data, ev, _record(data, ev))


def _mr2_has_its_own() -> bytes:
    data = _log("C04")
    ev = next(e for e in _separators(data) if e.seq == MISPLACED_SEQ)
    return _inserted_after(data, ev, _with_mr(_record(data, ev), 2))


def _duplicate_in_mr3() -> bytes:
    """MR 1 keeps one separator; MR 3 (RTMR2) gets two: a duplicate in a non-TDX position."""
    data = _log("C04")
    ev = next(e for e in _separators(data) if e.seq == MISPLACED_SEQ)
    moved = _with_mr(_record(data, ev), 3)
    start, end = ev.offset, ev.data_offset + len(ev.data)
    return data[:start] + moved + moved + data[end:]


def _error_value() -> bytes:
    """The misplaced separator with the error value 1, digest made to match (so only its value
    differs from the defect's shape)."""
    data = bytearray(_log("C04"))
    ev = next(e for e in _separators(bytes(data)) if e.seq == MISPLACED_SEQ)
    value = b"\x01\x00\x00\x00"
    digest = ev.digests["sha384"]
    at = ev.data_offset - 4 - len(digest)
    assert data[at:at + len(digest)] == digest
    data[at:at + len(digest)] = hashlib.sha384(value).digest()
    data[ev.data_offset:ev.data_offset + 4] = value
    return bytes(data)


# --- the row ------------------------------------------------------------------------------
def test_the_row_is_a_structure_quirk_a_policy_must_name() -> None:
    quirk = quirk_by_id(QUIRK)
    assert quirk is not None
    assert quirk.layer is Layer.STRUCTURE and quirk.acceptance is Acceptance.POLICY
    assert quirk.corpus == ("C03", "C04") and "go-eventlog" in quirk.reference
    assert quirk.reason == DUPLICATE and quirk.defect == DEFECT


# --- without the quirk: refused, naming the defect and the quirk ----------------------------
@pytest.mark.parametrize("entry_id", ["C03", "C04"])
def test_without_the_quirk_the_log_is_refused_naming_defect_and_quirk(entry_id: str) -> None:
    claims = _claims(_log(entry_id))
    assert claims.failed_closed
    [(reason, seq, detail)] = _fatal(claims)
    assert (reason, seq) == (DUPLICATE, MISPLACED_SEQ)
    assert "duplicate EV_SEPARATOR in MR 1" in detail and DEFECT in detail and HINT in detail
    assert QUIRK not in {q.quirk for q in claims.quirks_applied}
    with pytest.raises(PolicyError) as info:
        derive_policy([golden_from_log(_log(entry_id), entry_id)])
    assert DEFECT in str(info.value) and HINT in str(info.value)


# --- with the quirk: accepted, reported, the rest of the claims unchanged -------------------
@pytest.mark.parametrize("entry_id", ["C03", "C04"])
def test_with_the_quirk_the_log_is_accepted_and_the_quirk_reported(entry_id: str) -> None:
    plain, named = _claims(_log(entry_id)), _claims(_log(entry_id), QUIRK)
    assert not named.failed_closed and _fatal(named) == []
    uses = [q for q in named.quirks_applied if q.quirk == QUIRK]
    assert [q.seq for q in uses] == [MISPLACED_SEQ]
    assert [a for a in named.anomalies] == [a for a in plain.anomalies if not a.fatal]
    for field in ("secure_boot", "key_databases", "authorities", "boot_applications",
                  "kernel_cmdlines", "pcrs"):
        assert getattr(named, field) == getattr(plain, field), field


def _failed(entry_id: str, *quirks: str) -> set[str]:
    """The rules a log fails under the policy derived from it (read with ``quirks``)."""
    golden = golden_from_log(_log(entry_id), entry_id, allowed_quirks=quirks)
    verdict = evaluate(prepare(derive_policy([golden]).policy), golden.subject())
    return {r.rule_id for r in verdict.failed}


@pytest.mark.parametrize("entry_id", ["C03", "C04"])
def test_a_policy_derived_with_the_quirk_names_it_and_judges_like_the_fixed_log(
        entry_id: str) -> None:
    golden = golden_from_log(_log(entry_id), entry_id, allowed_quirks=[QUIRK])
    derived = derive_policy([golden])
    assert derived.policy.spec.evidence.allowed_quirks == (QUIRK,)
    line = next(x for x in derived.text.splitlines() if QUIRK in x)
    assert f"used in {entry_id} event {MISPLACED_SEQ}" in line and DEFECT in line
    verdict = evaluate(prepare(derived.policy), golden.subject())
    anomalies = verdict.result(EVIDENCE_ANOMALIES)
    assert anomalies is not None and anomalies.outcome is Outcome.PASS
    # judged exactly as C05, go-eventlog's copy with the separator moved to MR 2, is judged
    assert _failed(entry_id, QUIRK) == _failed("C05")
    # the policy's quirks are what a log-only check reads with: without them, it fails closed
    plain = evaluate(prepare(derived.policy), golden_from_log(_log(entry_id), entry_id).subject())
    refused = plain.result(EVIDENCE_ANOMALIES)
    assert refused is not None and refused.outcome is Outcome.FAIL


def test_the_quirk_is_not_used_in_a_tpm_log() -> None:
    claims = golden_from_log(_log("C03"), "C03", registers="tpm", allowed_quirks=[QUIRK]).claims
    [detail] = [a.detail for a in claims.anomalies if a.reason == DUPLICATE]
    assert QUIRK not in detail and claims.failed_closed
    assert QUIRK not in {q.quirk for q in claims.quirks_applied}




# --- the quirk accepts that shape only ------------------------------------------------------
@pytest.mark.parametrize(("variant", "refused"), [
    (_third_separator_in_mr1, [(DUPLICATE, MISPLACED_SEQ + 1)]),
    (_mr2_has_its_own, [(DUPLICATE, MISPLACED_SEQ)]),
    (_duplicate_in_mr3, [(DUPLICATE, MISPLACED_SEQ + 1)]),
    (_error_value, [(DUPLICATE, MISPLACED_SEQ), ("tpm.separator.error", MISPLACED_SEQ)]),
], ids=["third-in-mr1", "mr2-has-its-own", "duplicate-in-mr3", "error-value"])
def test_the_quirk_accepts_no_other_separator_anomaly(variant: object, refused: list[object]
                                                      ) -> None:
    data = variant()  # type: ignore[operator]
    named = _claims(data, QUIRK)
    assert [(r, s) for r, s, _ in _fatal(named)] == refused
    for _, _, detail in _fatal(named):
        assert QUIRK not in detail  # not the defect's shape: the plain refusal
    third = variant is _third_separator_in_mr1
    assert [q.seq for q in named.quirks_applied if q.quirk == QUIRK] == (
        [MISPLACED_SEQ] if third else [])
    with pytest.raises(PolicyError, match="fails closed"):
        derive_policy([golden_from_log(data, "variant", allowed_quirks=[QUIRK])])


# --- lint and the CLI ----------------------------------------------------------------------
def test_lint_warns_for_each_accepted_quirk_naming_its_layer() -> None:
    golden = golden_from_log(_log("C04"), "C04", allowed_quirks=[QUIRK])
    found = [f for f in findings(derive_policy([golden]).policy)
             if f.field == "spec.evidence.allowedQuirks"]
    assert [f.severity for f in found] == ["warning"]
    assert QUIRK in found[0].message and "structure layer" in found[0].message


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True,
                          text=True, cwd=REPO, check=False)


def test_from_log_refuses_without_the_quirk_and_writes_it_with(tmp_path: Path) -> None:
    log = str(CORPUS / corpus_manifest()["C04"])
    refused = _cli("policy", "from-log", log)
    assert refused.returncode != 0 and HINT in refused.stderr, refused.stderr
    derived = _cli("policy", "from-log", "--allow-quirk", QUIRK, log)
    assert derived.returncode == 0, derived.stderr
    assert "allowedQuirks:" in derived.stdout and DEFECT in derived.stdout
    policy = tmp_path / "tdx.yaml"
    policy.write_text(derived.stdout)
    checked = _cli("policy", "check", str(policy), log, "--json")  # reads with the policy's
    outcomes = {r["rule"]: r["outcome"] for r in json.loads(checked.stdout)["results"]}
    assert outcomes[EVIDENCE_ANOMALIES] == "pass", checked.stdout


def test_log_claims_reads_with_the_quirk_only_when_asked() -> None:
    log = str(CORPUS / corpus_manifest()["C04"])
    refused = _cli("log", "claims", "--ccel", "--json", log)
    assert refused.returncode == 3, refused.stderr
    read = _cli("log", "claims", "--ccel", "--json", "--allow-quirk", QUIRK, log)
    assert read.returncode == 0, read.stderr
    assert {"quirk": QUIRK, "seq": MISPLACED_SEQ} in json.loads(read.stdout)["quirks_applied"]


def test_an_unknown_quirk_id_is_refused() -> None:
    with pytest.raises(Unsupported, match="unknown quirk"):
        extract_claims(parse_event_log(_log("C04")).events, allowed_quirks=["tdx-dupe"])
