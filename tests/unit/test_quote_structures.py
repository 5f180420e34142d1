"""Decoding and checking TPM structures without a TPM: the real GCE AK and quote, and public
areas built with tpm2-pytss templates."""

from __future__ import annotations

import pytest
from tpm2_pytss import TPM2B_PUBLIC, TPMA_OBJECT, TPMT_PUBLIC

from services.tpm import keys, quote
from services.tpm.errors import KeyAttributeError, MalformedTpmStructure
from tests.unit.test_quote_gce import decode_attestation, pb_files

ATT = decode_attestation(pb_files()[1].read_bytes())  # nonce9009
GQ = ATT.quotes[0]


def _public(spec: str, attrs: TPMA_OBJECT) -> bytes:
    return bytes(TPM2B_PUBLIC(TPMT_PUBLIC.parse(spec, objectAttributes=attrs)).marshal())


AK = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)


def test_gce_ak_decodes_and_its_name_matches_tpm2_pytss() -> None:
    pub = keys.decode_public(ATT.ak_public)
    assert pub.type == keys.TPM_ALG_RSA and pub.rsa_bits == 2048 and pub.name_alg == "sha256"
    keys.check_ak_attributes(pub)
    tss, _ = TPM2B_PUBLIC.unmarshal(ATT.ak_public)
    assert pub.name == bytes(tss.get_name())


def test_gce_attest_fields() -> None:
    a = quote.decode_attest(GQ.attest)
    assert a.magic == quote.TPM_GENERATED_VALUE and a.type == quote.TPM_ST_ATTEST_QUOTE
    assert a.extra_data == b"\x90\x09"
    assert a.selection == ((GQ.bank, tuple(range(24))),)
    assert len(a.pcr_digest) == 32


def test_trailing_bytes_are_reported_at_their_offset() -> None:
    with pytest.raises(MalformedTpmStructure) as info:
        quote.decode_attest(GQ.attest + b"\x00\x01")
    assert info.value.offset == len(GQ.attest)
    with pytest.raises(MalformedTpmStructure) as info:
        keys.decode_public(ATT.ak_public + b"\x00")
    assert info.value.offset == len(ATT.ak_public)


def test_truncated_structures_do_not_unmarshal() -> None:
    for data, fn in (
        (GQ.attest[:50], quote.decode_attest),
        (ATT.ak_public[:100], keys.decode_public),
    ):
        with pytest.raises(MalformedTpmStructure, match="does not unmarshal"):
            fn(data)


def test_wrong_magic_is_rejected() -> None:
    bad = b"\x00\x54\x43\x47" + GQ.attest[4:]
    with pytest.raises(MalformedTpmStructure, match="TPM_GENERATED_VALUE") as info:
        quote.decode_attest(bad)
    assert info.value.field == "magic"


@pytest.mark.parametrize(
    ("drop", "name"),
    [
        (TPMA_OBJECT.RESTRICTED, "RESTRICTED"),
        (TPMA_OBJECT.FIXEDTPM, "FIXED_TPM"),
        (TPMA_OBJECT.FIXEDPARENT, "FIXED_PARENT"),
        (TPMA_OBJECT.SENSITIVEDATAORIGIN, "SENSITIVE_DATA_ORIGIN"),
        (TPMA_OBJECT.SIGN_ENCRYPT, "SIGN_ENCRYPT"),
    ],
)
def test_ak_attribute_check_names_what_is_missing(drop: TPMA_OBJECT, name: str) -> None:
    keys.check_ak_attributes(keys.decode_public(_public("ecc256:ecdsa-sha256:null", AK)))
    with pytest.raises(KeyAttributeError, match=name):
        keys.check_ak_attributes(
            keys.decode_public(_public("ecc256:ecdsa-sha256:null", AK & ~drop))
        )


def test_ak_that_can_decrypt_is_rejected() -> None:
    pub = keys.decode_public(_public("ecc256:null:null", AK | TPMA_OBJECT.DECRYPT))
    with pytest.raises(KeyAttributeError, match="DECRYPT"):
        keys.check_ak_attributes(pub)


def test_verified_types_cannot_be_built_outside_verify() -> None:
    a = quote.decode_attest(GQ.attest)
    with pytest.raises(TypeError):
        quote.VerifiedQuote(a.clock_info, 0, (), {}, b"", b"", "sha256")


def test_pcr_digest_follows_selection_order() -> None:
    import hashlib

    values = {"sha1": {0: b"\x01" * 20}, "sha256": {0: b"\x02" * 32}}
    sel = (("sha256", (0,)), ("sha1", (0,)))
    assert (
        quote.pcr_digest(sel, values, "sha256")
        == hashlib.sha256(b"\x02" * 32 + b"\x01" * 20).digest()
    )
    with pytest.raises(quote.PcrDigestMismatch, match="PCR 1 of bank sha1 was not reported"):
        quote.pcr_digest((("sha1", (1,)),), values, "sha256")
