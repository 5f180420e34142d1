"""The claims of a verdict as canonical JSON text, each key database's entries written once.

A verdict carries its claims as canonical JSON (:func:`services.verifier.ear.canonical`). Most of
that text, for a real firmware, is the key databases: a Microsoft dbx alone holds hundreds of
entries, and every host of a fleet measures the same db and dbx. Claim extraction already
shares one entry tuple per distinct database value between logs
(:mod:`services.tpm.readings`), so the JSON text of a tuple is written once and embedded in
later verdicts (``orjson.Fragment``) instead of being converted entry by entry again.

The text is the same as :func:`~services.verifier.ear.canonical_float_free` of
``claims.to_json_dict()``: canonical JSON is compositional (sorted keys inside each object,
compact separators), a fragment is the canonical text of its list, and whenever the enclosing
document would not take orjson's output (non-ASCII, DEL, a value orjson refuses) the whole text
is written by :func:`~services.verifier.ear.canonical` from the plain dict instead.
"""

from __future__ import annotations

from typing import Final

import orjson

from services.tpm._cache import BoundedCache
from services.tpm.claim_records import key_entries_json
from services.tpm.claims import Claims, KeyEntry
from services.verifier.ear import canonical, canonical_float_free, orjson_canonical

__all__ = ["claims_json"]

_ENTRY_LISTS: Final[BoundedCache[int, tuple[tuple[KeyEntry, ...], orjson.Fragment]]] = (
    BoundedCache("claims_key_entry_json", 1024, max_weight=16 * 1024 * 1024))
"""id(entry tuple) -> (that tuple, its canonical JSON); weight = text length. The value holds
the tuple itself, so its id cannot be reused by another object while the entry lives; a hit
also checks identity."""


def _entries_json(entries: tuple[KeyEntry, ...]) -> orjson.Fragment:
    found = _ENTRY_LISTS.get(id(entries))
    if found is not None and found[0] is entries:
        return found[1]
    text = canonical_float_free(key_entries_json(entries))
    fragment = orjson.Fragment(text)
    _ENTRY_LISTS.put(id(entries), (entries, fragment), len(text))
    return fragment


def claims_json(claims: Claims) -> str:
    """``canonical_float_free(claims.to_json_dict())``, with entry lists written once."""
    fast = orjson_canonical(claims.to_json_dict(key_entries=_entries_json))
    return fast if fast is not None else canonical(claims.to_json_dict())
