"""The issuer stage shell (``services.issuer.stage``) and its config
(``services.issuer.config``): CA loading from the environment, the stage template's shape, the
registered stage, and whole batches through the runtime's planner (no broker)."""

from __future__ import annotations

import dataclasses
import inspect
from functools import partial
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from services.errors import ConfigError
from services.issuer import core
from services.issuer.config import IssuerConfig, load_ca_from_env, parse_pkcs11_uri
from services.issuer.core import credential_id_for
from services.issuer.stage import build_stage
from services.runtime.codec import Codec
from services.runtime.plan import H_ID, RawRecord, plan_batch
from services.runtime.stage import OverlayState, merge_pending
from services.runtime.stages import build_stage as build_registered
from services.runtime.topics import Topics
from tests.unit.issuer_stage_support import CaFiles, wire_verdict, write_pem_ca
from tests.unit.issuer_support import APPRAISED, software_ek_public

CODEC = Codec.load()
NS = "ut"
T = Topics(NS)
HOSTS_CHANGELOG = T.changelog("issuer", "hosts")


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory: pytest.TempPathFactory) -> CaFiles:
    return write_pem_ca(tmp_path_factory.mktemp("issuer-ca"))


@pytest.fixture(scope="module")
def ek_public() -> bytes:
    return software_ek_public()


# "host-0007" maps to partition 1 of a 4-partition topic (the issuer DLQs misrouted inputs).
COUNTS = dict.fromkeys((T.verdicts, T.incidents, T.identity_events), 4)


def _raw(topic: str, offset: int, subject: str, record: dict[str, object],
         key: str = "host-0007") -> RawRecord:
    return RawRecord(topic, 1, offset, 1_700_000_000_000 + offset, key.encode(),
                     CODEC.encode(subject, record))


def test_registered_stage_reads_verdicts_and_incidents_and_writes_its_own_changelog(
        ca_files: CaFiles) -> None:
    stage = build_registered("issuer", {**ca_files.env, "HOSTGATE_TOPIC_NAMESPACE": NS})
    assert stage.name == "issuer"
    assert stage.input_topics == ("ut.attest.verdicts.v1", "ut.attest.incidents.v1",
                                  "ut.attest.identity.events.v1")
    assert stage.tables == {"hosts": "hostgate.IssuerHostState"}
    assert stage.changelog_of("hosts") == "ut.hostgate.issuer.hosts.changelog.v1"
    assert stage.dlq == "ut.issuer.dlq.v1"
    assert build_stage(ca_files.env).input_topics == ("attest.verdicts.v1",
                                                      "attest.incidents.v1",
                                                      "attest.identity.events.v1")


