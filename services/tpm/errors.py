"""Errors of the TPM evidence library.

Three families, so callers can branch on what went wrong rather than on message text::

    HostgateError
     └── TpmError
          ├── MalformedInput            bytes that do not parse (always carries a byte offset)
          │    ├── MalformedLog              TCG event log structure (TCG_PCR_EVENT / TCG_PCR_EVENT2)
          │    ├── MalformedEventData        one event's data (UEFI variable, SIPA, device path...)
          │    ├── MalformedImaList          Linux IMA measurement list (binary or ASCII)
          │    ├── MalformedTpmStructure     TPMS_ATTEST / TPMT_SIGNATURE / TPM2B_PUBLIC
          │    └── LimitExceeded             hostile sizes/counts/nesting stopped early
          ├── VerificationFailed        well-formed evidence that does not verify
          │    ├── ReplayMismatch            replayed PCRs differ from quoted ones
          │    ├── DigestMismatch            event data does not hash to its digest
          │    ├── InvalidQuoteSignature
          │    ├── NonceMismatch
          │    ├── PcrDigestMismatch
          │    ├── KeyAttributeError         AK attributes not those of a restricted signing key
          │    └── CertificateChainError     EK certificate does not chain to a trusted CA
          └── Unsupported               an algorithm or format hostgate does not handle
               └── Tpm12EventLog             a TPM 1.2 log (services.tpm.decrepit)

Offsets are byte offsets into the input the parser was given; ``seq`` is the 0-based index of
the event (or IMA entry) in its log.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.errors import ExitCode, HostgateError


class TpmError(HostgateError):
    """Base of the TPM library's errors. Every one is about the bytes it was handed (which a
    stage got from a host), so each is the sender's fault (``host_fault``)."""

    host_fault = True


class MalformedInput(TpmError):
    """Bytes that do not parse. ``offset`` is where the parser stopped making sense of them."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        offset: int,
        seq: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.offset = offset
        self.seq = seq
        self.field = field
        where = f"at byte offset {offset}"
        if seq is not None:
            where += f", event {seq}"
        if field is not None:
            where += f", field {field}"
        super().__init__(f"{message} ({where})")


class MalformedLog(MalformedInput):
    """The TCG event log's structure is broken."""


class MalformedEventData(MalformedInput):
    """One event's data does not decode as its (untrusted) type says it should."""


class MalformedImaList(MalformedInput):
    """A Linux IMA measurement list entry does not parse."""


class MalformedTpmStructure(MalformedInput):
    """A marshalled TPM structure (TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_PUBLIC) does not parse."""


class LimitExceeded(MalformedInput):
    """Input exceeded a configured bound (size, count, nesting); parsing stopped early."""


class VerificationFailed(TpmError):
    """Well-formed evidence that does not verify."""

    exit_code = ExitCode.CHECK_FAILED


class ReplayMismatch(VerificationFailed):
    """Replaying the log does not reproduce the quoted PCR values.

    ``invalid_pcrs`` maps each bank to the sorted PCR indices that differ; ``first`` is the
    (bank, pcr) reported first; ``event_seqs`` are the events that extended that PCR.
    """

    def __init__(
        self,
        message: str,
        *,
        invalid_pcrs: dict[str, list[int]],
        first: tuple[str, int],
        event_seqs: Sequence[int] = (),
    ) -> None:
        self.invalid_pcrs = invalid_pcrs
        self.first = first
        self.event_seqs = tuple(event_seqs)
        super().__init__(message)


class DigestMismatch(VerificationFailed):
    """An event's data does not hash to the digest it was extended with."""

    def __init__(self, message: str, *, seq: int, offset: int, bank: str) -> None:
        self.seq = seq
        self.offset = offset
        self.bank = bank
        super().__init__(f"{message} (event {seq} at byte offset {offset}, bank {bank})")


class InvalidQuoteSignature(VerificationFailed):
    """The quote's signature does not verify with the given attestation key."""


class NonceMismatch(VerificationFailed):
    """The quote's extraData is not the nonce the verifier issued."""


class PcrDigestMismatch(VerificationFailed):
    """The quote's pcrDigest is not the digest of the reported PCR values."""


class KeyAttributeError(VerificationFailed):
    """A key's attributes are not those its role requires (e.g. an AK that is not restricted)."""


class CertificateChainError(VerificationFailed):
    """An EK certificate does not chain to a trusted manufacturer CA, or is not an EK cert."""


class Unsupported(TpmError):
    """An algorithm, format or version hostgate does not handle."""

    exit_code = ExitCode.BAD_INPUT
