"""Topics of one isolated incidents-stage test run (its own namespace), created and deleted."""

from __future__ import annotations

import sys

from aiokafka.admin import AIOKafkaAdminClient

from services.incidents.config import IncidentsConfig
from services.incidents.stage import stage_from_config
from services.runtime.topics import STATE_TABLES, TopicLayout, Topics, TopicSpec, ensure_topics
from tests.integration.runtime_support import bootstrap


def specs(t: Topics) -> list[TopicSpec]:
    """The declared topics the incidents stage reads and writes, its DLQ and changelogs."""
    names = {*stage_from_config(IncidentsConfig(topics=t)).input_topics, t.incidents, t.findings,
             *(s.name for s in t.stage_specs("incidents", STATE_TABLES["incidents"]))}
    return [s for s in t.all_specs() if s.name in names]


def all_topics(t: Topics) -> list[str]:
    return [s.name for s in specs(t)]


async def create_topics(t: Topics) -> None:
    await ensure_topics(bootstrap(), specs=specs(t), layout=TopicLayout(3, 1))


async def delete_topics(t: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    await admin.start()
    try:
        await admin.delete_topics(all_topics(t))
    except Exception as exc:  # cleanup only
        print(f"could not delete test topics: {exc}", file=sys.stderr)
    finally:
        await admin.close()
