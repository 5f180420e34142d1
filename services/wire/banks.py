"""PCR banks on the wire: the Avro ``hostgate.HashAlg`` symbols and hostgate's bank names.

Records name a bank by a ``hostgate.HashAlg`` symbol (``"SHA256"``); everything else in
hostgate (``services.tpm``, policies, the agent's TPM) by its bank name (``"sha256"``,
:data:`services.tpm.algorithms.ALGORITHMS`). A symbol is its bank name in upper case. The schema
names the banks of :data:`WIRE_BANKS`, and ``UNKNOWN``, what a reader decodes a symbol it does not
know to: it names no bank, so it is in neither table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from services.tpm.algorithms import SHA_ALGORITHMS, SHA_BANKS

__all__ = [
    "BANK_OF_SYMBOL",
    "BANK_PREFERENCE",
    "SHA_BANK_OF_SIZE",
    "STRONG_BANKS",
    "SYMBOLS",
    "SYMBOL_OF_BANK",
    "UNKNOWN_SYMBOL",
    "WIRE_BANKS",
]

WIRE_BANKS: Final[tuple[str, ...]] = (*SHA_BANKS, "sm3_256")
"""The banks ``hostgate.HashAlg`` names, in the order of its symbols."""

UNKNOWN_SYMBOL: Final = "UNKNOWN"
"""The ``hostgate.HashAlg`` reader default: a bank this schema version does not know."""

SYMBOL_OF_BANK: Final[Mapping[str, str]] = MappingProxyType({b: b.upper() for b in WIRE_BANKS})
"""Bank name -> ``hostgate.HashAlg`` symbol (``"sha256"`` -> ``"SHA256"``)."""

BANK_OF_SYMBOL: Final[Mapping[str, str]] = MappingProxyType(
    {s: b for b, s in SYMBOL_OF_BANK.items()})
"""``hostgate.HashAlg`` symbol -> bank name (``UNKNOWN`` is not in it)."""

SYMBOLS: Final[tuple[str, ...]] = tuple(SYMBOL_OF_BANK.values())
"""Every ``hostgate.HashAlg`` symbol that names a bank, in schema order."""

STRONG_BANKS: Final[frozenset[str]] = frozenset(WIRE_BANKS) - {"sha1"}
"""Banks stronger than SHA-1 (a SHA-1-only quote is refused when one of these is active)."""

BANK_PREFERENCE: Final[tuple[str, ...]] = (
    "sha256", *(b for b in WIRE_BANKS if b not in ("sha1", "sha256")), "sha1")
"""The bank whose digest stands for an event carrying several: SHA-256 (what policies require
by default), then the other strong banks, SHA-1 last."""

SHA_BANK_OF_SIZE: Final[Mapping[int, str]] = MappingProxyType(
    {a.digest_size: a.name for a in SHA_ALGORITHMS})
"""Digest size -> the SHA-1/SHA-2 bank of that size: how a digest that does not name its
algorithm (a Windows SIPA hash) is read."""
