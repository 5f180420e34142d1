"""Verifier speed-ups must not change a result: caches, claim provenance, the JSON encoder.

Real data only: the corpus' real TCG logs (Linux and Windows) and simulator evidence quoted by
real swtpms. Each check compares the optimised path with the plain one in the same process:
caches on vs :func:`~services.tpm._cache.caching_disabled`, claim provenance vs an event index
that decodes every event again, the per-class JSON encoder vs straightforward reflection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from services.tpm import sipa
from services.tpm._cache import BoundedCache, caching_disabled, clear_all
from services.tpm.claims import Claims
from services.tpm.errors import MalformedEventData
from services.tpm.uefi import decode_signature_lists
from services.verifier.core import appraise
from services.verifier.policy.derive import Golden, golden_from_log
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


@pytest.mark.parametrize("entry_id", real_log_ids())
def test_cached_claims_and_verdicts_equal_uncached_on_corpus(entry_id: str) -> None:
    if entry_id not in manifest():
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    prepared = prepare(load_policy(STRICT))
    with caching_disabled():
        plain = _read(entry_id)
        plain_verdict = evaluate(prepared, plain.subject()).canonical_json()
    clear_all()
    first = _read(entry_id)  # fills the caches
    cached = _read(entry_id)  # served from them
    for g in (first, cached):
        assert g.claims.to_json_dict() == plain.claims.to_json_dict()
        assert evaluate(prepared, g.subject()).canonical_json() == plain_verdict


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


def test_bounded_cache_evicts_and_never_stores_failures() -> None:
    cache: BoundedCache[int, int] = BoundedCache("test", 3)
    for i in range(5):
        assert cache.get_or_compute(i, lambda i=i: i * 10) == i * 10
    assert len(cache) == 3
    assert cache.get_or_compute(4, lambda: -1) == 40  # still there (a hit)
    assert cache.get_or_compute(0, lambda: -1) == -1  # evicted, computed afresh

    def boom() -> int:
        raise ValueError("no")

    with pytest.raises(ValueError):
        cache.get_or_compute(99, boom)
    assert cache.get_or_compute(99, lambda: 7) == 7


def test_decoder_failures_keep_their_own_offsets() -> None:
    # an EFI_SIGNATURE_LIST whose SignatureListSize overruns the data, at two log offsets
    bad = bytes(16) + (100).to_bytes(4, "little") + bytes(8)
    offsets = []
    for base in (1000, 5000):
        with pytest.raises(MalformedEventData) as info:
            decode_signature_lists(bad, base=base, seq=3)
        offsets.append(info.value.offset)
    assert offsets == [1016, 5016]


@pytest.mark.swtpm
def test_cached_appraisal_equals_uncached_on_simulator_evidence(tmp_path: Path) -> None:
    from tests.unit.verifier_support import collected_for, sim_fleet

    with sim_fleet(tmp_path, clean_per_image=1) as sim:
        records = [collected_for(h, offset=i) for i, h in enumerate(sim.fleet)]
        strict = load_policy(STRICT)
        with caching_disabled():
            plain = [appraise(c, sim.policy).record for c in records]
        clear_all()
        for _ in range(2):  # cold caches, then warm ones
            assert [appraise(c, sim.policy).record for c in records] == plain
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
