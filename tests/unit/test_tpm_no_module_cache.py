"""``services/tpm`` computes; it remembers nothing between calls (issue 15, item 3).

Every module of the package is imported and its globals (and the attributes of the classes it
defines) are inspected for memo state: an ``functools.lru_cache``/``functools.cache`` wrapper, an
instance of a memo or cache class (:class:`services.tpm.memo.MemoTable` or anything whose class
name says cache or memo), or a mutable container named like a cache or holding such instances.
The sources are also searched for the decorators themselves. A caller that wants results
remembered passes its own :class:`services.tpm.memo.Memo` (the verifier's is made in
``services.verifier.memo``).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import services.tpm

_PACKAGE_DIR = Path(services.tpm.__file__).resolve().parent
_CACHE_WORD = re.compile(r"cache|memo(?!ryview)", re.IGNORECASE)
_MEMO_GENERIC = re.compile(r"\w*(?:Cache|Memo)\w*\[")
"""An annotation naming a parametrised memo type (``dict[str, FlatMemo[bytes, bytes]]``)."""
_DECORATORS = re.compile(r"\blru_cache\b|\bfunctools\.cache\b|^\s*@cache\b|\bfrom functools "
                         r"import[^\n]*\bcache\b", re.MULTILINE)
_MUTABLE = (dict, list, set, bytearray)


def _modules() -> Iterator[ModuleType]:
    yield services.tpm
    for info in pkgutil.iter_modules([str(_PACKAGE_DIR)]):
        yield importlib.import_module(f"services.tpm.{info.name}")


def _is_memo_object(value: object) -> bool:
    if isinstance(value, functools._lru_cache_wrapper):
        return True
    if hasattr(value, "cache_info") and callable(value):
        return True
    cls = type(value)
    return not isinstance(value, type) and bool(_CACHE_WORD.search(cls.__name__))


def _holds_memo(value: object) -> bool:
    """A container (one level deep) holding memo objects, e.g. a dict of per-bank tables."""
    items: list[object] = []
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, (list, set, tuple, frozenset)):
        items = list(value)
    return any(_is_memo_object(v) for v in items)


def _problems(owner: str, namespace: dict[str, object]) -> Iterator[str]:
    annotations = namespace.get("__annotations__")
    for name, note in (annotations.items() if isinstance(annotations, dict) else ()):
        if name in namespace and _MEMO_GENERIC.search(str(note)):  # e.g. an empty dict of tables
            yield f"{owner}.{name} is annotated as memo state ({note})"
    for name, value in namespace.items():
        if name.startswith("__") and name.endswith("__"):
            continue
        where = f"{owner}.{name}"
        if _is_memo_object(value):
            yield f"{where} is memo state ({type(value).__name__})"
        elif _holds_memo(value):
            yield f"{where} holds memo objects"
        elif isinstance(value, _MUTABLE) and _CACHE_WORD.search(name):
            yield f"{where} is a mutable {type(value).__name__} named like a cache"


def test_no_module_or_class_level_memo_state_in_services_tpm() -> None:
    problems: list[str] = []
    for mod in _modules():
        problems.extend(_problems(mod.__name__, vars(mod)))
        for value in vars(mod).values():
            if isinstance(value, type) and value.__module__ == mod.__name__:
                problems.extend(_problems(f"{mod.__name__}.{value.__name__}",
                                          dict(vars(value))))
    assert problems == []


def _container_sizes() -> dict[str, int]:
    return {f"{mod.__name__}.{name}": len(value) for mod in _modules()
            for name, value in vars(mod).items()
            if isinstance(value, _MUTABLE) and not name.startswith("__")}  # not __all__ & co


def test_reading_every_corpus_log_leaves_module_state_as_it_was() -> None:
    """A table filled lazily under a neutral name (a dict of hash constructors, of dataclass
    field names) is memo state too: running the pipeline must not grow any module global."""
    from services.tpm import parse_event_log, replay, verify_replay
    from services.tpm.claims import extract_claims
    from tests.unit.policy_helpers import CORPUS, manifest, real_log_ids

    ids = real_log_ids()
    if not ids:
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    before = _container_sizes()
    for entry_id in ids:
        log = parse_event_log((CORPUS / manifest()[entry_id]["file"]).read_bytes())
        registers = "ccel" if log.events[0].pcr == 1 and log.banks == ("sha384",) else "tpm"
        claims = extract_claims(verify_replay(log, replay(log)),
                                measurement_registers=registers)  # type: ignore[arg-type]
        claims.to_json_dict()
    assert _container_sizes() == before


def test_no_memoising_decorator_in_services_tpm_sources() -> None:
    found = [f"{path.name}: {m.group(0).strip()}" for path in sorted(_PACKAGE_DIR.glob("*.py"))
             for m in _DECORATORS.finditer(path.read_text())]
    assert found == []


def test_the_check_sees_memo_state() -> None:
    """The inspection above must be able to fail: it flags each kind of memo it looks for."""

    @functools.lru_cache(maxsize=4)
    def square(x: int) -> int:
        return x * x

    class SomeCache:
        pass

    fake = {"square": square, "_ENTRIES": SomeCache(), "_BY_BANK": {"sha256": SomeCache()},
            "_result_cache": {}, "TABLE": {"a": 1}, "SomeCache": SomeCache,
            "_PAD": {b"\x00": memoryview(b"\x00")}, "_BY_KIND": {},
            "_READERS": {}, "__annotations__": {
                "_BY_KIND": "dict[str, FlatMemo[bytes, bytes]]",
                "_READERS": "dict[int, Callable[[Event, Memo | None], Fact]]"}}
    flagged = {p.split(" ")[0] for p in _problems("fake", fake)}
    assert flagged == {"fake.square", "fake._ENTRIES", "fake._BY_BANK", "fake._result_cache",
                       "fake._BY_KIND"}
    assert _DECORATORS.search("@functools.lru_cache(maxsize=8)\ndef f(): ...")
    assert _DECORATORS.search("from functools import cache\n")
    assert not _DECORATORS.search("# no memo here\n")
