"""The local cluster's shape and the replication it asks for, offline (issue 16): node ports,
the rendered node configs, ``TopicLayout``'s detection, and that every producer hostgate builds
waits for all in-sync replicas and is idempotent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.errors import ConfigError
from services.runtime import localcluster
from services.runtime.localcluster import ClusterConfig
from services.runtime.topics import TopicLayout, TopicSpec, min_insync, replication_for

REPO = Path(__file__).resolve().parents[2]


def test_replication_follows_the_broker_count() -> None:
    assert [replication_for(n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]
    assert [min_insync(replication_for(n)) for n in (1, 2, 3, 5)] == [1, 1, 2, 2]
    assert TopicSpec("t", "x").configs(3)["min.insync.replicas"] == "2"


def test_layout_detects_unless_hostgate_replication_is_set() -> None:
    detect = TopicLayout.from_env({})
    assert detect.replication is None and detect.rf == 1
    assert detect.for_brokers(3).replication == 3 and detect.for_brokers(1).replication == 1
    forced = TopicLayout.from_env({"HOSTGATE_REPLICATION": "2"})
    assert forced.for_brokers(3).replication == 2
    with pytest.raises(ConfigError):
        TopicLayout.from_env({"HOSTGATE_REPLICATION": "0"})


def test_node_ports_and_bootstrap(tmp_path: Path) -> None:
    cfg = ClusterConfig(home=tmp_path, brokers=3, base_port=29092)
    assert [(cfg.port(n), cfg.controller_port(n)) for n in cfg.nodes] == [
        (29092, 29093), (29094, 29095), (29096, 29097)]
    assert cfg.bootstrap == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    with pytest.raises(ConfigError, match="node 4 is not in this cluster"):
        cfg.node_paths(4)
    with pytest.raises(ConfigError):
        ClusterConfig(home=tmp_path, brokers=1)


def test_rendered_node_config_is_a_three_voter_quorum_with_rf3(tmp_path: Path) -> None:
    cfg = ClusterConfig(home=tmp_path, brokers=3, base_port=29092)
    for n in cfg.nodes:
        cfg.node_paths(n).root.mkdir(parents=True)
        localcluster._render(cfg, n)
    props = dict(line.split("=", 1) for line in
                 cfg.node_paths(2).properties.read_text().splitlines()
                 if line and not line.startswith("#"))
    assert "@" not in "".join(k for k in props)  # every field filled in
    assert not [v for v in props.values() if re.search(r"@[A-Z_]+@", v)]
    assert props["node.id"] == "2" and props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097")
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29094,CONTROLLER://127.0.0.1:29095"
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor"):
        assert props[key] == "3", key
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    assert props["unclean.leader.election.enable"] == "false"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "node-2" / "data")


def test_every_producer_waits_for_all_replicas_and_is_idempotent() -> None:
    """aiokafka's defaults are acks=1 without idempotence; a transactional id implies both."""
    found = 0
    for path in sorted((REPO / "services").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"AIOKafkaProducer\(", text):
            found += 1
            call = text[match.end():match.end() + 400]
            call = call[:call.find("\n\n")] if "\n\n" in call else call
            where = f"{path.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}"
            assert "transactional_id=" in call or (
                "enable_idempotence=True" in call and 'acks="all"' in call), where
    assert found >= 5


def test_reset_wipes_nodes_and_the_record_but_keeps_the_jars(tmp_path: Path) -> None:
    cfg = ClusterConfig(home=tmp_path, brokers=3, base_port=29092)
    (cfg.root / "lib").mkdir(parents=True)
    (cfg.root / "lib" / "kafka_2.13-4.3.1.jar").write_text("jar")
    cluster_id = localcluster._cluster_id(cfg)  # records the shape on first use
    assert localcluster.configured_brokers(tmp_path) == 3
    assert localcluster._cluster_id(cfg) == cluster_id
    with pytest.raises(localcluster.BrokerError, match="holds a 3-node cluster, not 2"):
        localcluster._cluster_id(ClusterConfig(home=tmp_path, brokers=2))
    for n in cfg.nodes:
        (cfg.node_paths(n).data).mkdir(parents=True)
    localcluster.reset(cfg, echo=lambda _m: None)  # nothing running: nothing to stop
    assert localcluster.configured_brokers(tmp_path) is None
    assert not any(cfg.node_paths(n).root.exists() for n in cfg.nodes)
    assert (cfg.root / "lib" / "kafka_2.13-4.3.1.jar").is_file()
