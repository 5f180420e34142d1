"""TPM2 quotes and certifications: decode TPMS_ATTEST / TPMT_SIGNATURE, verify them.

Decoding is tpm2-pytss' marshalling (tpm2-tss MU) via :func:`services.tpm.keys.unmarshal_exact`;
signatures are checked with ``cryptography``. The order of checks is fixed so every failure
has one distinct error: AK attributes (``KeyAttributeError``) -> signature over the exact
attest bytes (``InvalidQuoteSignature``) -> magic/type (``MalformedTpmStructure``) -> nonce in
``extraData`` (``NonceMismatch``, constant-time) -> ``pcrDigest`` over the reported values in
the quote's selection order (``PcrDigestMismatch``).

References: TPM 2.0 Part 2, 10.12 (TPMS_ATTEST, TPMS_QUOTE_INFO, TPMS_CERTIFY_INFO), 11.3
(TPMT_SIGNATURE); Part 3, 18.4 (TPM2_Quote: pcrDigest uses the signing scheme's hash).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tpm2_pytss import TPMS_ATTEST, TPMT_SIGNATURE
from tpm2_pytss.types import ffi

from services.tpm.algorithms import SHA_ALGORITHMS, alg_by_name, bank_name, hash_constructor
from services.tpm.errors import (
    InvalidQuoteSignature,
    MalformedTpmStructure,
    NonceMismatch,
    PcrDigestMismatch,
    Unsupported,
    VerificationFailed,
)
from services.tpm.keys import (
    TPM_ALG_ECC,
    TPM_ALG_ECDSA,
    TPM_ALG_NULL,
    TPM_ALG_RSA,
    TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA,
    TpmPublic,
    check_ak_attributes,
    decode_public,
    unmarshal_exact,
)
from services.tpm.memo import Memo

__all__ = [
    "TPM_GENERATED_VALUE",
    "TPM_ST_ATTEST_CERTIFY",
    "TPM_ST_ATTEST_QUOTE",
    "CertifiedNameMismatch",
    "ClockInfo",
    "UnverifiedAttest",
    "VerifiedCertify",
    "VerifiedQuote",
    "decode_attest",
    "pcr_digest",
    "verify_attest_signature",
    "verify_certify",
    "verify_quote",
]

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_CERTIFY = 0x8017
TPM_ST_ATTEST_QUOTE = 0x8018

_CRYPTO_HASHES: Final[Mapping[str, hashes.HashAlgorithm]] = {
    a.name: getattr(hashes, a.name.upper())() for a in SHA_ALGORITHMS if a.name != "sha1"
}
"""Bank name -> ``cryptography`` hash of the signature schemes accepted (SHA-2; never SHA-1)."""
_MINT = object()  # only this module's verify functions hold it


class CertifiedNameMismatch(VerificationFailed):
    """A TPM2_Certify vouches for another object than the public key it came with."""


@dataclass(frozen=True)
class ClockInfo:
    """``TPMS_CLOCK_INFO``: ms clock, reset/restart counters, and whether the clock is safe."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class UnverifiedAttest:
    """A decoded TPMS_ATTEST whose signature has NOT been checked (anyone can forge one).

    ``selection`` (quotes) lists ``(bank, pcr indices ascending)`` in the structure's order;
    ``certified_name``/``certified_qualified_name`` are set for certifications.
    """

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    selection: tuple[tuple[str, tuple[int, ...]], ...] = ()
    pcr_digest: bytes = b""
    certified_name: bytes = b""
    certified_qualified_name: bytes = b""


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote whose signature, nonce and PCR digest verified; built only by :func:`verify_quote`.

    ``pcr_values`` holds exactly the quoted selection (bank -> PCR -> value);
    ``hash_alg`` is the signing scheme's hash, which also computed ``pcrDigest``.
    """

    clock_info: ClockInfo
    firmware_version: int
    selection: tuple[tuple[str, tuple[int, ...]], ...]
    pcr_values: Mapping[str, Mapping[int, bytes]]
    qualified_signer: bytes
    ak_name: bytes
    hash_alg: str
    _mint: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._mint is not _MINT:
            raise TypeError("VerifiedQuote is only constructed by verify_quote()")


@dataclass(frozen=True)
class VerifiedCertify:
    """A TPM2_Certify by a verified signer over ``certified``; built only by :func:`verify_certify`."""

    certified: TpmPublic
    certified_qualified_name: bytes
    clock_info: ClockInfo
    firmware_version: int
    signer_name: bytes
    _mint: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._mint is not _MINT:
            raise TypeError("VerifiedCertify is only constructed by verify_certify()")


def _tpm2b(value: Any, field_name: str) -> bytes:
    """The bytes of a TPM2B C struct as tpm2-tss unmarshalled it (``size`` bytes of its array;
    the MU functions refuse a size beyond the array)."""
    raw: bytes = ffi.buffer(getattr(value, field_name), value.size)[:]
    return raw


_BITS_OF: Final = tuple(tuple(b for b in range(8) if byte >> b & 1) for byte in range(256))
"""Byte value -> the bits set in it, ascending."""


def _pcrs_of(bitmap: bytes) -> tuple[int, ...]:
    """PCR indices (ascending) selected by a TPMS_PCR_SELECTION bitmap."""
    bits = _BITS_OF
    return tuple(8 * j + b for j, byte in enumerate(bitmap) for b in bits[byte])


def decode_attest(data: bytes) -> UnverifiedAttest:
    """Decode an untrusted TPMS_ATTEST and check its magic; signature NOT checked.

    tpm2-tss' ``Tss2_MU_TPMS_ATTEST_Unmarshal`` (through tpm2-pytss) does the decoding; the
    fields are then read once each from the C structure it filled."""
    a = unmarshal_exact(TPMS_ATTEST, data, "TPMS_ATTEST")
    assert isinstance(a, TPMS_ATTEST)
    c = a._cdata
    magic = int(c.magic)
    if magic != TPM_GENERATED_VALUE:
        raise MalformedTpmStructure(
            f"magic {magic:#010x} is not TPM_GENERATED_VALUE", offset=0, field="magic"
        )
    ci = c.clockInfo
    atype = int(c.type)
    clock_info = ClockInfo(int(ci.clock), int(ci.resetCount), int(ci.restartCount),
                           bool(int(ci.safe)))
    signer = _tpm2b(c.qualifiedSigner, "name")
    extra = _tpm2b(c.extraData, "buffer")
    firmware = int(c.firmwareVersion)
    if atype == TPM_ST_ATTEST_QUOTE:
        q = c.attested.quote
        sel: list[tuple[str, tuple[int, ...]]] = []
        pcr_select = q.pcrSelect
        selections = pcr_select.pcrSelections
        for i in range(int(pcr_select.count)):
            s = selections[i]
            size = int(s.sizeofSelect)
            sel.append((bank_name(int(s.hash)), _pcrs_of(ffi.buffer(s.pcrSelect)[:size])))
        return UnverifiedAttest(magic, atype, signer, extra, clock_info, firmware,
                                selection=tuple(sel), pcr_digest=_tpm2b(q.pcrDigest, "buffer"))
    if atype == TPM_ST_ATTEST_CERTIFY:
        cert = c.attested.certify
        return UnverifiedAttest(magic, atype, signer, extra, clock_info, firmware,
                                certified_name=_tpm2b(cert.name, "name"),
                                certified_qualified_name=_tpm2b(cert.qualifiedName, "name"))
    return UnverifiedAttest(magic, atype, signer, extra, clock_info, firmware)


def verify_attest_signature(
    signer: TpmPublic, attest: bytes, signature: bytes, memo: Memo | None = None
) -> str:
    """Verify a TPMT_SIGNATURE over the exact ``attest`` bytes; return the hash alg name.

    RSASSA-PKCS1-v1_5, RSAPSS (any salt length, as TPMs differ) and ECDSA. The signature's
    scheme must suit the key type and equal the key's fixed scheme when it has one. ``memo``:
    for the signer's ``cryptography`` key (:meth:`TpmPublic.crypto_key`).
    """
    sig = unmarshal_exact(TPMT_SIGNATURE, signature, "TPMT_SIGNATURE")
    assert isinstance(sig, TPMT_SIGNATURE)
    c = sig._cdata  # the C structure tpm2-tss filled; each field read once
    alg = int(c.sigAlg)
    if alg in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
        body = c.signature.rsassa if alg == TPM_ALG_RSASSA else c.signature.rsapss
        hash_id, raw = int(body.hash), _tpm2b(body.sig, "buffer")
    elif alg == TPM_ALG_ECDSA:
        body = c.signature.ecdsa
        hash_id = int(body.hash)
        raw = encode_dss_signature(
            int.from_bytes(_tpm2b(body.signatureR, "buffer"), "big"),
            int.from_bytes(_tpm2b(body.signatureS, "buffer"), "big"),
        )
    else:
        raise InvalidQuoteSignature(
            f"signature algorithm {alg:#06x} is not RSASSA, RSAPSS or ECDSA"
        )
    key_type = TPM_ALG_RSA if alg != TPM_ALG_ECDSA else TPM_ALG_ECC
    if signer.type != key_type:
        raise InvalidQuoteSignature("signature algorithm does not match the key type")
    if signer.sig_scheme != TPM_ALG_NULL and (signer.sig_scheme, signer.sig_hash) != (alg, hash_id):
        raise InvalidQuoteSignature("signature scheme differs from the key's fixed scheme")
    hash_name = bank_name(hash_id)
    h = _CRYPTO_HASHES.get(hash_name)
    if h is None:
        raise Unsupported(f"signature hash {hash_name} is not accepted")
    key = signer.crypto_key(memo)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg == TPM_ALG_RSASSA
                else padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO)
            )
            key.verify(raw, attest, pad, h)
        else:
            key.verify(raw, attest, ec.ECDSA(h))
    except InvalidSignature as exc:
        raise InvalidQuoteSignature("signature does not verify with the given key") from exc
    except ValueError as exc:  # e.g. a signature longer than the modulus
        raise InvalidQuoteSignature(f"signature is not well formed for the key: {exc}") from exc
    return hash_name


def pcr_digest(
    selection: tuple[tuple[str, tuple[int, ...]], ...],
    pcr_values: Mapping[str, Mapping[int, bytes]],
    hash_alg: str,
) -> bytes:
    """``H(PCR values concatenated in selection order)``; raises if a value is missing."""
    parts, _ = _selected_values(selection, pcr_values)
    return _digest_of(parts, hash_alg)


def _digest_of(parts: list[bytes], hash_alg: str) -> bytes:
    return bytes(hash_constructor(hash_alg)(b"".join(parts)).digest())


def _selected_values(
    selection: tuple[tuple[str, tuple[int, ...]], ...],
    pcr_values: Mapping[str, Mapping[int, bytes]],
) -> tuple[list[bytes], dict[str, dict[int, bytes]]]:
    """The reported values of the selected PCRs: in selection order (what ``pcrDigest`` is
    over) and by bank (a bank selected twice keeps its last selection); raises if one is
    missing or has the wrong size."""
    parts: list[bytes] = []
    by_bank: dict[str, dict[int, bytes]] = {}
    for bank, pcrs in selection:
        size = _bank_size(bank)
        values = pcr_values.get(bank, {})
        chosen: dict[int, bytes] = {}
        for pcr in pcrs:
            value = values.get(pcr)
            if value is None:
                raise PcrDigestMismatch(f"quoted PCR {pcr} of bank {bank} was not reported")
            if len(value) != size:
                raise PcrDigestMismatch(f"reported PCR {pcr} of bank {bank} is not {size} bytes")
            chosen[pcr] = value = bytes(value)
            parts.append(value)
        by_bank[bank] = chosen
    return parts, by_bank


def _bank_size(bank: str) -> int:
    alg = alg_by_name(bank)
    if alg is None:
        raise Unsupported(f"PCR bank {bank!r} is not supported")
    return alg.digest_size


def verify_quote(
    ak_public: bytes,
    attest: bytes,
    signature: bytes,
    *,
    nonce: bytes,
    pcr_values: Mapping[str, Mapping[int, bytes]],
    memo: Memo | None = None,
) -> VerifiedQuote:
    """Verify a TPM2_Quote made by the AK ``ak_public`` (marshalled TPM2B_PUBLIC).

    ``nonce`` is what the verifier issued (compared in constant time with ``extraData``);
    ``pcr_values`` the host's reported PCR values, of which the quoted selection must hash to
    ``pcrDigest``. Returns the trusted :class:`VerifiedQuote` or raises the
    ``VerificationFailed`` / ``MalformedInput`` family. ``memo``: for the AK's decoded public
    area and ``cryptography`` key (:func:`~services.tpm.keys.decode_public`).
    """
    ak = decode_public(ak_public, memo)
    check_ak_attributes(ak)
    hash_alg = verify_attest_signature(ak, attest, signature, memo)
    a = decode_attest(attest)
    if a.type != TPM_ST_ATTEST_QUOTE:
        raise MalformedTpmStructure(
            f"attest type {a.type:#06x} is not TPM_ST_ATTEST_QUOTE", offset=4, field="type"
        )
    if not hmac.compare_digest(a.extra_data, bytes(nonce)):
        raise NonceMismatch("quote extraData is not the issued nonce")
    parts, quoted = _selected_values(a.selection, pcr_values)
    if not hmac.compare_digest(_digest_of(parts, hash_alg), a.pcr_digest):
        raise PcrDigestMismatch(
            f"pcrDigest {a.pcr_digest.hex()} != {hash_alg}(reported PCRs {_sel_text(a.selection)})"
        )
    return VerifiedQuote(
        clock_info=a.clock_info,
        firmware_version=a.firmware_version,
        selection=a.selection,
        pcr_values=quoted,
        qualified_signer=a.qualified_signer,
        ak_name=ak.name,
        hash_alg=hash_alg,
        _mint=_MINT,
    )


def _sel_text(selection: tuple[tuple[str, tuple[int, ...]], ...]) -> str:
    return "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in selection)


def verify_certify(
    signer_public: bytes,
    attest: bytes,
    signature: bytes,
    *,
    nonce: bytes,
    certified_public: bytes,
) -> VerifiedCertify:
    """Verify a TPM2_Certify: ``signer_public`` (an AK) vouches that ``certified_public`` is
    loaded in the same TPM. Checks AK attributes, signature, type, nonce and certified name."""
    signer = decode_public(signer_public)
    check_ak_attributes(signer)
    verify_attest_signature(signer, attest, signature)
    a = decode_attest(attest)
    if a.type != TPM_ST_ATTEST_CERTIFY:
        raise MalformedTpmStructure(
            f"attest type {a.type:#06x} is not TPM_ST_ATTEST_CERTIFY", offset=4, field="type"
        )
    if not hmac.compare_digest(a.extra_data, bytes(nonce)):
        raise NonceMismatch("certify extraData is not the issued nonce")
    certified = decode_public(certified_public)
    if not hmac.compare_digest(a.certified_name, certified.name):
        raise CertifiedNameMismatch("certified name is not the name of the given public key")
    return VerifiedCertify(
        certified=certified,
        certified_qualified_name=a.certified_qualified_name,
        clock_info=a.clock_info,
        firmware_version=a.firmware_version,
        signer_name=signer.name,
        _mint=_MINT,
    )
