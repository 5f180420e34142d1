"""Small read-side Kafka helpers shared by the issuer's CLI, its CRL service and the agent's
credential receiver (readers that join no consumer group)."""

from __future__ import annotations

from services.errors import HostgateError
from services.runtime.connection import client_kwargs


class TopicUnavailable(HostgateError):
    """The broker cannot be reached, or the topic does not exist."""

    retriable = True


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (empty if it does not exist)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap))
    try:
        await admin.start()
        (doc,) = await admin.describe_topics([topic])
    except KafkaError as exc:
        raise TopicUnavailable(f"cannot describe {topic} at {bootstrap}: {exc}") from None
    finally:
        await admin.close()
    return sorted(int(p["partition"]) for p in doc.get("partitions") or [])
