"""Verifier-side credential construction for a host's TPM: no TPM needed, no I/O.

Two things a collector or issuer sends that only one TPM can open:

* ``make_credential``: the TPM2_MakeCredential challenge (TPM 2.0 Part 1, 24.4) binding a secret
  to the EK *and* to an AK's Name. Only a TPM holding both keys gets the secret back through
  TPM2_ActivateCredential — the enrolment proof that the AK lives in the EK's TPM.
* ``seal_to_ek``: a KEYEDHASH data object holding a secret, whose ``authPolicy`` is PolicyPCR
  over attested PCR values, outer-wrapped (duplication blob, Part 1, 23.3) to the EK. The host
  imports it under its EK and can unseal only while its PCRs hold those values.

Inputs that come from a host (the EK and AK public areas) are untrusted marshalled
``TPM2B_PUBLIC`` bytes; they are parsed with bounds and checked for the attributes their role
requires before any cryptography runs. The wrapping itself is tpm2-pytss's software
implementation (``tpm2_pytss.utils.make_credential`` / ``wrap``: RSA-OAEP or ECDH seed, KDFa,
AES-CFB, HMAC).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

os.environ.setdefault("TSS2_LOG", "all+none")

from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_NAME,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE,
)
from tpm2_pytss.utils import make_credential as _tss_make_credential
from tpm2_pytss.utils import wrap as _tss_wrap

from services.tpm.algorithms import SHA_ALGORITHMS
from services.tpm.errors import (
    KeyAttributeError,
    MalformedTpmStructure,
    TpmError,
    Unsupported,
)

#: TPM_CC_PolicyPCR (TPM 2.0 Part 2, 6.5.2).
TPM_CC_POLICY_PCR = 0x0000017F
#: Largest TPM2B_PUBLIC accepted from a host (a TPMT_PUBLIC is at most a few hundred bytes).
MAX_PUBLIC_SIZE = 1024
#: A credential secret travels in a TPM2B_DIGEST: at most the EK nameAlg's digest size.
MAX_CREDENTIAL_SIZE = 32
#: A sealed data object's data is a TPM2B_SENSITIVE_DATA (MAX_SYM_DATA = 128 bytes).
MAX_SEALED_SIZE = 128
#: PCR bank name -> (TPM_ALG_ID, digest size).
BANKS: Mapping[str, tuple[int, int]] = {a.name: (a.alg_id, a.digest_size) for a in SHA_ALGORITHMS}
_EK_REQUIRED = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM


class CredentialError(TpmError):
    """A credential or sealed blob cannot be built from the given inputs."""


@dataclass(frozen=True)
class CredentialChallenge:
    """TPM2_MakeCredential output, marshalled: ``TPM2B_ID_OBJECT`` and ``TPM2B_ENCRYPTED_SECRET``."""

    credential_blob: bytes
    encrypted_secret: bytes


@dataclass(frozen=True)
class PcrSelection:
    """PCR indices per bank, in the order the policy lists them (``(("sha256", (0, 1)),)``)."""

    banks: tuple[tuple[str, tuple[int, ...]], ...]

    def marshal(self) -> bytes:
        """``TPML_PCR_SELECTION``: count, then ``{hash u16, sizeofSelect u8 = 3, pcrSelect}``."""
        out = bytearray(struct.pack(">I", len(self.banks)))
        for bank, pcrs in self.banks:
            bitmap = bytearray(3)
            for pcr in pcrs:
                bitmap[pcr // 8] |= 1 << (pcr % 8)
            out += struct.pack(">HB", BANKS[bank][0], 3) + bitmap
        return bytes(out)

    def spec(self) -> str:
        """tpm2-tools/tpm2-pytss text form, e.g. ``sha256:0,1,2``."""
        return "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in self.banks)


@dataclass(frozen=True)
class SealedCredential:
    """A PCR-sealed object wrapped to one EK: what TPM2_Import takes, all marshalled.

    ``public`` is the object's ``TPM2B_PUBLIC`` (its authPolicy is ``policy_digest``),
    ``duplicate`` a ``TPM2B_PRIVATE`` and ``encrypted_seed`` a ``TPM2B_ENCRYPTED_SECRET``.
    ``selection`` is the PolicyPCR selection the host must use to satisfy the policy.
    """

    public: bytes
    duplicate: bytes
    encrypted_seed: bytes
    selection: PcrSelection
    policy_digest: bytes


def pcr_selection(banks: Mapping[str, Sequence[int]] | Sequence[tuple[str, Sequence[int]]]
                  ) -> PcrSelection:
    """A validated ``PcrSelection`` (known banks, PCRs 0-23, ascending, no duplicates)."""
    items = list(banks.items()) if isinstance(banks, Mapping) else list(banks)
    if not items:
        raise CredentialError("PCR selection is empty")
    seen: set[str] = set()
    out = []
    for bank, pcrs in items:
        if bank not in BANKS:
            raise Unsupported(f"PCR bank {bank!r} is not supported")
        if bank in seen:
            raise CredentialError(f"PCR bank {bank!r} selected twice")
        seen.add(bank)
        ordered = tuple(sorted(set(pcrs)))
        if not ordered or ordered[0] < 0 or ordered[-1] > 23:
            raise CredentialError(f"PCR selection for {bank} must be non-empty within 0..23")
        out.append((bank, ordered))
    return PcrSelection(tuple(out))


def policy_pcr_digest(
    selection: PcrSelection, pcr_values: Mapping[str, Mapping[int, bytes]]
) -> bytes:
    """The SHA-256 policy digest of a fresh session after TPM2_PolicyPCR (Part 3, 23.7).

    ``H(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || H(PCR values in selection order))``.
    ``pcr_values`` must be *attested* values (from a verified quote).
    """
    concat = bytearray()
    for bank, pcrs in selection.banks:
        size = BANKS[bank][1]
        for pcr in pcrs:
            try:
                value = pcr_values[bank][pcr]
            except KeyError as exc:
                raise CredentialError(f"no attested value for PCR {bank}:{pcr}") from exc
            if len(value) != size:
                raise CredentialError(f"PCR {bank}:{pcr} value is {len(value)} bytes, "
                                      f"expected {size}")
            concat += value
    pcr_digest = hashlib.sha256(concat).digest()
    return hashlib.sha256(bytes(32) + struct.pack(">I", TPM_CC_POLICY_PCR)
                          + selection.marshal() + pcr_digest).digest()


def parse_public(untrusted_public: bytes, *, role: str) -> TPM2B_PUBLIC:
    """Parse a host's marshalled ``TPM2B_PUBLIC`` (``role`` names it in errors).

    Rejects oversize input, trailing bytes and anything that does not unmarshal, with the byte
    offset where parsing stopped.
    """
    if len(untrusted_public) > MAX_PUBLIC_SIZE:
        raise MalformedTpmStructure(f"{role} public area is {len(untrusted_public)} bytes, over "
                                    f"{MAX_PUBLIC_SIZE}", offset=MAX_PUBLIC_SIZE, field=role)
    if len(untrusted_public) < 2:
        raise MalformedTpmStructure(f"{role} public area is truncated", offset=0, field=role)
    declared = int.from_bytes(untrusted_public[:2], "big")
    if declared + 2 != len(untrusted_public):
        raise MalformedTpmStructure(
            f"{role} TPM2B_PUBLIC size field says {declared} bytes but {len(untrusted_public) - 2}"
            " follow", offset=0, field=f"{role}.size")
    try:
        public, used = TPM2B_PUBLIC.unmarshal(untrusted_public)
    except Exception as exc:  # tpm2-pytss raises TSS2_Exception / ValueError on bad input
        raise MalformedTpmStructure(f"{role} public area does not unmarshal: {exc}", offset=2,
                                    field=role) from exc
    if used != len(untrusted_public):
        raise MalformedTpmStructure(f"{role} public area has trailing bytes", offset=used,
                                    field=role)
    return public


def _check_ek(ek: TPM2B_PUBLIC) -> None:
    area = ek.publicArea
    if area.type not in (TPM2_ALG.RSA, TPM2_ALG.ECC):
        raise Unsupported(f"EK type {int(area.type):#06x} is not RSA or ECC")
    if area.nameAlg not in (TPM2_ALG.SHA256, TPM2_ALG.SHA384):
        raise Unsupported(f"EK nameAlg {int(area.nameAlg):#06x} is not SHA-256 or SHA-384")
    attrs = int(area.objectAttributes)
    if attrs & int(_EK_REQUIRED) != int(_EK_REQUIRED) or attrs & int(TPMA_OBJECT.SIGN_ENCRYPT):
        raise KeyAttributeError(f"EK attributes {attrs:#010x} are not those of a restricted "
                                "decryption key (restricted|decrypt|fixedTPM, no sign)")
    sym = area.parameters.asymDetail.symmetric
    if sym.algorithm != TPM2_ALG.AES:
        raise Unsupported("EK symmetric algorithm is not AES")


def object_name(public: TPM2B_PUBLIC) -> bytes:
    """The object's Name: ``nameAlg || H_nameAlg(TPMT_PUBLIC)`` (Part 1, 16)."""
    return bytes(public.get_name())


