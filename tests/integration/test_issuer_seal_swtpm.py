"""The issuer's sealed credential against real swtpm instances (no mocks).

A clean host boots (synthetic measured boot extended into swtpm), quotes, and the quote is
verified; the issuer core turns a passing verdict carrying the attested PCRs and the host's EK
into a ``CredentialIssued``. The host's TPM imports the blob under its EK, satisfies PolicyPCR
with its current PCRs, unseals the content key and decrypts its private key, which must match
the certificate. Another TPM, or the same TPM after one more extend, cannot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from tpm2_pytss.TSS2_Exception import TSS2_Exception

from services.agent.measured_boot import synthesise
from services.agent.swtpm import LocalCA, SwtpmInstance, clone_state, provision
from services.agent.tpm import AgentTpm
from services.issuer.config import IssuerConfig
from services.issuer.core import apply_verdict
from services.issuer.sealing import open_credential
from services.tpm.credential import SealedCredential, pcr_selection
from services.tpm.eventlog_builder import HASH_ALGS
from services.tpm.quote import verify_quote
from tests.unit.issuer_support import pem_ca, verdict

pytestmark = pytest.mark.swtpm


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("issuer-identities")
    ca = LocalCA.create(base / "ek-ca")
    return provision(base / "a", ca), provision(base / "b", ca)


def _tpm(template: Path, where: Path) -> Iterator[AgentTpm]:
    sw = SwtpmInstance(clone_state(template, where)).start()
    tpm = AgentTpm(sw.tcti)
    try:
        yield tpm
    finally:
        tpm.close()
        sw.stop()


@pytest.fixture
def tpm_a(identities: tuple[Path, Path], tmp_path: Path) -> Iterator[AgentTpm]:
    yield from _tpm(identities[0], tmp_path / "a")


@pytest.fixture
def tpm_b(identities: tuple[Path, Path], tmp_path: Path) -> Iterator[AgentTpm]:
    yield from _tpm(identities[1], tmp_path / "b")


def _attest_clean_boot(tpm: AgentTpm) -> Mapping[str, Mapping[int, bytes]]:
    for event in synthesise("ubuntu-24.04-shim", 1).events:
        if event.measured:
            tpm.extend(event.pcr, {HASH_ALGS[a][0]: d for a, d in event.digests})
    tpm.create_ak("ecc")
    nonce = os.urandom(32)
    quote = tpm.quote(nonce, range(10))
    verified = verify_quote(tpm.load_ak().public, quote.attest, quote.signature, nonce=nonce,
                            pcr_values=quote.pcr_values)
    return verified.pcr_values


def _sealed(cred: Mapping[str, Any]) -> SealedCredential:
    sel = pcr_selection({e["bank"].lower(): e["pcrs"] for e in cred["pcr_selection"]})
    s = cred["sealed"]
    return SealedCredential(s["public"], s["duplicate"], s["encrypted_seed"], sel, b"")


def test_credential_opens_only_in_the_attested_tpm_and_state(tpm_a: AgentTpm,
                                                             tpm_b: AgentTpm) -> None:
    pcrs = _attest_clean_boot(tpm_a)
    record = verdict("v-swtpm-1", ek_public=tpm_a.ek().public, pcrs=dict(pcrs["sha256"]))
    ca, _ = pem_ca()
    cfg = IssuerConfig(ca=ca)
    out = apply_verdict(record, None, cfg)
    cred = out.credential
    assert cred is not None
    cert = x509.load_der_x509_certificate(cred["certificate"])
    sealed = _sealed(cred)

    content_key = tpm_a.unseal(sealed)
    host_key = open_credential(content_key, cred["sealed"]["encrypted_payload"],
                               credential_id=cred["credential_id"],
                               certificate_der=cred["certificate"])
    assert host_key.public_key() == cert.public_key()
    cert.verify_directly_issued_by(ca.certificate)

    with pytest.raises(TSS2_Exception):  # another TPM: the seed is encrypted to A's EK
        tpm_b.unseal(sealed)
    tpm_a.extend(7, {"sha1": b"\x01" * 20, "sha256": b"\x01" * 32})
    with pytest.raises(TSS2_Exception):  # same TPM, PCR 7 moved: PolicyPCR fails
        tpm_a.unseal(sealed)
    assert tpm_a.flush_transients() == 0
    assert tpm_b.flush_transients() == 0
