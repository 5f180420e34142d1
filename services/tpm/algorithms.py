"""TPM hash algorithms: ``TPM_ALG_ID`` values, bank names, digest sizes and hash constructors.

Reference: TCG Algorithm Registry (rev 1.32), table 3 ``TPM_ALG_ID``. Bank names are the
lower-case names used across hostgate (``"sha1"``, ``"sha256"``, ``"sha384"``, ``"sha512"``,
``"sm3_256"``, and the SHA-3 family), the same spelling ``tpm2_eventlog`` and the corpus
manifest use.

An algorithm id a log declares but hostgate does not know is still parseable (the Spec ID
event gives its digest size); it is named ``"alg_0x00NN"`` and only an operation that must
recompute a digest in that bank raises :class:`~services.tpm.errors.Unsupported`.

:data:`ALGORITHMS` is the one table of ids, names and sizes: other modules derive their bank
tables from it (:data:`SHA_BANKS` for the banks every TPM and every hashlib has).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from services.tpm.errors import Unsupported

__all__ = [
    "ALGORITHMS",
    "SHA_ALGORITHMS",
    "SHA_BANKS",
    "Algorithm",
    "alg_by_id",
    "alg_by_name",
    "bank_name",
    "digest_sizes",
    "hash_constructor",
]

HashConstructor = Callable[..., Any]
"""Called as ``ctor(data=b"")`` like ``hashlib.sha256``; returns a hashlib object."""


@dataclass(frozen=True, slots=True)
class Algorithm:
    """One TPM hash algorithm: registry id, bank name, digest size, hashlib name."""

    alg_id: int
    name: str
    digest_size: int
    hashlib_name: str


ALGORITHMS: tuple[Algorithm, ...] = (
    Algorithm(0x0004, "sha1", 20, "sha1"),
    Algorithm(0x000B, "sha256", 32, "sha256"),
    Algorithm(0x000C, "sha384", 48, "sha384"),
    Algorithm(0x000D, "sha512", 64, "sha512"),
    Algorithm(0x0012, "sm3_256", 32, "sm3"),
    Algorithm(0x0027, "sha3_256", 32, "sha3_256"),
    Algorithm(0x0028, "sha3_384", 48, "sha3_384"),
    Algorithm(0x0029, "sha3_512", 64, "sha3_512"),
)

SHA_BANKS: Final[tuple[str, ...]] = ("sha1", "sha256", "sha384", "sha512")
"""The SHA-1 and SHA-2 banks, in :data:`ALGORITHMS` order: what every hashlib provides and what
IMA replay, PCR policies of credentials, the simulator's log builder and the IMA CLI take."""

_BY_ID: Final[Mapping[int, Algorithm]] = MappingProxyType({a.alg_id: a for a in ALGORITHMS})
_BY_NAME: Final[Mapping[str, Algorithm]] = MappingProxyType({a.name: a for a in ALGORITHMS})
SHA_ALGORITHMS: Final[tuple[Algorithm, ...]] = tuple(_BY_NAME[name] for name in SHA_BANKS)
"""The :class:`Algorithm` of each of :data:`SHA_BANKS`, in that order."""


def _constructor(alg: Algorithm) -> HashConstructor | None:
    """hashlib's constructor for ``alg`` (``ctor(data)``), None if this OpenSSL lacks it."""
    hashlib_name = alg.hashlib_name
    try:
        hashlib.new(hashlib_name)
    except ValueError:
        return None
    direct = getattr(hashlib, hashlib_name, None)
    if callable(direct):
        ctor: HashConstructor = direct
        return ctor
    return lambda data=b"": hashlib.new(hashlib_name, data)


_CONSTRUCTORS: Final[Mapping[str, HashConstructor | None]] = MappingProxyType(
    {a.name: _constructor(a) for a in ALGORITHMS})
"""Bank name -> hash constructor (None: not available in this build), looked up once at import."""


def digest_sizes(names: Iterable[str]) -> dict[str, int]:
    """Bank name -> digest size for each of ``names`` (all known: a KeyError otherwise)."""
    return {name: _BY_NAME[name].digest_size for name in names}


def alg_by_id(alg_id: int) -> Algorithm | None:
    """The known algorithm with this ``TPM_ALG_ID``, or ``None``."""
    return _BY_ID.get(alg_id)


def alg_by_name(name: str) -> Algorithm | None:
    """The known algorithm with this bank name (``"sha256"``), or ``None``."""
    return _BY_NAME.get(name)


def bank_name(alg_id: int) -> str:
    """Bank name of an algorithm id; unknown ids become ``"alg_0x00NN"``."""
    alg = _BY_ID.get(alg_id)
    return alg.name if alg is not None else f"alg_0x{alg_id:04x}"


def hash_constructor(name: str) -> HashConstructor:
    """A constructor (``ctor(data)``) of a hashlib object for bank ``name``.

    Raises ``Unsupported`` for an unknown bank, or for SM3 when this Python's OpenSSL lacks it.
    """
    ctor = _CONSTRUCTORS.get(name)
    if ctor is not None:
        return ctor
    if name not in _CONSTRUCTORS:
        raise Unsupported(f"hash algorithm {name!r} is not supported")
    raise Unsupported(f"hash algorithm {name!r} is not available in this Python/OpenSSL build")
