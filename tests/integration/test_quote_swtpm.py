"""Quotes, certifications and EK certificates from a real TPM 2.0 (swtpm via tpm2-pytss).

Uses ``services.agent.swtpm`` (private LocalCA, provisioning, processes stopped
by PID). Each test gets a fresh swtpm on a copy of one provisioned state; every transient
object is flushed (libtpms has 3 slots and no resource manager). ECC P-256 AKs except one
RSA-2048 test.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TSS2_LOG", "all+none")  # esys logs expected NV misses otherwise

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2B_PUBLIC,
    TPMA_OBJECT,
    TPML_PCR_SELECTION,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
)
from tpm2_pytss.constants import TPM2_CAP, TPM2_HT
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA
from tpm2_pytss.utils import NVReadEK, create_ek_template

from services.agent.swtpm import LocalCA, SwtpmInstance, clone_state, provision
from services.tpm import ekcert, keys, quote
from services.tpm.errors import (
    CertificateChainError,
    InvalidQuoteSignature,
    KeyAttributeError,
    NonceMismatch,
    PcrDigestMismatch,
)

pytestmark = pytest.mark.swtpm

AK_ATTRS = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)
SELECTION = "sha256:0,1,2,3,4,5,6,7+sha1:0,1,2,3,4,5,6,7"
EK_RSA_HANDLE = 0x81010001


def _now_for(cert_der: bytes) -> dt.datetime:
    """A validation time inside the certificate's validity (swtpm issues it at provisioning);
    taken from the input, as the verifier does, never from the clock."""
    return ekcert.load_certificate(cert_der).not_valid_before_utc + dt.timedelta(days=1)


@dataclass(frozen=True)
class Provisioned:
    ca: LocalCA
    state: Path


@pytest.fixture(scope="session")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    base = tmp_path_factory.mktemp("quote-swtpm")
    ca = LocalCA.create(base / "ca")
    return Provisioned(ca, provision(base / "state", ca))


@pytest.fixture(scope="session")
def other_ca_state(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    base = tmp_path_factory.mktemp("quote-swtpm-other")
    ca = LocalCA.create(base / "ca")
    return Provisioned(ca, provision(base / "state", ca))


def _flush_transients(ectx: ESAPI) -> None:
    more, data = True, None
    handles: list[int] = []
    while more:
        more, data = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HT.TRANSIENT << 24, 16)
        handles.extend(int(h) for h in data.data.handles)
        more = bool(more) and len(handles) < 64
        if more:
            break
    for h in handles:
        ectx.flush_context(ectx.tr_from_tpmpublic(h))


def _run(state: Path, tmp: Path) -> Iterator[ESAPI]:
    inst = SwtpmInstance(clone_state(state, tmp)).start()
    try:
        ectx = ESAPI(inst.tcti)
        try:
            yield ectx
        finally:
            _flush_transients(ectx)
            ectx.close()
    finally:
        inst.stop()
        assert inst.pid is None


@pytest.fixture
def tpm(provisioned: Provisioned, tmp_path: Path) -> Iterator[ESAPI]:
    yield from _run(provisioned.state, tmp_path / "tpm")


def _ak(ectx: ESAPI, spec: str, attrs: TPMA_OBJECT = AK_ATTRS) -> tuple[ESYS_TR, bytes]:
    tmpl = TPM2B_PUBLIC(TPMT_PUBLIC.parse(spec, objectAttributes=attrs))
    handle, pub, *_ = ectx.create_primary(None, tmpl, ESYS_TR.ENDORSEMENT)
    return handle, pub.marshal()


def _extend(ectx: ESAPI, pcr: int, seed: bytes) -> None:
    import hashlib

    ectx.pcr_extend(
        getattr(ESYS_TR, f"PCR{pcr}"),
        TPML_DIGEST_VALUES(
            [
                TPMT_HA(hashAlg=TPM2_ALG.SHA1, digest=TPMU_HA(sha1=hashlib.sha1(seed).digest())),
                TPMT_HA(
                    hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=hashlib.sha256(seed).digest())
                ),
            ]
        ),
    )


def _read_pcrs(ectx: ESAPI) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    for bank in ("sha1", "sha256"):
        _, _sel, digests = ectx.pcr_read(f"{bank}:0,1,2,3,4,5,6,7")
        out[bank] = {i: bytes(digests[i]) for i in range(8)}
    return out


def _quote(ectx: ESAPI, ak: ESYS_TR, nonce: bytes) -> tuple[bytes, bytes]:
    attest, sig = ectx.quote(
        ak, TPML_PCR_SELECTION.parse(SELECTION), nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
    )
    return bytes(attest), sig.marshal()


@pytest.mark.parametrize("spec", ["ecc256:ecdsa-sha256:null", "rsa2048:rsassa-sha256:null"])
def test_swtpm_quote_verifies(tpm: ESAPI, spec: str) -> None:
    _extend(tpm, 4, b"shim")
    _extend(tpm, 7, b"secureboot")
    ak, ak_pub = _ak(tpm, spec)
    nonce = secrets.token_bytes(32)
    attest, sig = _quote(tpm, ak, nonce)
    pcrs = _read_pcrs(tpm)
    vq = quote.verify_quote(ak_pub, attest, sig, nonce=nonce, pcr_values=pcrs)
    assert vq.selection == (("sha256", tuple(range(8))), ("sha1", tuple(range(8))))
    assert vq.pcr_values == pcrs and vq.hash_alg == "sha256"
    assert vq.clock_info.safe and vq.clock_info.reset_count >= 0
    # The AK's qualified name, as the TPM computes it, is the quote's qualifiedSigner.
    _, name, qn = tpm.read_public(ak)
    assert bytes(name) == vq.ak_name
    assert bytes(qn) == vq.qualified_signer
    pub = keys.decode_public(ak_pub)
    assert keys.qualified_name(keys.TPM_RH_ENDORSEMENT, pub.name, "sha256") == vq.qualified_signer


def test_swtpm_quote_failures_are_distinct(tpm: ESAPI) -> None:
    ak, ak_pub = _ak(tpm, "ecc256:ecdsa-sha256:null")
    other, other_pub = _ak(tpm, "ecc256:ecdsa-sha256:null", AK_ATTRS | TPMA_OBJECT.NODA)
    nonce = secrets.token_bytes(32)
    attest, sig = _quote(tpm, ak, nonce)
    pcrs = _read_pcrs(tpm)
    with pytest.raises(NonceMismatch):
        quote.verify_quote(ak_pub, attest, sig, nonce=secrets.token_bytes(32), pcr_values=pcrs)
    changed = {b: dict(v) for b, v in pcrs.items()}
    changed["sha256"][3] = b"\x01" * 32
    with pytest.raises(PcrDigestMismatch):
        quote.verify_quote(ak_pub, attest, sig, nonce=nonce, pcr_values=changed)
    tampered = bytearray(attest)
    tampered[40] ^= 0x01
    with pytest.raises(InvalidQuoteSignature):
        quote.verify_quote(ak_pub, bytes(tampered), sig, nonce=nonce, pcr_values=pcrs)
    with pytest.raises(InvalidQuoteSignature):
        quote.verify_quote(other_pub, attest, sig, nonce=nonce, pcr_values=pcrs)
    # A PCR extended after the quote: the old quote no longer matches the new values.
    _extend(tpm, 7, b"later")
    with pytest.raises(PcrDigestMismatch):
        quote.verify_quote(ak_pub, attest, sig, nonce=nonce, pcr_values=_read_pcrs(tpm))
    tpm.flush_context(other)


def test_swtpm_unrestricted_ak_fails_attribute_check(tpm: ESAPI) -> None:
    attrs = AK_ATTRS & ~TPMA_OBJECT.RESTRICTED
    ak, ak_pub = _ak(tpm, "ecc256:ecdsa-sha256:null", attrs)
    nonce = secrets.token_bytes(16)
    attest, sig = _quote(tpm, ak, nonce)
    with pytest.raises(KeyAttributeError, match="RESTRICTED"):
        quote.verify_quote(ak_pub, attest, sig, nonce=nonce, pcr_values=_read_pcrs(tpm))


def test_swtpm_certify_binds_a_key_to_the_ak(tpm: ESAPI) -> None:
    ak, ak_pub = _ak(tpm, "ecc256:ecdsa-sha256:null")
    srk_tmpl = TPM2B_PUBLIC(
        TPMT_PUBLIC.parse(
            "ecc256:null:aes128cfb",
            objectAttributes=TPMA_OBJECT.RESTRICTED
            | TPMA_OBJECT.DECRYPT
            | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT
            | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH
            | TPMA_OBJECT.NODA,
        )
    )
    srk, srk_pub, *_ = tpm.create_primary(None, srk_tmpl, ESYS_TR.OWNER)
    nonce = secrets.token_bytes(20)
    attest, sig = tpm.certify(srk, ak, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    vc = quote.verify_certify(
        ak_pub, bytes(attest), sig.marshal(), nonce=nonce, certified_public=srk_pub.marshal()
    )
    assert keys.EK_REQUIRED & ~keys.ObjectAttr.DECRYPT in vc.certified.attributes
    _, _, srk_qn = tpm.read_public(srk)
    assert vc.certified_qualified_name == bytes(srk_qn)
    with pytest.raises(quote.CertifiedNameMismatch):
        quote.verify_certify(
            ak_pub, bytes(attest), sig.marshal(), nonce=nonce, certified_public=ak_pub
        )
    with pytest.raises(NonceMismatch):
        quote.verify_certify(
            ak_pub,
            bytes(attest),
            sig.marshal(),
            nonce=b"x" * 20,
            certified_public=srk_pub.marshal(),
        )
    tpm.flush_context(srk)


def _ek(tpm: ESAPI) -> tuple[bytes, bytes]:
    cert_der, _ = create_ek_template("EK-RSA2048", NVReadEK(tpm))
    ek_pub, _, _ = tpm.read_public(tpm.tr_from_tpmpublic(EK_RSA_HANDLE))
    return bytes(cert_der), ek_pub.marshal()


def test_swtpm_ek_certificate_chains_to_local_ca(tpm: ESAPI, provisioned: Provisioned) -> None:
    cert_der, ek_pub = _ek(tpm)
    now = _now_for(cert_der)
    root = ekcert.load_pem_bundle(provisioned.ca.root_pem())
    issuer = ekcert.load_pem_bundle(provisioned.ca.issuer_pem())
    v = ekcert.verify_ek_certificate(
        cert_der, trusted=root, intermediates=issuer, now=now, ek_public=ek_pub
    )
    assert len(v.chain) == 3 and v.chain[-1] == root[0]
    assert v.has_ek_eku and v.key_matches_ek
    assert v.device is not None and v.device.san_critical
    assert v.device.model == "swtpm" and (v.device.manufacturer or "").startswith("id:")
    # Without the intermediate, or at a time before the certificate, it does not chain.
    with pytest.raises(CertificateChainError, match="no trusted or intermediate issuer"):
        ekcert.verify_ek_certificate(cert_der, trusted=root, now=now)
    with pytest.raises(CertificateChainError, match="not valid at"):
        ekcert.verify_ek_certificate(
            cert_der, trusted=root, intermediates=issuer, now=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        )


def test_swtpm_ek_certificate_key_must_be_the_tpm_ek(tpm: ESAPI, provisioned: Provisioned) -> None:
    cert_der, _ = _ek(tpm)
    now = _now_for(cert_der)
    _, ak_pub = _ak(tpm, "rsa2048:rsassa-sha256:null")
    with pytest.raises(CertificateChainError, match="not the TPM's EK"):
        ekcert.verify_ek_certificate(
            cert_der,
            trusted=ekcert.load_pem_bundle(provisioned.ca.root_pem()),
            intermediates=ekcert.load_pem_bundle(provisioned.ca.issuer_pem()),
            now=now,
            ek_public=ak_pub,
        )


def test_swtpm_ek_certificate_from_another_ca_fails(
    provisioned: Provisioned, other_ca_state: Provisioned, tmp_path: Path
) -> None:
    for ectx in _run(other_ca_state.state, tmp_path / "other"):
        cert_der, ek_pub = _ek(ectx)
    now = _now_for(cert_der)
    with pytest.raises(CertificateChainError, match="no trusted or intermediate issuer"):
        ekcert.verify_ek_certificate(
            cert_der,
            trusted=ekcert.load_pem_bundle(provisioned.ca.root_pem()),
            intermediates=ekcert.load_pem_bundle(provisioned.ca.issuer_pem()),
            now=now,
            ek_public=ek_pub,
        )
    # Its own CA accepts it: the failure above is the CA, not the certificate.
    v = ekcert.verify_ek_certificate(
        cert_der,
        trusted=ekcert.load_pem_bundle(other_ca_state.ca.root_pem()),
        intermediates=ekcert.load_pem_bundle(other_ca_state.ca.issuer_pem()),
        now=now,
        ek_public=ek_pub,
    )
    assert v.key_matches_ek
