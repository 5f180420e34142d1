"""The issuer's CRL, built from the issuer's own state, and a tiny HTTP endpoint serving it.

Source of truth: the issuer's ``hosts`` changelog (``hostgate.issuer.hosts.changelog.v1``,
compacted, ``hostgate.IssuerHostState`` per host), written in the same transactions as
``attest.hosts.v1``. It is the changelog and not ``attest.hosts.v1`` that is read because only
the full state lists every revoked, unexpired certificate (``attest.hosts.v1`` carries the
public projection: the current certificate of a TRUSTED host, the incident of a QUARANTINED
one). Both are read read_committed, so an aborted transaction's revocation is never listed and a
committed one always is.

* ``fold_states`` (pure): changelog records in offset order → the newest state per host. A record
  that does not parse does not erase what an earlier one revoked (fail closed: the host's last
  good state is kept) and is reported.
* ``current_crl`` (pure but for the CA's signature): the CRL of those states at a given time.
* ``read_changelog`` / ``CrlService``: the Kafka side (no consumer group, nothing committed).
  ``CrlService`` follows the changelog, re-signs when a revocation appears and, at the latest,
  halfway to ``nextUpdate``, and serves ``/crl`` (DER, ``application/pkix-crl``), ``/crl.pem``
  and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from services.errors import HostgateError
from services.issuer.ca import IssuingCA
from services.issuer.certificates import build_crl
from services.issuer.core import crl_entries
from services.issuer.errors import IssuerError
from services.issuer.hoststate import HostTrustState
from services.runtime.http import TinyHttpServer
from services.runtime.readers import groupless_consumer, read_to_end, rewind, topic_partitions
from services.wire.subjects import ISSUER_HOST_STATE

DEFAULT_INTERVAL: Final = dt.timedelta(hours=1)
#: Most hosts a CRL builder keeps in memory (a hostile or runaway topic cannot exhaust it).
MAX_HOSTS: Final = 1_000_000


class CrlSourceError(HostgateError):
    """The changelog cannot be read, or holds records that do not parse (names where)."""

    retriable = True


@dataclass(frozen=True)
class ChangelogRecord:
    """One record of the issuer's hosts changelog (value None: a tombstone)."""

    key: str
    value: Mapping[str, Any] | None
    coordinates: str


