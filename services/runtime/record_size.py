"""The size chain of one record, from the host that sends it to the broker that stores it, in
one place, so no link refuses what the one before it let through:

    agent's evidence (boot log + IMA list + quote)  <=  producer max_request_size
      <=  topic max.message.bytes  <=  broker message.max.bytes  <=  replica.fetch.max.bytes

The largest record is an agent's evidence with an 8 MiB IMA list (the agent's and intake's
limit), which the collector forwards to the verifier as ``attest.collected.v1``; those two
topics set ``max.message.bytes`` themselves (``services.runtime.topics``), so they hold even on
a broker left at Kafka's 1 MiB default. ``deploy/`` sets the broker to the same figure, and
``tests/unit/test_deploy_size_chain.py`` checks every manifest against these constants.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BROKER_MESSAGE_MAX_BYTES",
    "CONSUMER_PARTITION_FETCH_BYTES",
    "MAX_BOOT_LOG_BYTES",
    "MAX_IMA_LIST_BYTES",
    "MAX_RECORD_BYTES",
    "PRODUCER_COMPRESSION",
    "PRODUCER_MAX_REQUEST_BYTES",
    "RECORD_FRAMING_BYTES",
    "REPLICA_FETCH_MAX_BYTES",
    "TOPIC_MAX_MESSAGE_BYTES",
]

_MIB: Final = 1024 * 1024

MAX_IMA_LIST_BYTES: Final = 8 * _MIB
"""Largest IMA measurement list an agent sends and intake accepts (``HOSTGATE_MAX_IMA_BYTES``)."""
MAX_BOOT_LOG_BYTES: Final = 1 * _MIB
"""Largest boot event log intake accepts by default (``HOSTGATE_MAX_BOOT_LOG_BYTES``)."""
RECORD_FRAMING_BYTES: Final = 1 * _MIB
"""Room for the rest of an evidence record: quote, PCR values per bank, ids, Avro framing,
headers and the record batch around it (tens of KiB in practice)."""

MAX_RECORD_BYTES: Final = MAX_IMA_LIST_BYTES + MAX_BOOT_LOG_BYTES + RECORD_FRAMING_BYTES
"""The largest record hostgate writes (10 MiB): the agent's evidence at both log limits."""
PRODUCER_MAX_REQUEST_BYTES: Final = MAX_RECORD_BYTES
"""Every hostgate producer's ``max_request_size``: a record up to :data:`MAX_RECORD_BYTES`."""
TOPIC_MAX_MESSAGE_BYTES: Final = PRODUCER_MAX_REQUEST_BYTES + 12
"""``max.message.bytes`` of the topics a large record crosses. The broker checks a batch
after compression, the producer before it; the 12 bytes are the log overhead Kafka's own
default (1,048,588 = 1 MiB + 12) leaves for the same reason."""
BROKER_MESSAGE_MAX_BYTES: Final = TOPIC_MAX_MESSAGE_BYTES
"""The broker's ``message.max.bytes`` in ``deploy/`` (the default of every other topic)."""
REPLICA_FETCH_MAX_BYTES: Final = BROKER_MESSAGE_MAX_BYTES
"""The brokers' ``replica.fetch.max.bytes``: followers fetch the largest batch in one go."""
CONSUMER_PARTITION_FETCH_BYTES: Final = BROKER_MESSAGE_MAX_BYTES
"""Consumers' ``max_partition_fetch_bytes``: aiokafka gives up on a batch larger than it."""

PRODUCER_COMPRESSION: Final = "zstd"
"""Producer ``compression_type`` (aiokafka's zstd needs ``cramjam``, a dependency). Event logs
and IMA lists are repetitive text and digests; ``deploy/README.md`` sizes storage on it."""
