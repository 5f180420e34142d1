"""Linux IMA: replay a parsed measurement list to PCR 10 and check its ``boot_aggregate``.

Input is an untrusted :class:`services.tpm.ima.ImaList`; only :func:`verify_replay` turns it
into something trusted (:class:`VerifiedImaList`), by matching it against quoted PCR values.
Template hashes are recomputed from the template data, never taken from the list, and the listed
SHA-1 template hash must equal the recomputed one (:func:`check_template_hashes`).

Violations (a file opened for write while measured, or ToMToU) are logged with an all-zero
template hash and extended into the TPM as all-``0xFF`` in every bank (``ima_add_violation``,
``ima_pcr_extend``); :func:`template_digest` and :func:`replay` follow that convention.

The boot_aggregate (first entry) is the kernel's hash over the TPM's PCRs of one bank:
``H(PCR0 || ... || PCR7)`` for SHA-1 and ``H(PCR0 || ... || PCR9)`` for every other bank
(``ima_calc_boot_aggregate`` in ``ima_crypto.c``, PCRs 8-9 added in Linux 5.8); all zeros when
the kernel found no TPM.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from services.tpm.algorithms import SHA_BANKS, digest_sizes
from services.tpm.errors import DigestMismatch, ReplayMismatch, Unsupported, VerificationFailed
from services.tpm.ima import ImaEntry, ImaList

__all__ = [
    "IMA_PCR",
    "BootAggregateMismatch",
    "VerifiedImaList",
    "boot_aggregate",
    "check_template_hashes",
    "replay",
    "template_digest",
    "verify_boot_aggregate",
    "verify_replay",
]

IMA_PCR = 10
"""The PCR IMA extends by default (``CONFIG_IMA_MEASURE_PCR_IDX``)."""

BOOT_AGGREGATE_NAME = "boot_aggregate"

_BANK_SIZES = digest_sizes(SHA_BANKS)


class BootAggregateMismatch(VerificationFailed):
    """The list's boot_aggregate is not the hash of the (quoted) boot PCRs of its bank."""


def _bank_size(bank: str) -> int:
    size = _BANK_SIZES.get(bank)
    if size is None:
        raise Unsupported(f"IMA replay does not support PCR bank {bank!r}")
    return size


def template_digest(entry: ImaEntry, bank: str) -> bytes:
    """What the kernel extends into ``bank`` for ``entry``: H_bank(template data), or all
    ``0xFF`` for a violation."""
    size = _bank_size(bank)
    if entry.violation:
        return b"\xff" * size
    return hashlib.new(bank, entry.template_data).digest()


def check_template_hashes(ima: ImaList) -> None:
    """Require every listed SHA-1 template hash to match the entry's template data.

    Violations (zero hash) are exempt. Raises ``DigestMismatch`` naming the entry.
    """
    for e in ima.entries:
        if not e.violation and not hmac.compare_digest(
            hashlib.sha1(e.template_data).digest(), e.template_hash
        ):
            raise DigestMismatch(
                "IMA template hash does not match template data",
                seq=e.seq,
                offset=e.offset,
                bank="sha1",
            )


def replay(ima: ImaList, banks: Iterable[str] = ("sha1", "sha256")) -> dict[str, dict[int, bytes]]:
    """Replay every entry into its PCR per bank (untrusted input, so an untrusted result)."""
    out: dict[str, dict[int, bytes]] = {}
    for bank in banks:
        size = _bank_size(bank)
        pcrs: dict[int, bytes] = {}
        for e in ima.entries:
            pcrs[e.pcr] = hashlib.new(
                bank, pcrs.get(e.pcr, bytes(size)) + template_digest(e, bank)
            ).digest()
        out[bank] = pcrs
    return out


@dataclass(frozen=True)
class VerifiedImaList:
    """IMA entries whose replay reproduced the quoted PCRs; built only by :func:`verify_replay`.

    ``unquoted_tail`` counts entries after the verified prefix (measured after the quote); they
    are not in ``entries`` and must not be trusted.
    """

    entries: tuple[ImaEntry, ...]
    unquoted_tail: int
    banks: tuple[str, ...]


