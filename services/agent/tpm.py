"""The host agent's TPM: an ESAPI wrapper for enrolment, attestation and credential release.

``AgentTpm(tcti)`` connects with any TCTI string tpm2-pytss accepts
(``device:/dev/tpmrm0``, ``swtpm:host=127.0.0.1,port=P``). It offers exactly what the agent
needs: the EK (public + certificate from NV), an AK that survives restarts (its TPM-wrapped
blobs in a state file, reloaded under the EK), ActivateCredential, quotes over exactly the
selection asked for (bank by bank, as a challenge names it), the request-signing quote that
authenticates a challenge request, import + PolicyPCR + unseal of a sealed credential, and PCR
extend for the simulator.

Without a resource manager (swtpm) the TPM has three transient object slots and
``ESAPI.close()`` flushes nothing (tpm-swtpm.md pitfalls 3/4): every method flushes the
objects and sessions it creates before returning, and ``close`` flushes any leftovers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("TSS2_LOG", "all+none")  # esys logs expected misses (NV probes) as ERROR

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HC,
    TPM2_SE,
    TPMA_OBJECT,
)
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TPMU_HA,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from services.errors import HostgateError
from services.tpm.algorithms import SHA_ALGORITHMS
from services.tpm.credential import CredentialChallenge, SealedCredential

EkKind = Literal["rsa", "ecc", "ecc384"]
AkKind = Literal["ecc", "rsa"]

#: EK kind -> (tpm2-pytss template name, EK certificate NV index, persistent handle or None).
EK_KINDS: Mapping[str, tuple[str, int, int | None]] = {
    "rsa": ("EK-RSA2048", 0x01C00002, 0x81010001),
    "ecc": ("EK-ECC256", 0x01C0000A, None),
    "ecc384": ("EK-HIGH-ECC384", 0x01C00016, 0x81010016),
}
AK_TEMPLATES: Mapping[str, str] = {"ecc": "ecc256:ecdsa-sha256:null",
                                   "rsa": "rsa2048:rsassa-sha256:null"}
AK_ATTRS = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH)
BANK_NAMES: Mapping[int, str] = {TPM2_ALG(a.alg_id): a.name for a in SHA_ALGORITHMS}
"""``TPM_ALG_ID`` -> bank name of the banks this agent quotes and extends (the SHA banks)."""
BANK_ALGS: Mapping[str, int] = {v: k for k, v in BANK_NAMES.items()}
PCR_READ_MAX = 8  # pitfall 5: TPM2_PCR_Read returns at most 8 digests per call


class AgentTpmError(HostgateError):
    """The agent could not do what was asked with its TPM (no AK yet, bad state file...)."""


@dataclass(frozen=True)
class EkInfo:
    """The endorsement key: marshalled ``TPM2B_PUBLIC`` and its certificate (DER) if in NV."""

    kind: str
    public: bytes
    certificate: bytes | None


@dataclass(frozen=True)
class AkInfo:
    """The attestation key: marshalled public, TPM-wrapped private, Name, and its parent EK."""

    kind: str
    public: bytes
    private: bytes
    name: bytes
    parent: str


@dataclass(frozen=True)
class Quote:
    """One quote: ``TPMS_ATTEST`` bytes, marshalled ``TPMT_SIGNATURE``, the PCR values read
    right after it (``bank -> pcr -> value``), the selection quoted and the nonce."""

    attest: bytes
    signature: bytes
    pcr_values: Mapping[str, Mapping[int, bytes]]
    selection: tuple[tuple[str, tuple[int, ...]], ...]
    nonce: bytes


Selection = tuple[tuple[str, tuple[int, ...]], ...]
"""``((bank, (pcr, ...)), ...)``: what a quote covers, bank by bank (banks as in BANK_NAMES)."""


def _selection_spec(selection: Sequence[tuple[str, Sequence[int]]]) -> str:
    return "+".join(f"{b}:{','.join(map(str, p))}" for b, p in selection)


def normalise_selection(selection: Sequence[tuple[str, Sequence[int]]]) -> Selection:
    """``selection`` checked and in canonical form (each bank once, PCRs ascending);
    ``AgentTpmError`` names a bank this agent cannot quote, a repeated bank or a bad PCR."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for bank, pcrs in selection:
        if bank not in BANK_ALGS:
            raise AgentTpmError(f"cannot quote PCR bank {bank!r} (known: "
                                f"{', '.join(sorted(BANK_ALGS))})")
        if any(bank == seen for seen, _ in out):
            raise AgentTpmError(f"PCR bank {bank} is selected more than once")
        chosen = tuple(sorted(set(pcrs)))
        if not chosen or not all(0 <= p <= 23 for p in chosen):
            raise AgentTpmError(f"selection of bank {bank} must name PCRs in 0..23, got "
                                f"{list(pcrs)[:8]}")
        out.append((bank, chosen))
    if not out:
        raise AgentTpmError("a quote needs at least one bank with at least one PCR")
    return tuple(out)