def make_credential(untrusted_ek_public: bytes, untrusted_ak_public: bytes,
                    secret: bytes) -> CredentialChallenge:
    """A MakeCredential challenge of ``secret`` for the AK's Name, encrypted to the EK.

    RSA EKs get an OAEP-encrypted seed (label ``IDENTITY``), ECC EKs an ECDH-derived one.
    The AK public is only hashed into its Name here; checking that it is a restricted signing
    key is the enrolment check's job (``services.tpm.keys``).
    """
    if not 1 <= len(secret) <= MAX_CREDENTIAL_SIZE:
        raise CredentialError(f"credential secret must be 1..{MAX_CREDENTIAL_SIZE} bytes, "
                              f"got {len(secret)}")
    ek = parse_public(untrusted_ek_public, role="ek")
    _check_ek(ek)
    ak = parse_public(untrusted_ak_public, role="ak")
    name = TPM2B_NAME(object_name(ak))
    try:
        blob, enc = _tss_make_credential(ek, secret, name)
    except ValueError as exc:
        raise Unsupported(f"cannot make a credential for this EK: {exc}") from exc
    return CredentialChallenge(blob.marshal(), enc.marshal())


def seal_to_ek(
    untrusted_ek_public: bytes,
    secret: bytes,
    selection: PcrSelection,
    attested_pcrs: Mapping[str, Mapping[int, bytes]],
) -> SealedCredential:
    """Seal ``secret`` to the EK's TPM under PolicyPCR over ``attested_pcrs``.

    The object is KEYEDHASH (scheme NULL, no sign/decrypt), ``userWithAuth`` clear so only the
    policy authorises it, ``fixedTPM``/``fixedParent`` clear because it is imported, ``noDA``
    set. Only the outer wrap (seed to the EK, no inner symmetric wrap) is applied.
    """
    if not 1 <= len(secret) <= MAX_SEALED_SIZE:
        raise CredentialError(f"sealed secret must be 1..{MAX_SEALED_SIZE} bytes, "
                              f"got {len(secret)}")
    ek = parse_public(untrusted_ek_public, role="ek")
    _check_ek(ek)
    policy = policy_pcr_digest(selection, attested_pcrs)
    sensitive, public = TPM2B_SENSITIVE.keyedhash_from_secret(
        secret, objectAttributes=TPMA_OBJECT.NODA)
    public.publicArea.authPolicy = policy
    try:
        _, duplicate, seed = _tss_wrap(ek.publicArea, public, sensitive)
    except ValueError as exc:
        raise Unsupported(f"cannot wrap to this EK: {exc}") from exc
    return SealedCredential(public.marshal(), duplicate.marshal(), seed.marshal(), selection,
                            policy)
