"""The Windows module merge is remembered by its exact inputs (``Memo.windows_merges``): the
same blocks give the same claims with or without the memo, and one changed block is a new
entry, never the old answer."""

from __future__ import annotations

from services.tpm.claims import Claims, extract_claims
from services.tpm.eventlog import parse_event_log
from services.tpm.memo import Memo
from services.tpm.replay import verify_replay
from services.verifier.policy.derive import fully_quoted
from tests.conftest import corpus_log


def _claims(raw: bytes, memo: Memo | None) -> Claims:
    log = parse_event_log(raw)
    return extract_claims(verify_replay(log, fully_quoted(log)), memo=memo)


def test_the_merge_is_remembered_per_exact_blocks() -> None:
    memo = Memo()
    w03, w04 = corpus_log("W03"), corpus_log("W04")
    plain = _claims(w03, None)
    assert _claims(w03, memo) == plain == _claims(w03, memo)
    assert len(memo.windows_merges) == 1
    assert _claims(w04, memo) == _claims(w04, None)
    assert len(memo.windows_merges) == 2
    assert plain.windows is not None and len(plain.windows.loaded_modules) == 92
