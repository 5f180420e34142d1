"""A caller-owned memo for the few decoders of this package whose inputs recur across a fleet.

Every function of :mod:`services.tpm` computes its result from its arguments; nothing in the
package remembers anything between calls. A fleet boots the same firmware, so some inputs arrive
byte for byte again in evidence after evidence: per-event readings, Secure Boot variable values
and the X.509 certificates in them, device paths, Spec ID events, PCR extends, the hosts' AK
public areas. The functions that decode those accept an optional ``memo=`` (a :class:`Memo`):
without one (the default) they compute; with one they look up a key made of the exact input (or
its SHA-256) and remember a successful result. Only callers create a :class:`Memo`, and each
owns its bounds and lifetime. The verifier's shell makes one (``services.verifier.memo``, whose
docstring argues why a memo never changes a result), the collector's another for the enrolled
AKs it decodes at every signed request and evidence; the CLI and agent pass none.

A :class:`Memo` is not thread-safe: one owner, one thread (the runtime plans on one thread).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:
    from services.tpm.claim_records import KeyEntry
    from services.tpm.devicepath import DevicePath
    from services.tpm.eventlog import SpecIdEvent
    from services.tpm.keys import PublicKey, TpmPublic
    from services.tpm.readings import Reading
    from services.tpm.sipa import WindowsBootConfig

__all__ = ["BOUNDS", "Bound", "Memo", "MemoTable"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Bound(NamedTuple):
    """How much one :class:`MemoTable` holds: entries, and summed weights (bytes of input)."""

    max_entries: int
    max_bytes: int


_MIB: Final = 1024 * 1024
BOUNDS: Final[Mapping[str, Bound]] = MappingProxyType({
    "readings": Bound(16_384, 32 * _MIB),
    "key_entries": Bound(64, 16 * _MIB),
    "x509_subjects": Bound(2_048, 8 * _MIB),
    "device_paths": Bound(1_024, 1 * _MIB),
    "spec_ids": Bound(256, _MIB // 4),
    "extends": Bound(32_768, 4 * _MIB),
    "tpm_publics": Bound(4_096, 4 * _MIB),
    "crypto_keys": Bound(4_096, 4 * _MIB),
    "windows_merges": Bound(256, 8 * _MIB),
})
"""The default bound of each table of a :class:`Memo` (``extends``: per bank). Weights are the
bytes of the input an entry stands for (an event's data, a variable value, a DER, a public
area, the two digests of an extend)."""


class MemoTable(Generic[K, V]):
    """A map bounded by entries and by summed weights. :meth:`put` beyond either bound drops
    the oldest entries (first in, first out: a lookup never refreshes an entry); an entry
    heavier than the whole byte bound is not kept. :attr:`get` is the map's own ``get``, for
    hot loops."""

    __slots__ = ("_data", "_weights", "bound", "get", "weight")

    def __init__(self, bound: Bound) -> None:
        if bound.max_entries < 1 or bound.max_bytes < 1:
            raise ValueError("a memo table must hold at least one entry and one byte")
        self.bound = bound
        self.weight = 0
        """Summed weights of the entries held."""
        self._data: OrderedDict[K, V] = OrderedDict()
        self._weights: dict[K, int] = {}
        self.get = self._data.get
        """The value remembered for a key, else None."""

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: K, value: V, weight: int) -> None:
        """Remember ``value`` (a success: never an error) for ``key``."""
        bound = self.bound
        if weight > bound.max_bytes:
            return
        data, weights = self._data, self._weights
        self.weight += weight - weights.get(key, 0)
        data[key] = value
        weights[key] = weight
        while len(data) > bound.max_entries or self.weight > bound.max_bytes:
            old, _ = data.popitem(last=False)
            self.weight -= weights.pop(old)

    def discard(self, key: K) -> None:
        """Forget ``key``'s entry, if any."""
        if self._data.pop(key, None) is not None:
            self.weight -= self._weights.pop(key)

    def clear(self) -> None:
        """Forget every entry."""
        self._data.clear()
        self._weights.clear()
        self.weight = 0


class Memo:
    """The tables one caller keeps (see the module docstring); each bounded by :data:`BOUNDS`
    unless ``bounds`` names others. Which function reads which table is said in its docstring.
    """

    __slots__ = ("_bounds", "_extends", "crypto_keys", "device_paths", "key_entries",
                 "readings", "spec_ids", "tpm_publics", "windows_merges", "x509_subjects")

    def __init__(self, bounds: Mapping[str, Bound] = BOUNDS) -> None:
        unknown = set(bounds) - set(BOUNDS)
        if unknown:
            raise ValueError(f"no memo table named {', '.join(sorted(unknown))}")
        b = {**BOUNDS, **bounds}
        self._bounds = b
        self.readings: MemoTable[tuple[object, ...], Reading] = MemoTable(b["readings"])
        self.key_entries: MemoTable[bytes, tuple[KeyEntry, ...]] = MemoTable(b["key_entries"])
        self.x509_subjects: MemoTable[bytes, tuple[str | None, str | None]] = MemoTable(
            b["x509_subjects"])
        self.device_paths: MemoTable[tuple[bytes, bool], DevicePath] = MemoTable(
            b["device_paths"])
        self.spec_ids: MemoTable[tuple[bytes, int], SpecIdEvent] = MemoTable(b["spec_ids"])
        self.tpm_publics: MemoTable[bytes, TpmPublic] = MemoTable(b["tpm_publics"])
        self.crypto_keys: MemoTable[tuple[object, ...], PublicKey] = MemoTable(b["crypto_keys"])
        self.windows_merges: MemoTable[tuple[object, ...], WindowsBootConfig] = MemoTable(
            b["windows_merges"])
        self._extends: dict[str, MemoTable[tuple[bytes, bytes], bytes]] = {}

    def extends(self, bank: str) -> MemoTable[tuple[bytes, bytes], bytes]:
        """The remembered PCR extends of ``bank``: (previous value, digest) -> new value."""
        table = self._extends.get(bank)
        if table is None:
            table = self._extends[bank] = MemoTable(self._bounds["extends"])
        return table

    def tables(self) -> dict[str, MemoTable[object, object]]:
        """Every table by name (``extends:<bank>`` per bank; a subclass's tables too)."""
        out: dict[str, MemoTable[object, object]] = {}
        for cls in reversed(type(self).__mro__):
            for name in getattr(cls, "__slots__", ()):
                value = getattr(self, name)
                if isinstance(value, MemoTable):
                    out[name] = value
        for bank, table in self._extends.items():
            out[f"extends:{bank}"] = table  # type: ignore[assignment]
        return out

    def clear(self) -> None:
        """Forget every entry of every table."""
        for table in self.tables().values():
            table.clear()
