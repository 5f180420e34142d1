"""Topics of one isolated incidents-stage test run (unique prefix), created and deleted."""

from __future__ import annotations

import sys

from aiokafka.admin import AIOKafkaAdminClient

from services.incidents.stage import IncidentsTopics
from services.runtime.topics import TopicLayout, TopicSpec, ensure_topics
from tests.integration.runtime_support import bootstrap


def all_topics(t: IncidentsTopics) -> list[str]:
    return [*t.inputs, t.incidents, t.findings, t.dlq, t.changelog("incidents"),
            t.changelog("hosts")]


async def create_topics(t: IncidentsTopics) -> None:
    specs = [TopicSpec(name, "incidents test", compacted="changelog" in name)
             for name in all_topics(t)]
    await ensure_topics(bootstrap(), specs=specs, layout=TopicLayout(3, 1))


async def delete_topics(t: IncidentsTopics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    await admin.start()
    try:
        await admin.delete_topics(all_topics(t))
    except Exception as exc:  # cleanup only
        print(f"could not delete test topics: {exc}", file=sys.stderr)
    finally:
        await admin.close()
