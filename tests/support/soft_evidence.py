"""Evidence records signed by a software AK, for tests that need verdicts reproducible byte for
byte (a swtpm has a fresh EK and AK, hence fresh digests, on every run).

The AK is a fixed P-256 key signing with deterministic ECDSA (RFC 6979); the quote is a real
``TPMS_ATTEST`` marshalled by tpm2-tss, so the verifier's core checks it exactly as it checks a
TPM's. Never a real host's key, and nothing here crosses a topic: anything that does uses swtpm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

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

from services.tpm.algorithms import alg_by_name
from services.tpm.errors import TpmError
from services.tpm.eventlog import parse_event_log
from services.tpm.keys import decode_public
from services.verifier.policy.derive import fully_quoted
from services.wire.banks import SYMBOL_OF_BANK

RECEIVED_AT_MS = 1_767_225_600_000
NONCE = hashlib.sha256(b"hostgate corpus verdicts").digest()

TEST_KEY = ec.derive_private_key(
    int.from_bytes(hashlib.sha256(b"hostgate corpus verdicts: test AK").digest(), "big"),
    ec.SECP256R1())
"""A software AK, fixed so that every run signs the same bytes (never a real host's key)."""


def ak_public() -> bytes:
    """The TPM2B_PUBLIC of :data:`TEST_KEY` as a restricted signing AK (ECDSA, SHA-256)."""
    numbers = TEST_KEY.public_key().public_numbers()
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


def quote(values: Mapping[str, Mapping[int, bytes]]) -> tuple[bytes, bytes]:
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
    r, s = decode_dss_signature(TEST_KEY.sign(
        body, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    signature = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    signature.signature.ecdsa.hash = TPM2_ALG.SHA256
    signature.signature.ecdsa.signatureR = r.to_bytes(32, "big")
    signature.signature.ecdsa.signatureS = s.to_bytes(32, "big")
    return body, bytes(signature.marshal())


def pcr_values(log_bytes: bytes, pcrs: range) -> dict[str, dict[int, bytes]]:
    """The values an honest TPM would report for ``pcrs`` after booting what the log says;
    a log that does not parse gets SHA-256 zeros (its verdict fails on the log itself)."""
    try:
        whole = fully_quoted(parse_event_log(log_bytes))
    except TpmError:
        whole = {"sha256": {pcr: bytes(32) for pcr in range(24)}}
    return {bank: {p: v for p, v in values.items() if p in pcrs}
            for bank, values in whole.items() if bank in SYMBOL_OF_BANK}


def collected(entry_id: str, log_bytes: bytes, pcrs: range, *,
              values: Mapping[str, Mapping[int, bytes]] | None = None) -> dict[str, Any]:
    """The ``hostgate.EvidenceCollected`` record intake would write for a host that booted
    ``log_bytes`` and quoted ``pcrs`` (or exactly ``values``) over :data:`NONCE`."""
    if values is None:
        values = pcr_values(log_bytes, pcrs)
    attest, signature = quote(values)
    ak_pub = ak_public()
    submitted = {
        "evidence_id": f"corpus-{entry_id}", "host_id": f"corpus-{entry_id}",
        "challenge_id": f"ch-{entry_id}", "nonce": NONCE,
        "quote_attest": attest, "quote_signature": signature,
        "pcr_values": [{"bank": SYMBOL_OF_BANK[b], "pcr": p, "value": v}
                       for b in sorted(values) for p, v in sorted(values[b].items())],
        "active_banks": [SYMBOL_OF_BANK[b] for b in sorted(values)],
        "boot_log": log_bytes, "ima_log": None, "agent_version": "corpus",
        "quoted_at": RECEIVED_AT_MS - 500, "sent_at": RECEIVED_AT_MS - 500,
    }
    return {
        "evidence": submitted,
        "evidence_digest": hashlib.sha256(b"corpus evidence " + entry_id.encode()
                                          + attest + log_bytes).digest(),
        "source": {"topic": "attest.evidence.v1", "partition": 0, "offset": 0},
        "ak_public": ak_pub, "ak_name": decode_public(ak_pub).name,
        "ek": {"ek_public": b"corpus-ek", "ek_cert_sha256": None, "manufacturer": None,
               "chain_verified": True},
        "previous_counters": None, "nonce_issued_at": RECEIVED_AT_MS - 1000,
        "received_at": RECEIVED_AT_MS,
    }
