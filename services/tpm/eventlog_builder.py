"""Serialise a crypto-agile TCG event log: the inverse of the event-log parser.

Pure: a list of events in, the log's bytes out. Used by the host simulator (which extends the
same digests into a software TPM) and by tests that need hand-made logs.

Layout (TCG PC Client Platform Firmware Profile, 1.05 rev 23, section 10.2):

* first event, SHA-1 format ``TCG_PCR_EVENT``: ``pcrIndex u32 = 0``, ``eventType u32 =
  EV_NO_ACTION``, ``digest[20] = 0``, ``eventDataSize u32``, ``TCG_EfiSpecIDEvent`` (section
  10.4.5.1): ``"Spec ID Event03\\0"``, ``platformClass u32``, ``specVersionMinor u8 = 0``,
  ``specVersionMajor u8 = 2``, ``specErrata u8``, ``uintnSize u8`` (2 = 64-bit UINTN),
  ``numberOfAlgorithms u32``, ``{algorithmId u16, digestSize u16}`` each, ``vendorInfoSize u8``,
  ``vendorInfo``;
* then ``TCG_PCR_EVENT2`` records (section 10.2.2): ``pcrIndex u32``, ``eventType u32``,
  ``TPML_DIGEST_VALUES{count u32, {hashAlg u16, digest}...}``, ``eventSize u32``, ``event``.

All integers little-endian. Every event carries one digest per algorithm the Spec ID header
declares, in the header's order.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.tpm.algorithms import SHA_ALGORITHMS
from services.tpm.errors import TpmError, Unsupported

#: TPM_ALG_ID values of the hash algorithms a simulated log may declare (TPM 2.0 Part 2, 6.3).
TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512 = (a.alg_id for a in SHA_ALGORITHMS)

#: TPM_ALG_ID -> hashlib name and digest size (the SHA banks of ``services.tpm.algorithms``).
HASH_ALGS: Mapping[int, tuple[str, int]] = {a.alg_id: (a.name, a.digest_size)
                                             for a in SHA_ALGORITHMS}

#: hashlib/tpm2 bank name -> TPM_ALG_ID.
BANK_ALG_IDS: Mapping[str, int] = {name: alg for alg, (name, _) in HASH_ALGS.items()}

EV_NO_ACTION = 0x00000003
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
#: TCG_EfiSpecIDEvent.platformClass: 0 = client, 1 = server.
PLATFORM_CLASS_CLIENT = 0
#: Bounds the builder itself honours, so it cannot be used to make absurd logs by accident.
MAX_EVENT_DATA = 16 * 1024 * 1024
MAX_PCR_INDEX = 23


class LogBuildError(TpmError):
    """An event cannot be serialised as given (wrong digest length, PCR out of range...)."""


@dataclass(frozen=True)
class LogEvent:
    """One ``TCG_PCR_EVENT2`` to serialise.

    ``digests`` holds ``(TPM_ALG_ID, digest)`` pairs; the builder writes them in the order the
    Spec ID header declares its algorithms. ``measured`` is False for events that are logged but
    not extended (``EV_NO_ACTION``): their digests are all zero.
    """

    pcr: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    data: bytes

    @property
    def measured(self) -> bool:
        """Whether this event is extended into its PCR (everything but ``EV_NO_ACTION``)."""
        return self.event_type != EV_NO_ACTION

    def digest(self, alg: int) -> bytes:
        """The digest for ``alg``; raises ``LogBuildError`` if the event has none."""
        for a, d in self.digests:
            if a == alg:
                return d
        raise LogBuildError(f"event (PCR {self.pcr}, type {self.event_type:#x}) has no digest "
                            f"for algorithm {alg:#06x}")


def hash_with(alg: int, data: bytes) -> bytes:
    """Digest ``data`` with the TPM hash algorithm ``alg``."""
    try:
        name, _ = HASH_ALGS[alg]
    except KeyError as exc:
        raise Unsupported(f"hash algorithm {alg:#06x} is not supported") from exc
    return hashlib.new(name, data).digest()


def measure(
    pcr: int,
    event_type: int,
    data: bytes,
    algs: Sequence[int],
    *,
    hashed: bytes | None = None,
) -> LogEvent:
    """An event whose digest in every bank is the hash of ``hashed`` (default: of ``data``).

    ``hashed`` covers events whose digest is not over their data: a boot application's digest is
    its Authenticode hash, GRUB's is over the command without its ``grub_cmd: `` prefix.
    """
    source = data if hashed is None else hashed
    return LogEvent(pcr, event_type, tuple((a, hash_with(a, source)) for a in algs), data)


def measure_digests(
    pcr: int, event_type: int, data: bytes, digests: Mapping[int, bytes]
) -> LogEvent:
    """An event with explicit per-bank digests (e.g. an Authenticode hash per algorithm)."""
    return LogEvent(pcr, event_type, tuple(sorted(digests.items())), data)


def no_action(data: bytes, algs: Sequence[int], pcr: int = 0) -> LogEvent:
    """An ``EV_NO_ACTION`` event (logged, never extended; all-zero digests)."""
    return LogEvent(pcr, EV_NO_ACTION, tuple((a, bytes(HASH_ALGS[a][1])) for a in algs), data)


def spec_id_event_data(
    algs: Sequence[int], *, platform_class: int = PLATFORM_CLASS_CLIENT, errata: int = 2
) -> bytes:
    """The ``TCG_EfiSpecIDEvent`` structure declaring ``algs`` (PFP 10.4.5.1)."""
    if not algs:
        raise LogBuildError("a crypto-agile log must declare at least one algorithm")
    out = bytearray(SPEC_ID_SIGNATURE)
    out += struct.pack("<IBBBBI", platform_class, 0, 2, errata, 2, len(algs))
    for alg in algs:
        if alg not in HASH_ALGS:
            raise Unsupported(f"hash algorithm {alg:#06x} is not supported")
        out += struct.pack("<HH", alg, HASH_ALGS[alg][1])
    out += b"\x00"  # vendorInfoSize
    return bytes(out)


def _header(algs: Sequence[int]) -> bytes:
    data = spec_id_event_data(algs)
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(data)) + data


def _event2(seq: int, event: LogEvent, algs: Sequence[int]) -> bytes:
    if not 0 <= event.pcr <= MAX_PCR_INDEX:
        raise LogBuildError(f"event {seq}: PCR index {event.pcr} is outside 0..{MAX_PCR_INDEX}")
    if len(event.data) > MAX_EVENT_DATA:
        raise LogBuildError(f"event {seq}: {len(event.data)} bytes of event data exceed "
                            f"{MAX_EVENT_DATA}")
    out = bytearray(struct.pack("<III", event.pcr, event.event_type, len(algs)))
    for alg in algs:
        try:
            digest = event.digest(alg)
        except LogBuildError as exc:
            raise LogBuildError(f"event {seq}: {exc}") from exc
        if len(digest) != HASH_ALGS[alg][1]:
            raise LogBuildError(f"event {seq}: {HASH_ALGS[alg][0]} digest is {len(digest)} "
                                f"bytes, expected {HASH_ALGS[alg][1]}")
        out += struct.pack("<H", alg) + digest
    out += struct.pack("<I", len(event.data)) + event.data
    return bytes(out)


def build_log(events: Iterable[LogEvent], algs: Sequence[int]) -> bytes:
    """Serialise ``events`` after a Spec ID header declaring ``algs``.

    The header is generated here; ``events`` must not include it. Raises ``LogBuildError`` naming
    the event index when an event lacks a digest for a declared algorithm.
    """
    parts = [_header(algs)]
    parts.extend(_event2(seq, e, algs) for seq, e in enumerate(events, start=1))
    return b"".join(parts)


def expected_pcrs(events: Iterable[LogEvent], algs: Sequence[int]) -> dict[int, dict[int, bytes]]:
    """PCR values (``alg -> pcr -> value``) after extending ``events`` from all-zero PCRs.

    What a TPM that measured exactly ``events`` holds. Only PCRs that were extended appear.
    (The verifier's replay lives in ``services.tpm.replay``; this is the builder's own check.)
    """
    out: dict[int, dict[int, bytes]] = {a: {} for a in algs}
    for event in events:
        if not event.measured:
            continue
        for alg in algs:
            size = HASH_ALGS[alg][1]
            old = out[alg].get(event.pcr, bytes(size))
            out[alg][event.pcr] = hash_with(alg, old + event.digest(alg))
    return out
