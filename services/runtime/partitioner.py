"""The partition Kafka's default partitioner maps a record key to. Pure.

Every hostgate producer (aiokafka's ``DefaultPartitioner``) and the Java client's default
partitioner place a keyed record on ``(murmur2(key) & 0x7fffffff) % partitions``, with the
32-bit murmur2 variant of ``org.apache.kafka.common.utils.Utils.murmur2`` (seed 0x9747b28c).
State is partitioned by that mapping, so the runtime recomputes it for every input record
(``InputRecord.key_partition``) and a stage can refuse a record written, with an explicit
``partition=``, somewhere its key does not belong. librdkafka's default is a different hash
(CRC32, ``consistent_random``): a producer built on it must set ``partitioner=murmur2_random``.
"""

from __future__ import annotations

from typing import Final

_M: Final = 0x5BD1E995
_SEED: Final = 0x9747B28C
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The Java client's murmur2 of ``data`` as a signed 32-bit int (what ``Utils.murmur2``
    returns)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    full = length - length % 4
    for i in range(0, full, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length % 4
    if tail == 3:
        h ^= data[full + 2] << 16
    if tail >= 2:
        h ^= data[full + 1] << 8
    if tail >= 1:
        h ^= data[full]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def key_partition(key: bytes | str, partitions: int) -> int:
    """The partition of ``key`` on a topic of ``partitions`` partitions."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions
