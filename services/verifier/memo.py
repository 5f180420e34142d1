"""The verifier's memo, and why remembering never changes a verdict.

A fleet boots identical firmware, so the evidence of one host repeats what earlier hosts sent,
byte for byte: the same boot events, PK/KEK/db/dbx values and their certificates, device paths,
Spec ID events, PCR extends, and each host's enrolled AK public area at every attestation. The
verifier's config (:meth:`services.verifier.config.VerifierConfig.from_env`) makes one
:class:`VerifierMemo` for the life of its worker and :func:`services.verifier.core.appraise`
hands it to the pure functions of :mod:`services.tpm` (``memo=``) and to
:func:`~services.verifier.claims_json.claims_json`. Audit replay, the CLI and the agent pass
none (they compute), or make their own; the collector's config makes a plain
:class:`services.tpm.memo.Memo` for the AKs. Only the runtime's one planner thread calls
``decide``, so a memo needs no lock; it must not be shared between threads.

Why a verdict with the memo is byte for byte the verdict without it:

1. *Keys are exact inputs.* Every table is keyed by the exact input bytes the result is a
   function of, or by their SHA-256 where the input is large (event data over 1 KiB, key
   database values, certificate DER), together with every other argument the result depends
   on (a reading's key holds the measurement registers, PCR, event type, data and every
   (bank, digest); a Spec ID event's the digest-count limit; a device path's ``multiple``).
   Python compares dict keys by equality, so a hash collision cannot make one input read as
   another, and a SHA-256 collision is out of any host's reach. The one exception is
   :attr:`VerifierMemo.entry_json`, keyed by ``id()`` of a key-entry tuple: its value holds that
   tuple, so the id cannot be reused while the entry lives, and a hit also checks identity.
2. *The functions are pure* (:mod:`services.tpm` reads no clock, environment or state), so the
   remembered result is what the call would compute again.
3. *Values are immutable* (frozen dataclasses, tuples, bytes, strings, ``cryptography`` public
   keys, ``orjson.Fragment`` text), so one verdict cannot alter what another one reads.
4. *Failures are never stored*, nor any result that names this log's byte offsets or event
   numbers (a reading whose decoding failed: ``Reading.rememberable``): an exception propagates
   before anything is put, so every error names the offsets of the evidence at hand. An
   unparseable certificate's message names no offset and is remembered as an outcome.
5. *Bounded by entries and bytes.* Each table holds at most the entries and the summed weights
   (bytes of the inputs its entries stand for) of :data:`services.tpm.memo.BOUNDS`, plus
   :data:`ENTRY_JSON_BOUND` here; an entry heavier than its table's byte bound is not kept.
   Eviction is first in, first out: a hit never refreshes an entry, the oldest goes first. A
   host sending ever new inputs therefore costs recomputation and evicts others' entries; it
   cannot grow memory or change a result.

``tests/unit/test_verifier_caching.py`` appraises the same evidence with and without a memo
(cold and warm) and requires equal verdicts and claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from services.tpm.memo import BOUNDS, Bound, Memo, MemoTable

if TYPE_CHECKING:
    import orjson

    from services.tpm.claim_records import KeyEntry

__all__ = ["ENTRY_JSON_BOUND", "VerifierMemo"]

ENTRY_JSON_BOUND: Final = Bound(1_024, 16 * 1024 * 1024)
"""Key-entry lists whose canonical JSON is remembered; weight = the text's length."""


class VerifierMemo(Memo):
    """The :class:`~services.tpm.memo.Memo` tables plus :attr:`entry_json` (see the module
    docstring); one per verifier worker, made by its shell."""

    __slots__ = ("entry_json",)

    def __init__(self, bounds: Mapping[str, Bound] = BOUNDS,
                 entry_json: Bound = ENTRY_JSON_BOUND) -> None:
        super().__init__(bounds)
        self.entry_json: MemoTable[int, tuple[tuple[KeyEntry, ...], orjson.Fragment]] = (
            MemoTable(entry_json))
        """id(key-entry tuple) -> (that tuple, its canonical JSON), for
        :func:`~services.verifier.claims_json.claims_json`."""
