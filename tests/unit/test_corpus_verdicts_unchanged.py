"""The verifier's verdict bytes on every corpus boot log are exactly what they were.

Refactoring the evidence library, the wire contract or the policy rules must not change a
single verdict: every TCG boot log of ``../shared/corpus`` (real captures, synthetic fragments
and the ones malformed on purpose) is appraised as evidence under three policies (the one
derived from that log, the same policy with only PCRs 0-7 quoted, and the one derived from
another machine's log), and the SHA-256 of each ``hostgate.Verdict`` as the codec encodes it is
compared with ``fixtures/corpus_verdicts.json``, recorded before the one-shape redesign
(issue 15) from the code at ``c67e1a7``.

The quotes here are signed in software by a fixed P-256 test key with deterministic ECDSA
(RFC 6979), which is what makes a verdict reproducible byte for byte: a swtpm has a fresh EK
and AK, hence fresh digests, on every run. Real swtpm quotes are appraised in
``test_verifier_core_swtpm.py`` and the security tests; what this test pins is the appraisal
of the logs themselves.

Record anew (only when a verdict is meant to change, and say why in the commit):
``.venv/bin/python -m tests.unit.test_corpus_verdicts_unchanged --record``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_ATTEST,
    TPM2B_DATA,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_PCR_SELECTION,
    TPMS_QUOTE_INFO,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
)

from services.errors import HostgateError
from services.runtime.codec import Codec
from services.tpm.algorithms import alg_by_name
from services.tpm.errors import TpmError
from services.tpm.eventlog import parse_event_log
from services.tpm.keys import decode_public
from services.verifier.core import BANK_SYMBOLS, appraise
from services.verifier.policy.derive import derive_policy, fully_quoted, golden_from_log
from services.verifier.policy_in_force import PolicyInForce, load_in_force, published_record
from tests.conftest import corpus_path

FIXTURE = Path(__file__).parent / "fixtures" / "corpus_verdicts.json"
CORPUS = corpus_path()
RECEIVED_AT_MS = 1_767_225_600_000
NONCE = hashlib.sha256(b"hostgate corpus verdicts").digest()
_TEST_KEY = ec.derive_private_key(
    int.from_bytes(hashlib.sha256(b"hostgate corpus verdicts: test AK").digest(), "big"),
    ec.SECP256R1())
"""A software AK, fixed so that every run signs the same bytes (never a real host's key)."""
_SYMBOL = {name: symbol for symbol, name in BANK_SYMBOLS.items()}
_CROSS_POLICY_LOG = "A40"
"""The other machine whose derived policy every log is also appraised under."""


def _boot_log_entries() -> list[dict[str, Any]]:
    manifest = CORPUS / "manifest.json"
    if not manifest.is_file():
        return []
    return [e for e in json.loads(manifest.read_text())["entries"]
            if not e["category"].startswith("ima")]


ENTRIES = _boot_log_entries()


def _ak_public() -> bytes:
    numbers = _TEST_KEY.public_key().public_numbers()
    public = TPMT_PUBLIC(
        type=TPM2_ALG.ECC, nameAlg=TPM2_ALG.SHA256,
        objectAttributes=(TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                          | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
                          | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT))
    detail = public.parameters.eccDetail
    detail.symmetric.algorithm = TPM2_ALG.NULL
    detail.scheme.scheme = TPM2_ALG.ECDSA
    detail.scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
    detail.curveID = TPM2_ECC.NIST_P256
    detail.kdf.scheme = TPM2_ALG.NULL
    public.unique.ecc.x = numbers.x.to_bytes(32, "big")
    public.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return bytes(TPM2B_PUBLIC(publicArea=public).marshal())


def _quote(values: Mapping[str, Mapping[int, bytes]]) -> tuple[bytes, bytes]:
    """A TPMS_ATTEST quoting every PCR in ``values`` and its deterministic ECDSA signature."""
    selections = []
    digest = hashlib.sha256()
    for bank in sorted(values):
        alg = alg_by_name(bank)
        assert alg is not None
        bitmap = bytearray(3)
        for pcr in sorted(values[bank]):
            bitmap[pcr // 8] |= 1 << (pcr % 8)
            digest.update(values[bank][pcr])
        selections.append(TPMS_PCR_SELECTION(hash=alg.alg_id, sizeofSelect=3,
                                             pcrSelect=bytes(bitmap)))
    attest = TPMS_ATTEST(
        magic=0xFF544347, type=TPM2_ST.ATTEST_QUOTE,
        extraData=TPM2B_DATA(NONCE),
        clockInfo=TPMS_CLOCK_INFO(clock=1_000_000, resetCount=3, restartCount=0, safe=1),
        firmwareVersion=0x0001000200030004)
    attest.attested.quote = TPMS_QUOTE_INFO(
        pcrSelect=TPML_PCR_SELECTION(selections), pcrDigest=digest.digest())
    body = bytes(attest.marshal())
    assert bytes(TPM2B_ATTEST(body).marshal())[2:] == body
    r, s = decode_dss_signature(_TEST_KEY.sign(
        body, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    signature = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    signature.signature.ecdsa.hash = TPM2_ALG.SHA256
    signature.signature.ecdsa.signatureR = r.to_bytes(32, "big")
    signature.signature.ecdsa.signatureS = s.to_bytes(32, "big")
    return body, bytes(signature.marshal())


def _pcr_values(log_bytes: bytes, pcrs: range) -> dict[str, dict[int, bytes]]:
    """The values an honest TPM would report for ``pcrs`` after booting what the log says;
    a log that does not parse gets SHA-256 zeros (its verdict fails on the log itself)."""
    try:
        whole = fully_quoted(parse_event_log(log_bytes))
    except TpmError:
        whole = {"sha256": {pcr: bytes(32) for pcr in range(24)}}
    return {bank: {p: v for p, v in values.items() if p in pcrs}
            for bank, values in whole.items() if bank in _SYMBOL}


def _collected(entry_id: str, log_bytes: bytes, pcrs: range) -> dict[str, Any]:
    values = _pcr_values(log_bytes, pcrs)
    attest, signature = _quote(values)
    ak_public = _ak_public()
    submitted = {
        "evidence_id": f"corpus-{entry_id}", "host_id": f"corpus-{entry_id}",
        "challenge_id": f"ch-{entry_id}", "nonce": NONCE,
        "quote_attest": attest, "quote_signature": signature,
        "pcr_values": [{"bank": _SYMBOL[b], "pcr": p, "value": v}
                       for b in sorted(values) for p, v in sorted(values[b].items())],
        "active_banks": [_SYMBOL[b] for b in sorted(values)],
        "boot_log": log_bytes, "ima_log": None, "agent_version": "corpus",
        "quoted_at": RECEIVED_AT_MS - 500, "sent_at": RECEIVED_AT_MS - 500,
    }
    return {
        "evidence": submitted,
        "evidence_digest": hashlib.sha256(b"corpus evidence " + entry_id.encode()
                                          + attest + log_bytes).digest(),
        "source": {"topic": "attest.evidence.v1", "partition": 0, "offset": 0},
        "ak_public": ak_public, "ak_name": decode_public(ak_public).name,
        "ek": {"ek_public": b"corpus-ek", "ek_cert_sha256": None, "manufacturer": None,
               "chain_verified": True},
        "previous_counters": None, "nonce_issued_at": RECEIVED_AT_MS - 1000,
        "received_at": RECEIVED_AT_MS,
    }


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
        verdict = appraise(_collected(entry_id, log, pcrs), policy)
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
                 if appraise(_collected(e["id"], _log(e["id"]), range(24)),
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
