"""Verifier speed-ups must not change a result: the memo, claim provenance, the JSON encoder.

Real data only: the corpus' real TCG logs (Linux and Windows) and simulator evidence quoted by
real swtpms. Each check compares the optimised path with the plain one in the same process:
the verifier's memo (:class:`~services.verifier.memo.VerifierMemo`, cold and warm) vs no memo,
claim provenance vs an event index that decodes every event again, the per-class JSON encoder vs
straightforward reflection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from services.tpm import parse_event_log, sipa, verify_replay
from services.tpm.claims import Claims, extract_claims
from services.tpm.errors import MalformedEventData
from services.tpm.memo import Memo
from services.tpm.uefi import decode_signature_lists
from services.verifier.claims_json import claims_json
from services.verifier.core import appraise
from services.verifier.memo import VerifierMemo
from services.verifier.policy.derive import Golden, fully_quoted, golden_from_log
from services.verifier.policy.evaluate import evaluate, prepare, subject
from services.verifier.policy.events import EventIndex
from services.verifier.policy.loader import load_policy
from tests.unit.policy_helpers import CORPUS, manifest, real_log_ids, rule_policy_text

#: Asks every folded-claim lookup (SecureBoot variable, PCR 7 variables, Windows flags, kernel
#: command lines), with wants that fail on some logs so failed rules name their events.
STRICT = rule_policy_text(
    "  secureBoot:\n    enabled: true\n    pcr7Variables: [SecureBoot, PK]\n"
    "  debug:\n    bootDebugging: false\n    kernelDebugger: false\n    hypervisorDebug: false\n"
    "    testSigning: true\n    flightSigning: false\n    safeMode: false\n    winPE: false\n"
    "  codeIntegrity:\n    enabled: false\n    dep: false\n"
    "  bootChain:\n    kernelCmdline:\n      forbidden: [quiet, ro]\n"
)


def _read(entry_id: str) -> Golden:
    entry = manifest()[entry_id]
    path: Path = CORPUS / entry["file"]
    return golden_from_log(path.read_bytes(), entry_id)


def _read_with(entry_id: str, memo: Memo) -> Golden:
    """:func:`golden_from_log` of a corpus log, every step given ``memo``."""
    data = (CORPUS / manifest()[entry_id]["file"]).read_bytes()
    log = parse_event_log(data, memo=memo)
    first = log.events[0]
    registers = "ccel" if first.pcr == 1 and first.event_type == 3 else "tpm"
    result = verify_replay(log, fully_quoted(log), memo=memo)
    claims = extract_claims(result, measurement_registers=registers, memo=memo)
    return Golden(source=entry_id, log=log, claims=claims, events=result.verified_events)


def _lookups(index: EventIndex, claims: Claims) -> list[object]:
    """Every answer the folded-claim lookups give for ``claims``."""
    out: list[object] = [index.secure_boot_event(), index.pcr7_variables()]
    for attr in sipa.FLAG_ATTRIBUTES:
        for value in (True, False):
            out.append((attr, value, index.windows_flag_event(attr, value)))
    out.append(index.windows_flag_event("dep_policy", (0,)))  # a non-flag attribute
    out.extend(index.cmdline_event(line) for line in claims.kernel_cmdlines)
    return out


def _reference_json(value: Any) -> Any:
    """The straightforward reflection encoder the fast one must equal."""
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _reference_json(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.name != "decoded"}
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (isinstance(k, str), k))
        return {str(k): _reference_json(value[k]) for k in keys}
    if isinstance(value, (tuple, list)):
        return [_reference_json(v) for v in value]
    return value


_SHARED_MEMO = VerifierMemo()
"""One memo for every corpus case, as a verifier's: each log is read with all earlier ones in it."""


@pytest.mark.parametrize("entry_id", real_log_ids())
def test_memo_claims_and_verdicts_equal_no_memo_on_corpus(entry_id: str) -> None:
    if entry_id not in manifest():
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    prepared = prepare(load_policy(STRICT))
    plain = _read(entry_id)  # golden_from_log: no memo
    plain_verdict = evaluate(prepared, plain.subject()).canonical_json()
    plain_text = claims_json(plain.claims)
    for memo in (VerifierMemo(), _SHARED_MEMO):
        first = _read_with(entry_id, memo)  # fills the memo
        again = _read_with(entry_id, memo)  # served from it
        for g in (first, again):
            assert g.log == plain.log
            assert g.events == plain.events
            assert g.claims.to_json_dict() == plain.claims.to_json_dict()
            assert g.claims.decoded == plain.claims.decoded
            assert evaluate(prepared, g.subject()).canonical_json() == plain_verdict
            assert claims_json(g.claims, memo) == plain_text


