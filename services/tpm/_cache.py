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
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

__all__ = ["BoundedCache", "caching_disabled", "clear_all"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_registry: list[BoundedCache[object, object]] = []
_enabled = threading.local()


def _is_enabled() -> bool:
    return getattr(_enabled, "on", True)


class BoundedCache(Generic[K, V]):
    """An LRU map of at most ``maxsize`` entries; :meth:`get_or_compute` memoises a pure call."""

    __slots__ = ("_data", "_lock", "hits", "maxsize", "misses", "name")

    def __init__(self, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.name = name
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[K, V] = OrderedDict()
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
        with self._lock:
            self.misses += 1
            data[key] = value
            data.move_to_end(key)
            while len(data) > self.maxsize:
                data.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every entry and reset the counters."""
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


def clear_all() -> None:
    """Empty every cache of this process."""
    for cache in _registry:
        cache.clear()


@contextmanager
def caching_disabled() -> Iterator[None]:
    """Within the block (this thread only), every :class:`BoundedCache` computes afresh."""
    before = _is_enabled()
    _enabled.on = False
    try:
        yield
    finally:
        _enabled.on = before