class AgentTpm:
    """One connection to a TPM. Not thread-safe: use one per thread (per host in the fleet)."""

    def __init__(self, tcti: str, *, state_file: Path | None = None, ek_kind: EkKind = "rsa"
                 ) -> None:
        self.tcti = tcti
        self.state_file = state_file
        self.ek_kind: EkKind = ek_kind
        try:
            self._ectx = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise AgentTpmError(f"cannot connect to the TPM via {tcti!r}: {exc}") from exc
        self._ak: AkInfo | None = None
        self._ek_cache: dict[str, EkInfo] = {}

    def close(self) -> None:
        """Flush every transient object and session, then close the connection."""
        with suppress(TSS2_Exception):
            self.flush_transients()
        self._ectx.close()

    def __enter__(self) -> AgentTpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- housekeeping -----------------------------------------------------------------------

    def flush_transients(self) -> int:
        """Flush all transient objects and loaded sessions in the TPM; returns how many."""
        count = 0
        for first in (TPM2_HC.TRANSIENT_FIRST, TPM2_HC.LOADED_SESSION_FIRST):
            _, data = self._ectx.get_capability(TPM2_CAP.HANDLES, int(first), 64)
            for handle in data.data.handles:
                with suppress(TSS2_Exception):
                    tr = self._ectx.tr_from_tpmpublic(handle)
                    self._ectx.flush_context(tr)
                    count += 1
        return count

    def active_banks(self) -> tuple[str, ...]:
        """PCR banks the TPM has allocated (any PCR selected), in the TPM's order."""
        _, data = self._ectx.get_capability(TPM2_CAP.PCRS, 0, 16)
        banks = []
        for sel in data.data.assignedPCR:
            if any(bytes(sel.pcrSelect)[: sel.sizeofSelect]) and int(sel.hash) in BANK_NAMES:
                banks.append(BANK_NAMES[int(sel.hash)])
        return tuple(banks)

    @staticmethod
    def _policy_ek(kind: str) -> str:
        """EK kinds whose authPolicy is PolicySecret(ENDORSEMENT) in a SHA-256 session.

        The high-range P-384 EK (EK profile 2.0, template H-5) uses a SHA-384 PolicyOR policy
        this agent does not drive; it is read for its certificate but not used for decryption.
        """
        if kind == "ecc384":
            raise AgentTpmError("the high-range ECC P-384 EK cannot be used for activation or "
                                "import here; use the 'rsa' or 'ecc' (P-256) EK")
        return kind

    @contextmanager
    def _ek_session(self) -> Iterator[ESYS_TR]:
        """A policy session satisfying the EK's authPolicy: PolicySecret(TPM_RH_ENDORSEMENT)."""
        s = self._ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                          TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        try:
            self._ectx.policy_secret(ESYS_TR.ENDORSEMENT, s, expiration=0)
            yield s
        finally:
            with suppress(TSS2_Exception):
                self._ectx.flush_context(s)

    @contextmanager
    def _ek_handle(self, kind: str | None = None) -> Iterator[ESYS_TR]:
        """The EK as an ESYS_TR: the persistent one when provisioned, else CreatePrimary."""
        template_name, _, persistent = EK_KINDS[kind or self.ek_kind]
        if persistent is not None:
            try:
                tr = self._ectx.tr_from_tpmpublic(persistent)
            except TSS2_Exception:
                tr = None
            if tr is not None:
                try:
                    yield tr
                finally:
                    with suppress(TSS2_Exception):
                        self._ectx.tr_close(tr)
                return
        _, template = create_ek_template(template_name, NVReadEK(self._ectx))
        handle, *_ = self._ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        try:
            yield handle
        finally:
            with suppress(TSS2_Exception):
                self._ectx.flush_context(handle)

    # -- identity -----------------------------------------------------------------------------

    def ek(self, kind: EkKind | None = None) -> EkInfo:
        """The EK of ``kind`` (default: this agent's) with its NV certificate when present."""
        k = kind or self.ek_kind
        if k in self._ek_cache:
            return self._ek_cache[k]
        _, cert_index, _ = EK_KINDS[k]
        cert: bytes | None
        try:
            cert = NVReadEK(self._ectx)(cert_index)
        except NoSuchIndex:
            cert = None
        with self._ek_handle(k) as handle:
            public, _, _ = self._ectx.read_public(handle)
        info = EkInfo(k, public.marshal(), cert)
        self._ek_cache[k] = info
        return info

    def create_ak(self, kind: AkKind = "ecc", *, remember: bool = True) -> AkInfo:
        """Create a restricted signing AK under the EK.

        With ``remember`` (the default) it becomes this agent's AK and is saved to the state
        file; without, the caller just gets another key of this TPM (tests, tamper profiles).
        """
        self._policy_ek(self.ek_kind)
        template = TPM2B_PUBLIC(TPMT_PUBLIC.parse(AK_TEMPLATES[kind], objectAttributes=AK_ATTRS))
        with self._ek_handle() as ek, self._ek_session() as s:
            private, public, *_ = self._ectx.create(ek, None, template, session1=s)
        ak = AkInfo(kind, public.marshal(), private.marshal(), bytes(public.get_name()),
                    self.ek_kind)
        if remember:
            self._ak = ak
            if self.state_file is not None:
                self._save(ak)
        return ak

    def _save(self, ak: AkInfo) -> None:
        assert self.state_file is not None
        doc = {"version": 1, "ak": {"kind": ak.kind, "parent": ak.parent,
                                    "public": ak.public.hex(), "private": ak.private.hex()}}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.chmod(tmp, 0o600)
        tmp.replace(self.state_file)

    def load_ak(self) -> AkInfo:
        """The AK from memory, else from the state file (TPM-wrapped blobs, reloaded on use)."""
        if self._ak is not None:
            return self._ak
        if self.state_file is None or not self.state_file.exists():
            raise AgentTpmError("no AK yet: run enrolment (create_ak) first")
        try:
            doc = json.loads(self.state_file.read_text())
            entry = doc["ak"]
            public = bytes.fromhex(entry["public"])
            pub, _ = TPM2B_PUBLIC.unmarshal(public)
            self._ak = AkInfo(entry["kind"], public, bytes.fromhex(entry["private"]),
                              bytes(pub.get_name()), entry["parent"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AgentTpmError(f"agent state file {self.state_file.name} is unreadable: "
                                f"{exc}") from exc
        return self._ak

    @contextmanager
    def _loaded_ak(self, ak: AkInfo | None = None) -> Iterator[ESYS_TR]:
        info = ak or self.load_ak()
        public, _ = TPM2B_PUBLIC.unmarshal(info.public)
        private, _ = TPM2B_PRIVATE.unmarshal(info.private)
        with self._ek_handle(info.parent) as ek, self._ek_session() as s:
            handle = self._ectx.load(ek, private, public, session1=s)
        try:
            yield handle
        finally:
            with suppress(TSS2_Exception):
                self._ectx.flush_context(handle)

    # -- enrolment and attestation ---------------------------------------------------------

    def activate_credential(self, challenge: CredentialChallenge, ak: AkInfo | None = None,
                            ek_kind: EkKind | None = None) -> bytes:
        """TPM2_ActivateCredential: recover the secret if the challenge names our AK and EK.

        Raises ``TSS2_Exception`` when the TPM refuses (wrong AK name, other EK...).
        """
        self._policy_ek(ek_kind or self.ek_kind)
        blob, _ = TPM2B_ID_OBJECT.unmarshal(challenge.credential_blob)
        secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(challenge.encrypted_secret)
        with self._loaded_ak(ak) as ak_handle, self._ek_handle(ek_kind) as ek, \
                self._ek_session() as s:
            out = self._ectx.activate_credential(ak_handle, ek, blob, secret, session2=s)
        return bytes(out)

    def pcr_read(self, selection: Sequence[tuple[str, Sequence[int]]]
                 ) -> dict[str, dict[int, bytes]]:
        """PCR values per bank, read in chunks of at most 8 (pitfall 5)."""
        out: dict[str, dict[int, bytes]] = {}
        for bank, pcrs in selection:
            values = out.setdefault(bank, {})
            wanted = sorted(set(pcrs))
            while wanted:
                chunk = wanted[:PCR_READ_MAX]
                _, sel_out, digests = self._ectx.pcr_read(_selection_spec([(bank, chunk)]))
                got = [i for s in sel_out for i in range(24)
                       if bytes(s.pcrSelect)[i // 8] & (1 << (i % 8))]
                if not got:
                    raise AgentTpmError(f"TPM returned no {bank} PCRs for {chunk}")
                for pcr, digest in zip(got, digests, strict=True):
                    values[pcr] = bytes(digest)
                wanted = [p for p in wanted if p not in values]
        return out

    def quote(self, nonce: bytes, pcrs: Sequence[int] | None = None,
              banks: Sequence[str] | None = None, ak: AkInfo | None = None, *,
              selection: Sequence[tuple[str, Sequence[int]]] | None = None) -> Quote:
        """Quote over ``nonce``, then read the quoted PCRs (the values reported are exactly
        those quoted).

        ``selection`` (``((bank, pcrs), ...)``) is quoted as given, bank by bank: what a
        challenge asks for. Without it, ``pcrs`` in every active bank (or in ``banks``)."""
        if len(nonce) > 64:
            raise AgentTpmError(f"nonce is {len(nonce)} bytes; a TPM2B_DATA takes at most 64")
        if selection is None:
            if pcrs is None:
                raise AgentTpmError("quote needs a selection (or PCRs and banks)")
            chosen = tuple(banks) if banks is not None else self.active_banks()
            selection = tuple((b, tuple(pcrs)) for b in chosen)
        elif pcrs is not None or banks is not None:
            raise AgentTpmError("give a selection or PCRs and banks, not both")
        selection = normalise_selection(selection)
        with self._loaded_ak(ak) as ak_handle:
            attest, signature = self._ectx.quote(
                ak_handle, _selection_spec(selection), TPM2B_DATA(nonce),
                TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        values = self.pcr_read(selection)
        return Quote(bytes(attest), signature.marshal(), values, selection, nonce)

    def sign_request(self, binding: bytes, ak: AkInfo | None = None) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE) of a TPM2_Quote whose qualifying data is ``binding``:
        how the AK (a restricted key, which signs no outside digest) vouches for a challenge
        request (``services.collector.request_auth``). The selection does not matter: one PCR
        of one active bank; no PCR is read."""
        if len(binding) > 64:
            raise AgentTpmError(f"binding is {len(binding)} bytes; a TPM2B_DATA takes at most 64")
        active = self.active_banks()
        if not active:
            raise AgentTpmError("the TPM has no active PCR bank to quote")
        bank = "sha256" if "sha256" in active else active[0]
        with self._loaded_ak(ak) as ak_handle:
            attest, signature = self._ectx.quote(
                ak_handle, f"{bank}:0", TPM2B_DATA(binding),
                TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        return bytes(attest), bytes(signature.marshal())

    def extend(self, pcr: int, digests: Mapping[str, bytes]) -> None:
        """TPM2_PCR_Extend ``pcr`` in each bank of ``digests`` (``bank -> digest``) at once."""
        values = []
        for bank, digest in digests.items():
            ha = TPMT_HA(hashAlg=BANK_ALGS[bank], digest=TPMU_HA(**{bank: digest}))
            values.append(ha)
        self._ectx.pcr_extend(getattr(ESYS_TR, f"PCR{pcr}"), TPML_DIGEST_VALUES(values))

    def unseal(self, sealed: SealedCredential, ek_kind: EkKind | None = None) -> bytes:
        """Import a sealed credential under the EK, satisfy its PolicyPCR and unseal it.

        Raises ``TSS2_Exception`` when the blob is for another TPM or the PCRs moved.
        """
        self._policy_ek(ek_kind or self.ek_kind)
        public, _ = TPM2B_PUBLIC.unmarshal(sealed.public)
        duplicate, _ = TPM2B_PRIVATE.unmarshal(sealed.duplicate)
        seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(sealed.encrypted_seed)
        with self._ek_handle(ek_kind) as ek:
            with self._ek_session() as s:
                private = self._ectx.import_(ek, TPM2B_DATA(), public, duplicate, seed,
                                             TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                                             session1=s)
            with self._ek_session() as s:
                handle = self._ectx.load(ek, private, public, session1=s)
        try:
            ps = self._ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                               TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                               TPM2_ALG.SHA256)
            try:
                self._ectx.policy_pcr(ps, b"", TPML_PCR_SELECTION.parse(sealed.selection.spec()))
                return bytes(self._ectx.unseal(handle, session1=ps))
            finally:
                with suppress(TSS2_Exception):
                    self._ectx.flush_context(ps)
        finally:
            with suppress(TSS2_Exception):
                self._ectx.flush_context(handle)


__all__ = ["AgentTpm", "AgentTpmError", "AkInfo", "EkInfo", "Quote", "Selection",
           "normalise_selection"]
