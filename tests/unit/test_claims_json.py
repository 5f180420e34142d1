"""A verdict's claims text (``services.verifier.claims_json``) is the canonical JSON of the
claims, with each key database's entry list written once and embedded afterwards.

Real data: the claims of every real corpus log, written without a memo, cold with the verifier's
memo and then with every entry list already remembered there, must equal
``canonical(claims.to_json_dict())`` character for character; so must claims holding text orjson
writes differently (non-ASCII), which take the fallback.
"""

from __future__ import annotations

import dataclasses

import pytest

from services.tpm import parse_event_log, replay, verify_replay
from services.tpm.claims import BootOption, Claims, extract_claims
from services.verifier.claims_json import claims_json
from services.verifier.ear import canonical
from services.verifier.memo import VerifierMemo
from tests.unit.policy_helpers import CORPUS, manifest, real_log_ids


def _claims(entry_id: str, memo: VerifierMemo | None = None) -> Claims:
    entry = manifest().get(entry_id)
    if entry is None:
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    log = parse_event_log((CORPUS / entry["file"]).read_bytes())
    registers = "ccel" if log.events[0].pcr == 1 and log.banks == ("sha384",) else "tpm"
    return extract_claims(verify_replay(log, replay(log)), memo=memo,
                          measurement_registers=registers)  # type: ignore[arg-type]


def test_every_corpus_claims_text_equals_the_canonical_text() -> None:
    memo = VerifierMemo()
    claims = [_claims(i, memo) for i in real_log_ids()]
    with_entries = [c for c in claims if any(db.entries for db in c.key_databases)]
    assert len(with_entries) > 10
    for c in claims:
        assert claims_json(c) == canonical(c.to_json_dict())  # no memo
    for _ in range(2):  # entry lists written, then embedded from the memo
        for c in claims:
            assert claims_json(c, memo) == canonical(c.to_json_dict())
    assert len(memo.entry_json) > 0
    # the same database value read again (another log, the same memo) is the same tuple,
    # so its text is embedded, not written again
    again = _claims(real_log_ids()[0], memo)
    for db in again.key_databases:
        if db.entries:
            found = memo.entry_json.get(id(db.entries))
            assert found is not None and found[0] is db.entries


def test_claims_that_orjson_would_write_differently_take_the_fallback() -> None:
    c = next(c for c in map(_claims, real_log_ids())
             if any(db.entries for db in c.key_databases))
    odd = dataclasses.replace(c, boot_options=(BootOption("Boot0001", "Démarrage \x7f", "", True),))
    text = claims_json(odd, VerifierMemo())
    assert text == canonical(odd.to_json_dict()) == claims_json(odd)
    assert "D\\u00e9marrage \\u007f" in text  # json.dumps escapes both; orjson would not


def test_an_equal_entry_tuple_of_another_identity_gets_the_same_text() -> None:
    c = next(c for c in map(_claims, real_log_ids())
             if any(db.entries for db in c.key_databases))
    db = next(db for db in c.key_databases if db.entries)
    copy = dataclasses.replace(db, entries=tuple(list(db.entries)))
    assert copy.entries is not db.entries
    other = dataclasses.replace(c, key_databases=(copy,))
    memo = VerifierMemo()
    claims_json(c, memo)  # the original tuple's text is remembered
    assert claims_json(other, memo) == canonical(other.to_json_dict())
