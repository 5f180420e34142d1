"""Pure tests of services.tpm.credential: marshalling, policy digest, input checks (no TPM).

The swtpm tests (tests/integration/test_agent_tpm.py) check the same functions against a TPM.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.tpm.credential import (
    CredentialError,
    make_credential,
    parse_public,
    pcr_selection,
    policy_pcr_digest,
    seal_to_ek,
)
from services.tpm.errors import KeyAttributeError, MalformedTpmStructure, Unsupported
from tests.unit.issuer_support import software_ek_public

PCR0_7 = {"sha256": {i: bytes([i]) * 32 for i in range(8)}}



def _signing_key_public() -> bytes:
    from tpm2_pytss.constants import TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return bytes(TPM2B_PUBLIC.from_pem(
        pem, objectAttributes=TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT).marshal())


def test_pcr_selection_marshals_as_tpml_pcr_selection() -> None:
    sel = pcr_selection({"sha256": range(8), "sha1": [0, 9, 23]})
    assert sel.marshal() == (
        b"\x00\x00\x00\x02"                 # count = 2
        b"\x00\x0b" b"\x03" b"\xff\x00\x00"  # sha256, sizeofSelect 3, PCR 0-7
        b"\x00\x04" b"\x03" b"\x01\x02\x80"  # sha1, PCRs 0, 9, 23
    )
    assert sel.spec() == "sha256:0,1,2,3,4,5,6,7+sha1:0,9,23"


def test_policy_pcr_digest_follows_part3_formula_and_moves_with_any_pcr() -> None:
    sel = pcr_selection({"sha256": range(8)})
    pcr_hash = hashlib.sha256(b"".join(PCR0_7["sha256"][i] for i in range(8))).digest()
    expected = hashlib.sha256(bytes(32) + struct.pack(">I", 0x17F) + sel.marshal()
                              + pcr_hash).digest()
    assert policy_pcr_digest(sel, PCR0_7) == expected
    changed = {"sha256": {**PCR0_7["sha256"], 7: b"\xee" * 32}}
    assert policy_pcr_digest(sel, changed) != expected


@pytest.mark.parametrize(("values", "match"), [
    ({"sha256": {i: b"\x00" * 32 for i in range(7)}}, "no attested value for PCR sha256:7"),
    ({"sha256": {**PCR0_7["sha256"], 3: b"\x00" * 20}}, "sha256:3 value is 20 bytes"),
])
def test_policy_pcr_digest_rejects_incomplete_values(values: dict[str, dict[int, bytes]],
                                                     match: str) -> None:
    with pytest.raises(CredentialError, match=match):
        policy_pcr_digest(pcr_selection({"sha256": range(8)}), values)


def test_pcr_selection_rejects_bad_input() -> None:
    with pytest.raises(Unsupported):
        pcr_selection({"md5": [0]})
    with pytest.raises(CredentialError):
        pcr_selection({"sha256": [24]})
    with pytest.raises(CredentialError):
        pcr_selection({})


def test_parse_public_reports_offsets_of_hostile_input() -> None:
    good = _signing_key_public()
    with pytest.raises(MalformedTpmStructure) as trailing:
        parse_public(good[:2] + good[2:] + b"\x00", role="ak")
    assert trailing.value.offset == 0 and trailing.value.field == "ak.size"
    with pytest.raises(MalformedTpmStructure) as huge:
        parse_public(b"\x00" * 5000, role="ek")
    assert huge.value.offset == 1024
    with pytest.raises(MalformedTpmStructure):
        parse_public(b"\x00\x04\xff\xff\xff\xff", role="ek")
    assert parse_public(good, role="ak").marshal() == good


def test_credential_refuses_a_signing_key_as_ek() -> None:
    ak = _signing_key_public()
    with pytest.raises(KeyAttributeError):
        make_credential(ak, ak, b"s" * 32)


def test_credential_and_seal_build_for_an_rsa_ek() -> None:
    ek, ak = software_ek_public(), _signing_key_public()
    challenge = make_credential(ek, ak, b"s" * 32)
    blob_size = int.from_bytes(challenge.credential_blob[:2], "big")
    assert blob_size == len(challenge.credential_blob) - 2
    assert int.from_bytes(challenge.encrypted_secret[:2], "big") == 256  # RSA-2048 OAEP
    sealed = seal_to_ek(ek, b"credential", pcr_selection({"sha256": range(8)}), PCR0_7)
    assert sealed.policy_digest == policy_pcr_digest(sealed.selection, PCR0_7)
    assert sealed.policy_digest in sealed.public  # authPolicy is in the object's public area
    with pytest.raises(CredentialError):
        seal_to_ek(ek, b"x" * 129, sealed.selection, PCR0_7)
    with pytest.raises(CredentialError):
        make_credential(ek, ak, b"")
