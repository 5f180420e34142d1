"""Two deployments on one broker, one ``HOSTGATE_TOPIC_NAMESPACE`` each (real broker, real
``hostgate run incidents`` processes with their default groups and transactional ids).

Each namespace's stage sees only its own records: a failed verdict in one opens an incident
there and nowhere else. The two stages run side by side without sharing a consumer group
(each group has committed offsets of its own namespace's topics only) and without fencing each
other's transactional producers (neither worker ever reports a broken task), which they would
if the namespace left the group, and so the transactional ids ``<group>.task-<p>``, alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.incidents.cloudevents import read_binary_headers
from services.runtime.codec import Codec
from services.runtime.topics import Topics
from tests.integration import incidents_topics
from tests.integration.issuer_e2e_support import StageProcess, fresh_namespace
from tests.integration.runtime_support import bootstrap, produce_raw, read_committed, wait_until
from tests.unit.incidents_support import verdict

pytestmark = pytest.mark.kafka
CODEC = Codec.load()


async def _incident_hosts(t: Topics) -> list[str]:
    return [str(CODEC.decode(r.value).record["host_id"])
            for r in await read_committed(t.incidents) if r.value is not None]


async def _committed_topics(group: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    await admin.start()
    try:
        return {tp.topic for tp in await admin.list_consumer_group_offsets(group)}
    finally:
        await admin.close()


async def test_records_in_one_namespace_never_reach_the_others_stages(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    blue, green = Topics(fresh_namespace("ns-blue")), Topics(fresh_namespace("ns-green"))
    for t in (blue, green):
        await incidents_topics.create_topics(t)
    stages = {t.namespace: StageProcess("incidents", t.namespace, tmp_path, {})
              for t in (blue, green)}
    try:
        for proc in stages.values():
            proc.start()
        hosts = {blue.namespace: [f"blue-{i}" for i in range(3)],
                 green.namespace: [f"green-{i}" for i in range(3)]}
        for i in range(3):  # interleaved, both workers busy at the same time
            for t in (blue, green):
                host = hosts[t.namespace][i]
                await produce_raw(t.verdicts, [(host.encode(), CODEC.encode(
                    "hostgate.Verdict", verdict(host, 1)), [])])

        async def both_opened() -> bool:
            counts = [len(await _incident_hosts(t)) for t in (blue, green)]
            return min(counts) >= 3

        await wait_until(both_opened, 90, "an incident per failed verdict in both namespaces")
        for t in (blue, green):
            assert sorted(await _incident_hosts(t)) == hosts[t.namespace]
            findings = await read_committed(t.findings)
            named = {read_binary_headers(r.headers)["ce_subject"] for r in findings}
            assert findings and named == set(hosts[t.namespace]), named
            assert await read_committed(t.dlq("incidents")) == []

        async def committed() -> bool:
            groups = [await _committed_topics(p.group) for p in stages.values()]
            return all(groups)

        await wait_until(committed, 30, "both groups to commit")
        for t in (blue, green):
            proc = stages[t.namespace]
            assert proc.group == t.group("incidents") == f"{t.namespace}.hostgate.incidents"
            own = {t.verdicts, t.rejections, t.remediation}
            assert await _committed_topics(proc.group) <= own
        for proc in stages.values():
            assert proc.alive(), proc.log_bytes()[-3000:].decode(errors="replace")
            log = proc.log_bytes()
            assert b"task.broken" not in log and b"ProducerFenced" not in log, log[-3000:]
    finally:
        for proc in stages.values():
            proc.stop()
        for t in (blue, green):
            await incidents_topics.delete_topics(t)
