"""The verifier's verdict bytes on every corpus boot log are exactly what they were.

Refactoring the evidence library, the wire contract or the policy rules must not change a
single verdict: every TCG boot log of ``../shared/corpus`` (real captures, synthetic fragments
and the ones malformed on purpose) is appraised as evidence under three policies (the one
derived from that log, the same policy with only PCRs 0-7 quoted, and the one derived from
another machine's log), and the SHA-256 of each ``hostgate.Verdict`` as the codec encodes it is
compared with ``fixtures/corpus_verdicts.json``, recorded before the one-shape redesign
(issue 15) from the code at ``c67e1a7``.

The quotes here are signed in software by a fixed P-256 test key with deterministic ECDSA
(RFC 6979; ``tests/support/soft_evidence.py``), which is what makes a verdict reproducible byte
for byte: a swtpm has a fresh EK and AK, hence fresh digests, on every run. Real swtpm quotes are appraised in
``test_verifier_core_swtpm.py`` and the security tests; what this test pins is the appraisal
of the logs themselves.

Record anew (only when a verdict is meant to change, and say why in the commit):
``.venv/bin/python -m tests.unit.test_corpus_verdicts_unchanged --record``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from services.errors import HostgateError
from services.runtime.codec import Codec
from services.tpm.errors import TpmError
from services.verifier.core import appraise
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy_in_force import PolicyInForce, load_in_force, published_record
from tests.conftest import corpus_path
from tests.support.soft_evidence import RECEIVED_AT_MS, collected

FIXTURE = Path(__file__).parent / "fixtures" / "corpus_verdicts.json"
CORPUS = corpus_path()
_CROSS_POLICY_LOG = "A40"
"""The other machine whose derived policy every log is also appraised under."""


def _boot_log_entries() -> list[dict[str, Any]]:
    manifest = CORPUS / "manifest.json"
    if not manifest.is_file():
        return []
    return [e for e in json.loads(manifest.read_text())["entries"]
            if not e["category"].startswith("ima")]


ENTRIES = _boot_log_entries()


@cache
def _log(entry_id: str) -> bytes:
    entry = next(e for e in ENTRIES if e["id"] == entry_id)
    return (CORPUS / entry["file"]).read_bytes()


@cache
def _derived(entry_id: str) -> PolicyInForce | None:
    """The policy ``policy from-log`` derives from this log alone (None if it derives none)."""
    try:
        golden = golden_from_log(_log(entry_id), entry_id)
        text = derive_policy([golden], policy_id=f"corpus-{entry_id}", version="1").text
    except (TpmError, HostgateError):  # a log that yields no policy: judged under the others
        return None
    record = published_record(text, version=1, published_at_ms=RECEIVED_AT_MS,
                              author="corpus-verdicts")
    return load_in_force(record)


@cache
def _codec() -> Codec:
    return Codec.load()


def verdict_digests(entry_id: str) -> dict[str, str]:
    """SHA-256 of each encoded verdict on ``entry_id``'s log, by case."""
    log = _log(entry_id)
    own, cross = _derived(entry_id), _derived(_CROSS_POLICY_LOG)
    cases = {
        "own_policy_all_pcrs": (own, range(24)),
        "own_policy_firmware_pcrs": (own, range(8)),
        "cross_policy_all_pcrs": (cross, range(24)),
    }
    out: dict[str, str] = {}
    for case, (policy, pcrs) in cases.items():
        verdict = appraise(collected(entry_id, log, pcrs), policy)
        encoded = _codec().encode("hostgate.Verdict", verdict.record)
        out[case] = hashlib.sha256(encoded).hexdigest()
    return out


def _recorded() -> dict[str, dict[str, str]]:
    return dict(json.loads(FIXTURE.read_text())["verdicts"])


def test_the_corpus_is_there_and_every_boot_log_was_recorded() -> None:
    if not ENTRIES:
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    assert sorted(e["id"] for e in ENTRIES) == sorted(_recorded())


@pytest.mark.parametrize("entry_id", [e["id"] for e in ENTRIES] or ["corpus-missing"])
def test_verdict_bytes_are_unchanged(entry_id: str) -> None:
    if entry_id == "corpus-missing":
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    assert verdict_digests(entry_id) == _recorded()[entry_id]


def _record() -> None:
    verdicts = {e["id"]: verdict_digests(e["id"]) for e in ENTRIES}
    passed = sum(1 for e in ENTRIES
                 if appraise(collected(e["id"], _log(e["id"]), range(24)),
                             _derived(e["id"])).passed)
    FIXTURE.write_text(json.dumps({
        "about": "SHA-256 of hostgate.Verdict bytes per corpus boot log; see "
                 "tests/unit/test_corpus_verdicts_unchanged.py",
        "passing_under_own_policy": passed,
        "verdicts": verdicts}, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(verdicts)} logs ({passed} pass their own policy) in {FIXTURE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(__doc__)
    _record()
