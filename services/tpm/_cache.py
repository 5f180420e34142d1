"""Bounded, exact-key memo caches for pure decoders whose inputs recur across a fleet.

A fleet boots the same firmware with the same Secure Boot databases, so PK/KEK/db/dbx values,
the X.509 certificates inside them and the hosts' enrolled AK public areas arrive byte for byte
identical in evidence after evidence. Decoding them is pure: the result is a function of the
bytes alone. :class:`BoundedCache` remembers such results under a key derived from the exact
input (the input itself, or its SHA-256), evicts the least recently used entry beyond
``maxsize``, and never stores a failure (errors carry per-log offsets and are re-raised fresh).

Caching must never change a result: :func:`caching_disabled` turns every cache off for the
duration of a ``with`` block so tests can compare cached and uncached outputs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Generic, TypeVar

__all__ = ["BoundedCache", "FlatMemo", "caching_disabled", "clear_all"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_registry: list[BoundedCache[object, object] | FlatMemo[object, object]] = []
_disabled_in: set[int] = set()
"""Idents of threads inside :func:`caching_disabled` (empty in production: one truth test)."""


_NOTHING: Mapping[object, object] = MappingProxyType({})


def _is_enabled() -> bool:
    return not _disabled_in or threading.get_ident() not in _disabled_in


class BoundedCache(Generic[K, V]):
    """An LRU map of at most ``maxsize`` entries; :meth:`get_or_compute` memoises a pure call."""

    __slots__ = ("_data", "_lock", "_weights", "hits", "max_weight", "maxsize", "misses",
                 "name", "weight")

    def __init__(self, name: str, maxsize: int, *, max_weight: int | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.name = name
        self.maxsize = maxsize
        self.max_weight = max_weight
        """Optional bound on the summed weights given to :meth:`put` (e.g. bytes held)."""
        self.weight = 0
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[K, V] = OrderedDict()
        self._weights: dict[K, int] = {}
        self._lock = threading.Lock()
        _registry.append(self)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._data)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """The value remembered for ``key``, else ``compute()`` (remembered if it returns)."""
        if not _is_enabled():
            return compute()
        data = self._data
        with self._lock:
            try:
                value = data[key]
            except KeyError:
                pass
            else:
                data.move_to_end(key)
                self.hits += 1
                return value
        value = compute()  # may raise: failures are never stored
        self.put(key, value)
        return value

    def get(self, key: K) -> V | None:
        """The value remembered for ``key`` (counted as a hit), else None (not counted: the
        caller decides with :meth:`put` whether its result is worth remembering)."""
        if _disabled_in and not _is_enabled():
            return None
        # No lock on this hot path: dict.get and move_to_end are each atomic under the GIL;
        # an entry evicted in between only makes move_to_end raise, and the value stands.
        value = self._data.get(key)
        if value is not None:
            try:  # noqa: SIM105  (contextlib.suppress costs more than the lookup it guards)
                self._data.move_to_end(key)
            except KeyError:
                pass
            self.hits += 1
        return value

    def entries(self) -> Mapping[K, V]:
        """The remembered entries, for a caller reading many keys in a hot loop: its reads
        neither refresh an entry's age (eviction is then first-in-first-out for them) nor count
        as hits (add them to :attr:`hits`). An empty mapping while caching is off."""
        if _disabled_in and not _is_enabled():
            return _NOTHING  # type: ignore[return-value]  # empty: no K or V in it
        return self._data

    def put(self, key: K, value: V, weight: int = 0) -> None:
        """Remember ``value`` for ``key``; evict least recently used entries beyond
        ``maxsize`` entries or ``max_weight`` summed weight. A no-op while caching is off."""
        if not _is_enabled():
            return
        if self.max_weight is not None and weight > self.max_weight:
            return
        data, weights = self._data, self._weights
        with self._lock:
            self.misses += 1
            self.weight += weight - weights.pop(key, 0)
            data[key] = value
            data.move_to_end(key)
            if weight:
                weights[key] = weight
            while len(data) > self.maxsize or (
                self.max_weight is not None and self.weight > self.max_weight
            ):
                old, _ = data.popitem(last=False)
                self.weight -= weights.pop(old, 0)

    def discard(self, key: K) -> None:
        """Forget ``key``'s entry, if any."""
        with self._lock:
            if self._data.pop(key, None) is not None:
                self.weight -= self._weights.pop(key, 0)

    def clear(self) -> None:
        """Forget every entry and reset the counters."""
        with self._lock:
            self._data.clear()
            self._weights.clear()
            self.hits = self.misses = self.weight = 0


class FlatMemo(Generic[K, V]):
    """A plain dict for a pure function too cheap for :class:`BoundedCache`'s bookkeeping (one
    hash over a few dozen bytes): callers read and fill :meth:`table` directly, and it is
    emptied whole once it holds more than ``maxsize`` entries, so a stream of unique inputs
    costs recomputation, never memory."""

    __slots__ = ("_data", "maxsize", "name")

    def __init__(self, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.name = name
        self.maxsize = maxsize
        self._data: dict[K, V] = {}
        _registry.append(self)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._data)

    def table(self) -> dict[K, V]:
        """The dict to use for one batch of calls, emptied first if it outgrew ``maxsize``
        (a batch may add its own entries on top); a throwaway dict while caching is off."""
        if _disabled_in and not _is_enabled():
            return {}
        data = self._data
        if len(data) > self.maxsize:
            data.clear()
        return data

    def clear(self) -> None:
        """Forget every entry."""
        self._data.clear()


def clear_all() -> None:
    """Empty every cache of this process."""
    for cache in _registry:
        cache.clear()


@contextmanager
def caching_disabled() -> Iterator[None]:
    """Within the block (this thread only), every :class:`BoundedCache` and :class:`FlatMemo`
    computes afresh."""
    me = threading.get_ident()
    nested = me in _disabled_in
    _disabled_in.add(me)
    try:
        yield
    finally:
        if not nested:
            _disabled_in.discard(me)