@dataclass
class FoldResult:
    """The newest state per host, and what could not be read."""

    states: dict[str, HostTrustState] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def fold_states(records: Iterable[ChangelogRecord], into: FoldResult | None = None
                ) -> FoldResult:
    """Fold changelog records (offset order per partition) into the newest state per host."""
    out = into if into is not None else FoldResult()
    for rec in records:
        if rec.value is None:
            out.states.pop(rec.key, None)
            continue
        try:
            state = HostTrustState.from_record(rec.value)
        except (IssuerError, KeyError, TypeError, ValueError) as exc:
            out.problems.append(f"{rec.coordinates}: host {rec.key[:80]!r}: "
                                f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        if state.host_id != rec.key:
            out.problems.append(f"{rec.coordinates}: record for {state.host_id!r} under key "
                                f"{rec.key[:80]!r}")
            continue
        if rec.key not in out.states and len(out.states) >= MAX_HOSTS:
            out.problems.append(f"{rec.coordinates}: over {MAX_HOSTS} hosts; not kept")
            continue
        out.states[rec.key] = state
    return out


def current_crl(ca: IssuingCA, states: Iterable[HostTrustState], *, now: dt.datetime,
                interval: dt.timedelta = DEFAULT_INTERVAL) -> x509.CertificateRevocationList:
    """The CRL listing every revoked certificate of ``states``, valid ``[now, now+interval]``."""
    return build_crl(ca, crl_entries(states), this_update=now, next_update=now + interval)


def crl_summary(crl: x509.CertificateRevocationList) -> dict[str, Any]:
    """A JSON-friendly description of a CRL (no key material: it has none)."""
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    next_update = crl.next_update_utc
    return {
        "issuer": crl.issuer.rfc4514_string(),
        "crl_number": number,
        "this_update": crl.last_update_utc.isoformat(),
        "next_update": next_update.isoformat() if next_update else None,
        "revoked": [{"serial": format(r.serial_number, "x"),
                     "revoked_at": r.revocation_date_utc.isoformat()} for r in crl],
    }


async def read_changelog(bootstrap: str, topic: str, timeout_s: float = 60.0
                         ) -> list[ChangelogRecord]:
    """Every committed record of ``topic`` up to its end now (read_committed, no group)."""
    async with groupless_consumer(bootstrap, error=CrlSourceError) as consumer:
        return await _Follower(consumer, topic).read_to_end(bootstrap, timeout_s)


class _Follower:
    """Reads a topic's partitions from the beginning, decoding values with the codec."""

    def __init__(self, consumer: Any, topic: str) -> None:
        from services.runtime.codec import Codec

        self.consumer = consumer
        self.topic = topic
        self.codec = Codec.load()
        self.tps: list[Any] = []

    def _decode(self, rec: Any) -> ChangelogRecord | None:
        where = f"{rec.topic}[{rec.partition}]@{rec.offset}"
        if rec.key is None:
            return None
        key = rec.key.decode("utf-8", "replace")
        if rec.value is None:
            return ChangelogRecord(key, None, where)
        try:
            decoded = self.codec.decode(rec.value, expected={ISSUER_HOST_STATE})
        except HostgateError as exc:
            return ChangelogRecord(key, {"_undecodable": str(exc)[:200]}, where)
        return ChangelogRecord(key, decoded.record, where)

    async def read_to_end(self, bootstrap: str, timeout_s: float) -> list[ChangelogRecord]:
        """Assign every partition from its beginning and read up to the end offsets now (and
        whatever came with the last fetch: ``poll`` continues from there)."""
        from aiokafka import TopicPartition

        parts = await topic_partitions(bootstrap, self.topic)
        if not parts:
            raise CrlSourceError(f"topic {self.topic} does not exist")
        self.tps = [TopicPartition(self.topic, p) for p in parts]
        ends = await rewind(self.consumer, self.tps)
        out: list[ChangelogRecord] = []
        async for rec in read_to_end(self.consumer, self.tps, ends, timeout_s=timeout_s,
                                     timed_out=lambda: CrlSourceError(
                                         f"could not read {self.topic} to its end in "
                                         f"{timeout_s:.0f}s")):
            decoded = self._decode(rec)
            if decoded is not None:
                out.append(decoded)
        return out

    async def poll(self, timeout_ms: int = 500) -> list[ChangelogRecord]:
        batch = await self.consumer.getmany(*self.tps, timeout_ms=timeout_ms)
        out = []
        for tp in self.tps:
            for rec in batch.get(tp, []):
                decoded = self._decode(rec)
                if decoded is not None:
                    out.append(decoded)
        return out


class CrlService:
    """Follows the changelog and serves the current CRL over HTTP (see the module docstring).

    ``clock`` returns the current UTC time (the shell passes the real clock; tests may not).
    """

    def __init__(self, ca: IssuingCA, bootstrap: str, topic: str, *,
                 interval: dt.timedelta = DEFAULT_INTERVAL,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 on_event: Callable[[str, Mapping[str, Any]], None] | None = None) -> None:
        self.ca, self.bootstrap, self.topic = ca, bootstrap, topic
        self.interval, self.clock = interval, clock
        self.fold = FoldResult()
        self.crl: x509.CertificateRevocationList | None = None
        self._revoked: frozenset[str] = frozenset()
        # HEAD too: gatekeepers check Content-Length before fetching.
        self._http = TinyHttpServer(self._route, methods=(b"GET", b"HEAD"),
                                    extra_headers="Cache-Control: max-age=60\r\n")
        self._on_event = on_event or (lambda _e, _f: None)

    @property
    def port(self) -> int:
        return self._http.port

    def _apply(self, records: list[ChangelogRecord]) -> None:
        seen = len(self.fold.problems)
        fold_states(records, self.fold)
        for problem in self.fold.problems[seen:]:
            self._on_event("crl.unreadable_state", {"problem": problem})
        del self.fold.problems[:]
        revoked = frozenset(r.serial for s in self.fold.states.values() for r in s.revoked)
        now = self.clock()
        stale = (self.crl is None or self.crl.next_update_utc is None
                 or now >= self.crl.last_update_utc + self.interval / 2)
        if revoked != self._revoked or stale:
            self.crl = current_crl(self.ca, self.fold.states.values(), now=now,
                                   interval=self.interval)
            self._revoked = revoked
            self._on_event("crl.signed", {"revoked": len(revoked),
                                          "this_update": now.isoformat()})

    async def run(self, host: str, port: int, stop: asyncio.Event,
                  started: Callable[[int], None] | None = None) -> None:
        """Read the changelog to its end, sign, start serving, then follow until ``stop``."""
        async with groupless_consumer(self.bootstrap, error=CrlSourceError) as consumer:
            try:
                follower = _Follower(consumer, self.topic)
                self._apply(await follower.read_to_end(self.bootstrap, 120.0))
                await self._http.start(host, port)
                if started is not None:
                    started(self.port)
                while not stop.is_set():
                    records = await follower.poll(timeout_ms=500)
                    self._apply(records)
            finally:
                await self._http.stop()

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if self.crl is None:
            return 503, "text/plain", b"no CRL yet\n"
        if path in ("/crl", "/crl.der"):
            return 200, "application/pkix-crl", self.crl.public_bytes(Encoding.DER)
        if path == "/crl.pem":
            return 200, "application/x-pem-file", self.crl.public_bytes(Encoding.PEM)
        return 404, "text/plain", b"not found\n"


__all__ = [
    "ChangelogRecord",
    "CrlService",
    "CrlSourceError",
    "FoldResult",
    "crl_summary",
    "current_crl",
    "fold_states",
    "read_changelog",
]
