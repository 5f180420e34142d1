"""`ensure_topics` against the real broker: creates, is idempotent, reports and fixes drift."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.runtime.topics import TopicLayout, Topics, TopicSpec, ensure_topics

pytestmark = pytest.mark.kafka


def test_declaration_covers_design_topics() -> None:
    names = {s.name for s in Topics().all_specs()}
    for name in ("attest.requests.v1", "attest.evidence.v1", "attest.collected.v1",
                 "attest.verdicts.v1", "attest.hosts.v1", "attest.policies.v1",
                 "attest.incidents.v1", "attest.remediation.v1", "soc.findings.ocsf.v1",
                 "verifier.dlq.v1"):
        assert name in names
    by_name = {s.name: s for s in Topics().all_specs()}
    for audit in ("attest.evidence.v1", "attest.collected.v1", "attest.verdicts.v1",
                  "attest.incidents.v1"):
        assert by_name[audit].configs(1)["retention.ms"] == "-1"
    for compacted in ("attest.hosts.v1", "attest.policies.v1",
                      "hostgate.collector.enrollments.changelog.v1"):
        assert by_name[compacted].configs(1)["cleanup.policy"] == "compact"
    # the product's topics only: the runtime's test stage creates its own (tests/support)
    assert not any("eostest" in name for name in names)


async def test_ensure_is_idempotent_and_reports_drift(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    layout = TopicLayout(partitions=3, replication=1)
    specs = (TopicSpec(f"t.{tag}.audit", "test", retention_ms="-1"),
             TopicSpec(f"t.{tag}.state", "test", compacted=True))

    first = await ensure_topics(kafka_bootstrap, specs, layout)
    assert sorted(first.created) == sorted(s.name for s in specs) and not first.drift
    second = await ensure_topics(kafka_bootstrap, specs, layout)
    assert not second.created and sorted(second.ok) == sorted(s.name for s in specs)

    # An operator-made topic with the wrong policy and too few partitions is drift.
    drifted = f"t.{tag}.drifted"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(drifted, 1, 1,
                                            topic_configs={"cleanup.policy": "delete"})])
    finally:
        await admin.close()
    spec = TopicSpec(drifted, "test", compacted=True)
    report = await ensure_topics(kafka_bootstrap, [spec], layout)
    assert len(report.drift) == 1
    assert "partitions 1 < 3" in report.drift[0] and "cleanup.policy=delete" in report.drift[0]

    fixed = await ensure_topics(kafka_bootstrap, [spec], layout, fix=True)
    assert fixed.fixed == [drifted]
    clean = await ensure_topics(kafka_bootstrap, [spec], layout)
    assert clean.ok == [drifted] and not clean.drift
