"""The claims of a verdict as canonical JSON text, each key database's entries written once.

A verdict carries its claims as canonical JSON (:func:`services.verifier.ear.canonical`). Most of
that text, for a real firmware, is the key databases: a Microsoft dbx alone holds hundreds of
entries, and every host of a fleet measures the same db and dbx. With the verifier's memo
(:class:`~services.verifier.memo.VerifierMemo`), claim extraction shares one entry tuple per
distinct database value between logs (:mod:`services.tpm.readings`), so the JSON text of a tuple
is written once, kept in the memo's ``entry_json`` table, and embedded in later verdicts
(``orjson.Fragment``) instead of being converted entry by entry again.

The text is the same as :func:`~services.verifier.ear.canonical_float_free` of
``claims.to_json_dict()``: canonical JSON is compositional (sorted keys inside each object,
compact separators), a fragment is the canonical text of its list, and whenever the enclosing
document would not take orjson's output (non-ASCII, DEL, a value orjson refuses) the whole text
is written by :func:`~services.verifier.ear.canonical` from the plain dict instead.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from services.tpm.claim_records import key_entries_json
from services.tpm.claims import Claims, KeyEntry
from services.verifier.ear import canonical, canonical_float_free, orjson_canonical
from services.verifier.memo import VerifierMemo

__all__ = ["claims_json"]


def _entries_json(memo: VerifierMemo) -> Callable[[tuple[KeyEntry, ...]], orjson.Fragment]:
    """An entry list's canonical JSON, looked up and remembered in ``memo.entry_json`` (keyed
    by the tuple's id; the value holds the tuple, and a hit checks identity)."""
    table = memo.entry_json

    def entries_json(entries: tuple[KeyEntry, ...]) -> orjson.Fragment:
        found = table.get(id(entries))
        if found is not None and found[0] is entries:
            return found[1]
        text = canonical_float_free(key_entries_json(entries))
        fragment = orjson.Fragment(text)
        table.put(id(entries), (entries, fragment), len(text))
        return fragment

    return entries_json


def claims_json(claims: Claims, memo: VerifierMemo | None = None) -> str:
    """``canonical_float_free(claims.to_json_dict())``; with ``memo``, entry lists written once."""
    if memo is None:
        return canonical_float_free(claims.to_json_dict())
    fast = orjson_canonical(claims.to_json_dict(key_entries=_entries_json(memo)))
    return fast if fast is not None else canonical(claims.to_json_dict())