def verify_replay(
    ima: ImaList,
    quoted: Mapping[str, Mapping[int, bytes]],
    *,
    allow_unquoted_tail: bool = False,
    pcrs: Collection[int] | None = None,
) -> VerifiedImaList:
    """Check the list against quoted PCR values in every supported bank ``quoted`` carries.

    The listed template hashes must match their data, and replaying the entries must give the
    quoted value of every PCR the list extends and of each of ``pcrs`` when quoted (default: PCR
    10, IMA's). With ``pcrs`` given, an entry extending any other PCR raises: the caller said
    which PCRs IMA accounts for. With ``allow_unquoted_tail`` the longest prefix that matches is
    accepted (the list was read after the quote); otherwise the whole list must match. Raises
    ``ReplayMismatch``.
    """
    check_template_hashes(ima)
    banks = tuple(b for b in quoted if b in _BANK_SIZES)
    if not banks:
        raise Unsupported(f"no IMA-replayable bank among {sorted(quoted)}")
    extended = {e.pcr for e in ima.entries}
    expected = frozenset(pcrs) if pcrs is not None else frozenset({IMA_PCR})
    if pcrs is not None and not extended <= expected:
        stray = sorted(extended - expected)
        raise ReplayMismatch(
            f"IMA list extends PCR(s) {stray}, which the policy does not name as IMA's",
            invalid_pcrs={banks[0]: stray}, first=(banks[0], stray[0]),
        )  # fmt: skip
    for bank in banks:
        missing = sorted(p for p in extended if p not in quoted[bank])
        if missing:
            raise ReplayMismatch(
                f"IMA list extends PCR(s) {missing} not quoted in bank {bank}",
                invalid_pcrs={bank: missing}, first=(bank, missing[0]),
            )  # fmt: skip
    targets = extended | (expected & {p for b in banks for p in quoted[b]})
    state = {b: {p: bytes(_BANK_SIZES[b]) for p in targets} for b in banks}

    def matches() -> bool:
        return all(
            hmac.compare_digest(state[b][p], bytes(quoted[b][p]))
            for b in banks
            for p in targets
            if p in quoted[b]
        )

    verified = 0 if matches() else -1
    for i, e in enumerate(ima.entries):
        for b in banks:
            state[b][e.pcr] = hashlib.new(b, state[b][e.pcr] + template_digest(e, b)).digest()
        if (allow_unquoted_tail or i == len(ima.entries) - 1) and matches():
            verified = i + 1
    if verified < 0 or (not allow_unquoted_tail and verified != len(ima.entries)):
        bad = {
            b: sorted(p for p in targets if p in quoted[b] and state[b][p] != bytes(quoted[b][p]))
            for b in banks
        }
        bad = {b: v for b, v in bad.items() if v}
        first_bank = next(iter(bad), banks[0])
        first_pcr = bad[first_bank][0] if bad else IMA_PCR
        raise ReplayMismatch(
            f"IMA list does not replay to the quoted PCR {first_pcr} ({first_bank})",
            invalid_pcrs=bad, first=(first_bank, first_pcr),
            event_seqs=[e.seq for e in ima.entries if e.pcr == first_pcr],
        )  # fmt: skip
    return VerifiedImaList(ima.entries[:verified], len(ima.entries) - verified, banks)


def boot_aggregate(pcrs: Mapping[int, bytes], bank: str) -> bytes:
    """The kernel's boot_aggregate over one bank: PCRs 0-7 for SHA-1, 0-9 for other banks."""
    last = 7 if bank == "sha1" else 9
    size = _bank_size(bank)
    h = hashlib.new(bank)
    for i in range(last + 1):
        value = pcrs.get(i)
        if value is None or len(value) != size:
            raise BootAggregateMismatch(f"PCR {i} of bank {bank} missing or not {size} bytes")
        h.update(value)
    return h.digest()


def verify_boot_aggregate(ima: ImaList, pcrs_by_bank: Mapping[str, Mapping[int, bytes]]) -> str:
    """Check entry 0 is a boot_aggregate equal to :func:`boot_aggregate` of its bank's PCRs.

    Only meaningful with quoted (or log-replayed-and-quoted) PCR values. Returns the bank used.
    An all-zero boot_aggregate (kernel saw no TPM) fails.
    """
    if not ima.entries or ima.entries[0].path != BOOT_AGGREGATE_NAME:
        raise BootAggregateMismatch("IMA list does not start with a boot_aggregate entry")
    first = ima.entries[0]
    bank = first.file_hash_alg or "sha1"
    if bank not in pcrs_by_bank:
        raise BootAggregateMismatch(f"boot_aggregate is {bank} but no {bank} PCRs were given")
    if first.file_hash is None or not any(first.file_hash):
        raise BootAggregateMismatch(
            "boot_aggregate is all zeros: the kernel measured without a TPM"
        )
    expected = boot_aggregate(pcrs_by_bank[bank], bank)
    if not hmac.compare_digest(expected, first.file_hash):
        raise BootAggregateMismatch(
            f"boot_aggregate {first.file_hash.hex()} != {bank}(PCR0..{7 if bank == 'sha1' else 9}) {expected.hex()}"
        )
    return bank
