"""TPM2B_PUBLIC keys: decoding, object names, qualified names, attribute checks.

Decoding goes through tpm2-pytss' marshalling (``TPM2B_PUBLIC.unmarshal``, the tpm2-tss MU
library); this module only wraps its errors into :class:`MalformedTpmStructure`, insists that
every byte was consumed, and turns the result into a frozen :class:`TpmPublic` plus a
``cryptography`` public key.

Names (TPM 2.0 Part 1, 16 "Names"): ``Name = nameAlg || H_nameAlg(TPMT_PUBLIC)``. Qualified
names (Part 1, 26.5): ``QN(hierarchy) = handle``; ``QN(obj) = nameAlg || H_nameAlg(QN(parent)
|| Name(obj))``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import IntFlag
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss import TPM2B_PUBLIC, TSS2_Exception

from services.tpm.algorithms import alg_by_id, alg_by_name, bank_name, hash_constructor
from services.tpm.errors import KeyAttributeError, MalformedTpmStructure, Unsupported
from services.tpm.memo import Memo

__all__ = [
    "AK_REQUIRED",
    "EK_REQUIRED",
    "TPM_RH_ENDORSEMENT",
    "TPM_RH_OWNER",
    "ObjectAttr",
    "PublicKey",
    "TpmPublic",
    "check_ak_attributes",
    "decode_public",
    "object_name",
    "qualified_name",
    "same_key",
    "unmarshal_exact",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

TPM_RH_OWNER = 0x40000001
TPM_RH_ENDORSEMENT = 0x4000000B

TPM_ALG_RSA = 0x0001
TPM_ALG_ECC = 0x0023
TPM_ALG_NULL = 0x0010
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_ECDSA = 0x0018

_CURVES: dict[int, type[ec.EllipticCurve]] = {
    0x0003: ec.SECP256R1,  # TPM_ECC_NIST_P256
    0x0004: ec.SECP384R1,  # TPM_ECC_NIST_P384
    0x0005: ec.SECP521R1,  # TPM_ECC_NIST_P521
}
_CURVE_NAMES = {0x0003: "nist_p256", 0x0004: "nist_p384", 0x0005: "nist_p521"}


class ObjectAttr(IntFlag):
    """``TPMA_OBJECT`` bits (TPM 2.0 Part 2, 8.3)."""

    FIXED_TPM = 0x00000002
    ST_CLEAR = 0x00000004
    FIXED_PARENT = 0x00000010
    SENSITIVE_DATA_ORIGIN = 0x00000020
    USER_WITH_AUTH = 0x00000040
    ADMIN_WITH_POLICY = 0x00000080
    NO_DA = 0x00000400
    ENCRYPTED_DUPLICATION = 0x00000800
    RESTRICTED = 0x00010000
    DECRYPT = 0x00020000
    SIGN_ENCRYPT = 0x00040000


AK_REQUIRED = (
    ObjectAttr.RESTRICTED
    | ObjectAttr.SIGN_ENCRYPT
    | ObjectAttr.FIXED_TPM
    | ObjectAttr.FIXED_PARENT
    | ObjectAttr.SENSITIVE_DATA_ORIGIN
)
"""What an attestation key must have; it must also lack ``DECRYPT``."""

EK_REQUIRED = (
    ObjectAttr.RESTRICTED
    | ObjectAttr.DECRYPT
    | ObjectAttr.FIXED_TPM
    | ObjectAttr.FIXED_PARENT
    | ObjectAttr.SENSITIVE_DATA_ORIGIN
)
"""What a TCG-template endorsement key has (storage-type restricted decrypt key)."""


@dataclass(frozen=True)
class TpmPublic:
    """An untrusted TPM public area. ``public_area`` is the marshalled TPMT_PUBLIC.

    ``sig_scheme``/``sig_hash`` are the key's fixed signing scheme (``TPM_ALG_NULL`` = none);
    RSA keys carry ``rsa_modulus``/``rsa_exponent`` (0 in the area means 65537, already
    applied), ECC keys ``ecc_curve``/``ecc_x``/``ecc_y``.
    """

    type: int
    name_alg: str
    attributes: ObjectAttr
    auth_policy: bytes
    sig_scheme: int
    sig_hash: int
    public_area: bytes
    name: bytes
    rsa_modulus: int | None = None
    rsa_exponent: int | None = None
    rsa_bits: int | None = None
    ecc_curve: str | None = None
    ecc_x: bytes | None = None
    ecc_y: bytes | None = None

    def crypto_key(self, memo: Memo | None = None) -> PublicKey:
        """The key as a ``cryptography`` public key (RSA or NIST-curve ECC). With ``memo``,
        looked up and remembered in ``memo.crypto_keys`` by the exact key material (the
        enrolled AK of a host signs every quote it sends)."""
        if memo is None:
            return self._build_crypto_key()
        material = (self.type, self.rsa_modulus, self.rsa_exponent, self.ecc_curve, self.ecc_x,
                    self.ecc_y)
        found = memo.crypto_keys.get(material)
        if found is None:
            found = self._build_crypto_key()
            memo.crypto_keys.put(material, found, len(self.public_area))
        return found

    def _build_crypto_key(self) -> PublicKey:
        if self.rsa_modulus is not None and self.rsa_exponent is not None:
            try:
                return rsa.RSAPublicNumbers(self.rsa_exponent, self.rsa_modulus).public_key()
            except ValueError as exc:  # e.g. exponent 1 or even, modulus even
                raise Unsupported(f"RSA key is not usable: {exc}") from exc
        if self.ecc_x is not None and self.ecc_y is not None and self.ecc_curve is not None:
            curve_id = next(k for k, v in _CURVE_NAMES.items() if v == self.ecc_curve)
            nums = ec.EllipticCurvePublicNumbers(
                int.from_bytes(self.ecc_x, "big"),
                int.from_bytes(self.ecc_y, "big"),
                _CURVES[curve_id](),
            )
            try:
                return nums.public_key()
            except ValueError as exc:
                raise Unsupported(f"ECC point is not on {self.ecc_curve}: {exc}") from exc
        raise Unsupported(f"public key type {self.type:#06x} is not RSA or ECC")


def unmarshal_exact(cls: type, data: bytes, what: str) -> object:
    """``cls.unmarshal(data)`` through tpm2-pytss, requiring every byte to be consumed.

    tpm2-tss' MU functions do not report where they stopped, so a failure is reported at
    offset 0 (the start of the structure); trailing bytes are reported at their offset.
    """
    try:
        obj, used = cls.unmarshal(bytes(data))  # type: ignore[attr-defined]
    except (TSS2_Exception, ValueError, TypeError, OverflowError) as exc:
        raise MalformedTpmStructure(
            f"{what} does not unmarshal: {exc}", offset=0, field=what
        ) from exc
    if used != len(data):
        raise MalformedTpmStructure(
            f"{len(data) - used} trailing bytes after {what}", offset=used, field=what
        )
    return obj


def decode_public(data: bytes, memo: Memo | None = None) -> TpmPublic:
    """Decode an untrusted marshalled ``TPM2B_PUBLIC`` (size-prefixed TPMT_PUBLIC).

    With ``memo``, looked up and remembered in ``memo.tpm_publics`` by the exact bytes (one
    enrolled AK per host is decoded again at every attestation)."""
    raw = bytes(data)
    if memo is None:
        return _decode_public(raw)
    found = memo.tpm_publics.get(raw)
    if found is None:
        found = _decode_public(raw)
        memo.tpm_publics.put(raw, found, len(raw))
    return found


def _decode_public(data: bytes) -> TpmPublic:
    pub = unmarshal_exact(TPM2B_PUBLIC, data, "TPM2B_PUBLIC")
    assert isinstance(pub, TPM2B_PUBLIC)
    area = pub.publicArea
    if len(data) < 4 or int.from_bytes(data[:2], "big") != len(data) - 2:
        raise MalformedTpmStructure(
            "TPM2B_PUBLIC size does not cover the area", offset=0, field="size"
        )
    name_alg_id = int(area.nameAlg)
    alg = alg_by_id(name_alg_id)
    if alg is None:
        raise Unsupported(f"nameAlg {bank_name(name_alg_id)} is not supported")
    public_area = bytes(data[2:])
    name = object_name(public_area, alg.name)
    common = {
        "name_alg": alg.name,
        "attributes": ObjectAttr(int(area.objectAttributes)),
        "auth_policy": bytes(area.authPolicy),
        "public_area": public_area,
        "name": name,
    }
    t = int(area.type)
    if t == TPM_ALG_RSA:
        detail = area.parameters.rsaDetail
        modulus = bytes(area.unique.rsa)
        exponent = int(detail.exponent) or 65537
        if not modulus or int(detail.keyBits) != len(modulus) * 8:
            raise MalformedTpmStructure(
                "RSA modulus size differs from keyBits", offset=2, field="unique.rsa"
            )
        return TpmPublic(
            type=t, sig_scheme=int(detail.scheme.scheme),
            sig_hash=int(detail.scheme.details.anySig.hashAlg), rsa_modulus=int.from_bytes(modulus, "big"),
            rsa_exponent=exponent, rsa_bits=int(detail.keyBits), **common,  # type: ignore[arg-type]
        )  # fmt: skip
    if t == TPM_ALG_ECC:
        detail = area.parameters.eccDetail
        curve = int(detail.curveID)
        if curve not in _CURVE_NAMES:
            raise Unsupported(f"ECC curve {curve:#06x} is not supported")
        return TpmPublic(
            type=t, sig_scheme=int(detail.scheme.scheme),
            sig_hash=int(detail.scheme.details.anySig.hashAlg), ecc_curve=_CURVE_NAMES[curve],
            ecc_x=bytes(area.unique.ecc.x), ecc_y=bytes(area.unique.ecc.y), **common,  # type: ignore[arg-type]
        )  # fmt: skip
    return TpmPublic(type=t, sig_scheme=TPM_ALG_NULL, sig_hash=TPM_ALG_NULL, **common)  # type: ignore[arg-type]


def object_name(public_area: bytes, name_alg: str) -> bytes:
    """``Name = nameAlg (u16 BE) || H_nameAlg(TPMT_PUBLIC)``."""
    return _alg_id_bytes(name_alg) + bytes(hash_constructor(name_alg)(public_area).digest())


def qualified_name(parent_qn: bytes | int, name: bytes, name_alg: str) -> bytes:
    """``QN = nameAlg || H(QN(parent) || Name)``; an int parent is a hierarchy handle."""
    parent = parent_qn.to_bytes(4, "big") if isinstance(parent_qn, int) else parent_qn
    return _alg_id_bytes(name_alg) + bytes(hash_constructor(name_alg)(parent + name).digest())


def _alg_id_bytes(name_alg: str) -> bytes:
    alg = alg_by_name(name_alg)
    if alg is None:
        raise Unsupported(f"name algorithm {name_alg!r} is not supported")
    return alg.alg_id.to_bytes(2, "big")


def check_ak_attributes(pub: TpmPublic) -> None:
    """Require a restricted, fixed, TPM-generated signing key that cannot decrypt.

    Raises ``KeyAttributeError`` naming every missing or forbidden attribute.
    """
    attributes, key_type = int(pub.attributes), pub.type
    if (attributes & _AK_REQUIRED_BITS == _AK_REQUIRED_BITS and not attributes & _DECRYPT_BIT
            and key_type in (TPM_ALG_RSA, TPM_ALG_ECC)):
        return  # every AK of a fleet: two integer tests
    problem = _ak_attribute_problem(attributes, key_type)
    if problem is not None:
        raise KeyAttributeError(problem)


_AK_REQUIRED_BITS: Final = int(AK_REQUIRED)
_DECRYPT_BIT: Final = int(ObjectAttr.DECRYPT)


def _ak_attribute_problem(attributes: int, key_type: int) -> str | None:
    """What disqualifies (attributes, type) as an AK, or None."""
    attrs = ObjectAttr(attributes)
    missing = [a.name for a in ObjectAttr if a in AK_REQUIRED and a not in attrs]
    forbidden = ["DECRYPT"] if ObjectAttr.DECRYPT in attrs else []
    if key_type not in (TPM_ALG_RSA, TPM_ALG_ECC):
        forbidden.append(f"type {key_type:#06x}")
    if missing or forbidden:
        return (f"not an attestation key: missing {missing or 'nothing'}, "
                f"forbidden {forbidden or 'nothing'}")
    return None


def same_key(pub: TpmPublic, key: object) -> bool:
    """True when ``key`` (a ``cryptography`` public key) is the TPM key ``pub``."""
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return pub.rsa_modulus == nums.n and pub.rsa_exponent == nums.e
    if (
        isinstance(key, ec.EllipticCurvePublicKey)
        and pub.ecc_x is not None
        and pub.ecc_y is not None
    ):
        nums_ec = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        return (
            _CURVE_NAMES.get(_curve_id(key.curve), "") == pub.ecc_curve
            and hmac.compare_digest(nums_ec.x.to_bytes(size, "big"), pub.ecc_x.rjust(size, b"\x00"))
            and hmac.compare_digest(nums_ec.y.to_bytes(size, "big"), pub.ecc_y.rjust(size, b"\x00"))
        )
    return False


def _curve_id(curve: ec.EllipticCurve) -> int:
    for cid, cls in _CURVES.items():
        if isinstance(curve, cls):
            return cid
    return -1