def test_pass_then_fail_through_the_planner(ca_files: CaFiles, ek_public: bytes) -> None:
    stage = build_stage({**ca_files.env, "HOSTGATE_TOPIC_NAMESPACE": NS})
    committed: dict[str, dict[str, object]] = {}
    state = OverlayState(committed)  # type: ignore[arg-type]
    ok = wire_verdict("v-pass-1", ek_public=ek_public)
    plan = plan_batch(stage, CODEC, [_raw(T.verdicts, 10, "hostgate.Verdict", ok)], state,
                      group="g", task_partition=1,
                      partition_counts=COUNTS)
    assert [o.result for o in plan.outcomes] == ["ok"], plan.outcomes
    topics = [r.topic for r in plan.records]
    assert topics == [T.credentials, T.hosts, HOSTS_CHANGELOG]
    cred = CODEC.decode(plan.records[0].value or b"").record
    assert cred["credential_id"] == credential_id_for("v-pass-1")
    assert dict(plan.records[0].headers)[H_ID] == cred["credential_id"].encode()
    cert = x509.load_der_x509_certificate(cred["certificate"])
    ca_cert = x509.load_pem_x509_certificate(ca_files.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    assert plan.records[2].partition == 1  # changelog written on the task's own partition
    hs = CODEC.decode(plan.records[1].value or b"").record
    assert (hs["state"], hs["cert_serial"]) == ("TRUSTED", cred["serial"])
    merge_pending(committed, state.pending)  # type: ignore[arg-type]

    state = OverlayState(committed)  # type: ignore[arg-type]
    bad = wire_verdict("v-fail-2", result="FAIL", rules=("secureboot.enabled",),
                  at=APPRAISED.replace(hour=13))
    plan = plan_batch(stage, CODEC, [_raw(T.verdicts, 11, "hostgate.Verdict", bad)], state,
                      group="g", task_partition=1,
                      partition_counts=COUNTS)
    assert [r.topic for r in plan.records] == [T.hosts, HOSTS_CHANGELOG]
    hs = CODEC.decode(plan.records[0].value or b"").record
    assert (hs["state"], hs["cert_serial"]) == ("QUARANTINED", None)
    kept = CODEC.decode(plan.records[1].value or b"").record
    assert [r["serial"] for r in kept["revoked"]] == [cred["serial"]]
    assert kept["held"] == []


def test_incidents_topic_records_from_the_real_incidents_core(ca_files: CaFiles) -> None:
    """The incidents stage's own outputs (an OPENED event, then a refused out-of-order close)
    as the issuer reads them: the event quarantines, the rejection is read and ignored."""
    from tests.unit.incidents_support import COMMAND, VERDICT, Driver, command
    from tests.unit.incidents_support import verdict as incidents_verdict

    host = "host-0007"
    driver = Driver()
    driver.feed(VERDICT, incidents_verdict(host, 1))
    (opened,) = [o for o in driver.outputs if o.subject == "hostgate.IncidentEvent"]
    driver.feed(COMMAND, command(host, opened.record["incident_id"], "CLOSE", n=1))
    rejected = [o for o in driver.outputs if o.subject == "hostgate.RemediationRejected"]
    assert len(rejected) == 1

    stage = build_stage({**ca_files.env, "HOSTGATE_TOPIC_NAMESPACE": NS})
    raws = [_raw(T.incidents, 5 + i, o.subject, dict(o.record))
            for i, o in enumerate((opened, rejected[0]))]
    plan = plan_batch(stage, CODEC, raws, OverlayState({}), group="g", task_partition=1,
                      partition_counts=COUNTS)
    assert [o.result for o in plan.outcomes] == ["ok", "ok"]
    assert plan.outcomes[1].facts == {"ignored": "hostgate.RemediationRejected"}
    assert [r.topic for r in plan.records] == [T.hosts, HOSTS_CHANGELOG]
    hs = CODEC.decode(plan.records[0].value or b"").record
    assert (hs["state"], hs["incident_id"]) == ("QUARANTINED", opened.record["incident_id"])


def test_ca_errors_name_the_variable_and_never_the_secret(ca_files: CaFiles,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no issuing CA key"):
        load_ca_from_env({})
    both = {**ca_files.env, "HOSTGATE_ISSUER_PKCS11_MODULE": "/x.so"}
    with pytest.raises(ConfigError, match="choose one"):
        load_ca_from_env(both)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the passphrase\n")
    with pytest.raises(ConfigError) as info:
        load_ca_from_env({**ca_files.env, "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE": str(wrong)})
    assert "wrong passphrase" in str(info.value)
    assert b"not the passphrase" not in str(info.value).encode()
    no_cert = {k: v for k, v in ca_files.env.items() if k != "HOSTGATE_ISSUER_CA_CERT"}
    with pytest.raises(ConfigError, match="HOSTGATE_ISSUER_CA_CERT is not set"):
        load_ca_from_env(no_cert)
    assert "pem:" in load_ca_from_env(ca_files.env).source


def test_certificate_settings_from_env(ca_files: CaFiles) -> None:
    cfg = IssuerConfig.from_env({**ca_files.env, "HOSTGATE_ISSUER_CERT_VALIDITY_S": "3600",
                                 "HOSTGATE_ISSUER_CRL_URL": "http://crl.example/hostgate.crl"})
    assert cfg.profile.validity.total_seconds() == 3600
    assert cfg.profile.crl_url == "http://crl.example/hostgate.crl"
    for bad in ("soon", "5", str(90 * 86400)):
        with pytest.raises(ConfigError, match="HOSTGATE_ISSUER_CERT_VALIDITY_S"):
            IssuerConfig.from_env({**ca_files.env, "HOSTGATE_ISSUER_CERT_VALIDITY_S": bad})


def test_decide_is_a_module_function_the_stage_binds_to_its_config(ca_files: CaFiles) -> None:
    """The stage template: ``core.decide(inp, state, cfg)`` at module level, and the stage's
    ``decide`` that function with the config ``IssuerConfig.from_env`` built, nothing else."""
    assert inspect.isfunction(core.decide) and core.decide.__module__ == "services.issuer.core"
    assert list(inspect.signature(core.decide).parameters) == ["inp", "state", "cfg"]
    assert not hasattr(core, "make_decide")
    env = {**ca_files.env, "HOSTGATE_TOPIC_NAMESPACE": NS}
    stage = build_stage(env)
    assert isinstance(stage.decide, partial) and stage.decide.func is core.decide
    assert stage.decide.args == () and list(stage.decide.keywords) == ["cfg"]
    cfg = stage.decide.keywords["cfg"]
    assert isinstance(cfg, IssuerConfig) and cfg.ca.certificate.public_bytes(
        Encoding.PEM) == ca_files.cert_pem
    # the same settings from the same env (the CA object is the one each build loaded)
    assert cfg == dataclasses.replace(IssuerConfig.from_env(env), ca=cfg.ca)
    assert cfg.topics == T and stage.input_subjects == core.INPUT_SUBJECTS
    assert stage.tables == core.TABLES


@pytest.mark.parametrize(("drop", "extra", "names"), [
    ("HOSTGATE_ISSUER_CA_CERT", {}, "HOSTGATE_ISSUER_CA_CERT"),
    ("HOSTGATE_ISSUER_CA_KEY", {}, "HOSTGATE_ISSUER_CA_KEY is not set"),
    ("HOSTGATE_ISSUER_CA_PASSPHRASE_FILE", {}, "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE is not set"),
    (None, {"HOSTGATE_ISSUER_PKCS11_URI": "pkcs11:token=t;object=o"}, "HOSTGATE_ISSUER_PKCS11_"),
    (None, {"HOSTGATE_ISSUER_CERT_VALIDITY_S": "never"}, "HOSTGATE_ISSUER_CERT_VALIDITY_S"),
    (None, {"HOSTGATE_ISSUER_TOPIC_PREFIX": "old"}, "HOSTGATE_ISSUER_TOPIC_PREFIX"),
])
def test_config_errors_name_the_variable(ca_files: CaFiles, drop: str | None,
                                         extra: dict[str, str], names: str) -> None:
    env = {k: v for k, v in {**ca_files.env, **extra}.items() if k != drop}
    with pytest.raises(ConfigError, match=names) as info:
        IssuerConfig.from_env(env)
    assert ca_files.passphrase.decode() not in str(info.value)


@pytest.mark.parametrize(("uri", "want"), [
    ("pkcs11:token=hostgate-ca;object=issuing-ca", ("hostgate-ca", "issuing-ca")),
    ("pkcs11:object=my%20key;type=private;token=A%3bB", ("A;B", "my key")),
])
def test_pkcs11_uri(uri: str, want: tuple[str, str]) -> None:
    assert parse_pkcs11_uri(uri) == want


@pytest.mark.parametrize(("uri", "match"), [
    ("token=a;object=b", "does not start"),
    ("pkcs11:token=a", "no object"),
    ("pkcs11:token=a;object=b?pin-value=1234", "pin-value"),
    ("pkcs11:token", "has no value"),
])
def test_pkcs11_uri_refused(uri: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_pkcs11_uri(uri)
