"""A verdict's claims text (``services.verifier.claims_json``) is the canonical JSON of the
claims, with each key database's entry list written once and embedded afterwards.

Real data: the claims of every real corpus log, written cold and then with every entry list
already remembered, must equal ``canonical(claims.to_json_dict())`` character for character;
so must claims holding text orjson writes differently (non-ASCII), which take the fallback.
"""

from __future__ import annotations

import dataclasses

import pytest

from services.tpm import parse_event_log, replay, verify_replay
from services.tpm._cache import clear_all
from services.tpm.claims import BootOption, Claims, extract_claims
from services.verifier.claims_json import _ENTRY_LISTS, claims_json
from services.verifier.ear import canonical
from tests.unit.policy_helpers import CORPUS, manifest, real_log_ids


def _claims(entry_id: str) -> Claims:
    entry = manifest().get(entry_id)
    if entry is None:
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    log = parse_event_log((CORPUS / entry["file"]).read_bytes())
    registers = "ccel" if log.events[0].pcr == 1 and log.banks == ("sha384",) else "tpm"
    return extract_claims(verify_replay(log, replay(log)),
                          measurement_registers=registers)  # type: ignore[arg-type]


def test_every_corpus_claims_text_equals_the_canonical_text() -> None:
    clear_all()
    claims = [_claims(i) for i in real_log_ids()]
    with_entries = [c for c in claims if any(db.entries for db in c.key_databases)]
    assert len(with_entries) > 10
    for _ in range(2):  # entry lists written, then embedded from memory
        for c in claims:
            assert claims_json(c) == canonical(c.to_json_dict())
    assert _ENTRY_LISTS.hits > 0


def test_claims_that_orjson_would_write_differently_take_the_fallback() -> None:
    c = next(c for c in map(_claims, real_log_ids())
             if any(db.entries for db in c.key_databases))
    odd = dataclasses.replace(c, boot_options=(BootOption("Boot0001", "Démarrage \x7f", "", True),))
    text = claims_json(odd)
    assert text == canonical(odd.to_json_dict())
    assert "D\\u00e9marrage \\u007f" in text  # json.dumps escapes both; orjson would not


def test_an_equal_entry_tuple_of_another_identity_gets_the_same_text() -> None:
    c = next(c for c in map(_claims, real_log_ids())
             if any(db.entries for db in c.key_databases))
    db = next(db for db in c.key_databases if db.entries)
    copy = dataclasses.replace(db, entries=tuple(list(db.entries)))
    assert copy.entries is not db.entries
    other = dataclasses.replace(c, key_databases=(copy,))
    assert claims_json(other) == canonical(other.to_json_dict())