@pytest.mark.parametrize("entry_id", real_log_ids())
def test_claim_provenance_answers_like_decoding_again(entry_id: str) -> None:
    if entry_id not in manifest():
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    g = _read(entry_id)
    with_provenance = EventIndex(g.events, g.claims.decoded)
    decoding_again = EventIndex(g.events)
    assert _lookups(with_provenance, g.claims) == _lookups(decoding_again, g.claims)


def test_provenance_is_used_for_the_events_it_came_from() -> None:
    g = _read("W04")  # a real Windows WBCL: SIPA blocks, SecureBoot variable
    assert g.claims.windows is not None
    kinds = {("v" if d.variable else "") + ("i" if d.ipl else "") +
             ("w" if d.windows_flags is not None else "") for d in g.claims.decoded.values()}
    assert {"v", "w"} <= kinds
    index = EventIndex(g.events, g.claims.decoded)
    assert index.windows_flag_event("test_signing", False) is not None
    assert index.secure_boot_event() is not None


def test_provenance_of_another_log_is_ignored() -> None:
    # claims of one log with the events of another: seqs collide, events differ
    a, b = _read("W04"), _read("W03")
    mixed = EventIndex(a.events, b.claims.decoded)
    assert _lookups(mixed, a.claims) == _lookups(EventIndex(a.events), a.claims)
    linux_a, linux_b = _read("A36"), _read("A31")  # Secure Boot on vs off
    mixed = EventIndex(linux_a.events, linux_b.claims.decoded)
    assert mixed.secure_boot_event() == EventIndex(linux_a.events).secure_boot_event()
    assert mixed.secure_boot_event() != EventIndex(linux_b.events).secure_boot_event()


@pytest.mark.parametrize("entry_id", ["W04", "A39", "A36"])
def test_fast_json_equals_reflection(entry_id: str) -> None:
    claims = _read(entry_id).claims
    doc = claims.to_json_dict()
    expected = _reference_json(claims)
    expected["failed_closed"] = claims.failed_closed
    assert doc == expected
    assert "decoded" not in doc
    assert list(doc) == list(expected)  # field order kept


def test_decoder_failures_keep_their_own_offsets_and_are_never_stored() -> None:
    # an EFI_SIGNATURE_LIST whose SignatureListSize overruns the data, at two log offsets
    bad = bytes(16) + (100).to_bytes(4, "little") + bytes(8)
    memo = VerifierMemo()
    offsets = []
    for base in (1000, 5000):
        with pytest.raises(MalformedEventData) as info:
            decode_signature_lists(bad, base=base, seq=3, memo=memo)
        offsets.append(info.value.offset)
    assert offsets == [1016, 5016]
    assert all(len(table) == 0 for table in memo.tables().values())


@pytest.mark.swtpm
def test_memo_appraisal_equals_no_memo_on_simulator_evidence(tmp_path: Path) -> None:
    from tests.unit.verifier_support import collected_for, sim_fleet

    with sim_fleet(tmp_path, clean_per_image=1) as sim:
        records = [collected_for(h, offset=i) for i, h in enumerate(sim.fleet)]
        strict = load_policy(STRICT)
        plain = [appraise(c, sim.policy).record for c in records]
        memo = VerifierMemo()
        for _ in range(2):  # a cold memo, then a warm one
            assert [appraise(c, sim.policy, memo=memo).record for c in records] == plain
        assert len(memo.readings) > 0 and len(memo.tpm_publics) > 0
        assert len(memo.crypto_keys) > 0 and len(memo.entry_json) > 0
        assert any(r["result"] == "FAIL" for r in plain)
        assert any(r["result"] == "PASS" for r in plain)
        # the strict policy's lookups on the same evidence, with and without provenance
        prepared = prepare(strict)
        windows = [h for h in sim.fleet if h.image.startswith("windows")]
        assert windows, "the simulator has a Windows image"
        for h in windows:
            g = golden_from_log(h.event_log, h.host_id)
            s_prov = g.subject()
            s_plain = subject(dataclasses.replace(g.claims, decoded={}), g.events,
                              active_banks=g.log.banks)
            assert (evaluate(prepared, s_prov).canonical_json()
                    == evaluate(prepared, s_plain).canonical_json())
