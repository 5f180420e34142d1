"""Helpers of the issuer/incidents end-to-end tests: a fresh topic namespace for both stages, stage
processes (``hostgate run <stage>``), verdict records, topic reads and the key-material scan.
Everything talks to the real broker at ``HOSTGATE_BOOTSTRAP``."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from services.incidents.config import IncidentsConfig
from services.incidents.stage import stage_from_config
from services.runtime.codec import Codec
from services.runtime.topics import STATE_TABLES, TopicLayout, Topics, TopicSpec, ensure_topics
from tests.integration.runtime_support import REPO, Rec, bootstrap, read_committed
from tests.unit.incidents_support import failed_rule
from tests.unit.issuer_stage_support import CaFiles

CODEC = Codec.load()


def fresh_namespace(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def specs(ns: str) -> list[TopicSpec]:
    """The declared topics (``Topics.all_specs``) the issuer and incidents stages use."""
    t = Topics(ns)
    names = {t.verdicts, t.incidents, t.identity_events, t.credentials, t.hosts,
             *stage_from_config(IncidentsConfig(topics=t)).input_topics, t.findings}
    for stage in ("issuer", "incidents"):
        names |= {s.name for s in t.stage_specs(stage, STATE_TABLES[stage])}
    return [s for s in t.all_specs() if s.name in names]


def all_topics(ns: str) -> list[str]:
    return sorted(s.name for s in specs(ns))


async def create_topics(ns: str, partitions: int = 3) -> None:
    await ensure_topics(bootstrap(), specs=specs(ns), layout=TopicLayout(partitions, 1))


async def delete_topics(ns: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    await admin.start()
    try:
        await admin.delete_topics(all_topics(ns))
    except Exception as exc:  # cleanup only
        print(f"could not delete test topics: {exc}", file=sys.stderr)
    finally:
        await admin.close()


class StageProcess:
    """``hostgate run <stage>`` as a real process in namespace ``ns``, stdout and stderr
    captured to one file. ``group`` (``HOSTGATE_GROUP``) defaults to the stage's own;
    ``self.group`` is the consumer group the worker uses (inside the namespace)."""

    def __init__(self, stage: str, ns: str, log_dir: Path, env: Mapping[str, str],
                 group: str | None = None) -> None:
        self.stage = stage
        self.log_path = log_dir / f"{stage}-{ns}.log"
        t = Topics(ns)
        self.group = t.name(group) if group else t.group(stage)
        self.env = {**os.environ, **env, "HOSTGATE_BOOTSTRAP": bootstrap(),
                    "HOSTGATE_TOPIC_NAMESPACE": ns,
                    "HOSTGATE_BATCH_MAX_MS": env.get("HOSTGATE_BATCH_MAX_MS", "300"),
                    "HOSTGATE_SESSION_TIMEOUT_MS": "6000"}
        self.env.pop("HOSTGATE_GROUP", None)
        if group:
            self.env["HOSTGATE_GROUP"] = group
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> StageProcess:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", self.stage], cwd=REPO,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_bytes(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def wire_verdict(verdict_id: str, host_id: str, *, result: str, at: dt.datetime,
                 ek_public: bytes = b"", pcrs: Mapping[int, bytes] | None = None,
                 rules: Iterable[str] = ()) -> dict[str, Any]:
    """A complete ``hostgate.Verdict`` as the verifier would publish it."""
    rules = tuple(rules)
    evidence_digest = hashlib.sha256(f"evidence/{verdict_id}".encode()).digest()
    passed = result == "PASS"
    return {
        "verdict_id": verdict_id, "host_id": host_id, "result": result,
        "failed_rules": [failed_rule(r) for r in rules],
        "claims_json": "{}", "policy_id": "fleet-default", "policy_version": 3,
        "policy_digest": hashlib.sha256(b"policy v3").digest(),
        "evidence": {"topic": "attest.evidence.v1", "partition": 0, "offset": 7},
        "evidence_digest": evidence_digest,
        "collected": {"topic": "attest.collected.v1", "partition": 0, "offset": 9},
        "trustworthiness": dict.fromkeys(
            ("instance_identity", "configuration", "executables", "file_system", "hardware",
             "runtime_opaque", "storage_opaque", "sourced_data"),
            "AFFIRMING" if passed else "NONE"),
        "ear_status": "AFFIRMING" if passed else "CONTRAINDICATED", "ear_json": "{}",
        "quote_counters": None, "ek_public": ek_public, "ak_name": b"\x00\x0b" + bytes(32),
        "attested_pcrs": [{"bank": "SHA256", "pcr": i, "value": v}
                          for i, v in sorted((pcrs or {}).items())],
        "appraised_at": at,
    }


def encode_verdict(record: Mapping[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return str(record["host_id"]).encode(), CODEC.encode("hostgate.Verdict", record), []


def decoded(recs: Iterable[Rec]) -> list[dict[str, Any]]:
    """Avro records with ``_subject``, ``_id`` (the hg-id header) and ``_where``."""
    out = []
    for r in recs:
        if r.value is None:
            continue
        d = CODEC.decode(r.value)
        ids = [v.decode() for k, v in r.headers if k == "hg-id"]
        out.append({"_subject": d.subject, "_id": ids[-1] if ids else None,
                    "_where": f"{r.topic}[{r.partition}]@{r.offset}", **d.record})
    return out


async def read_all_records(ns: str) -> dict[str, list[Rec]]:
    return {t: await read_committed(t) for t in all_topics(ns)}


def find_secrets(blobs: Mapping[str, bytes], ca: CaFiles) -> list[str]:
    """Where any form of the CA key or its passphrase occurs in ``blobs`` (name -> bytes)."""
    hits = []
    for what, secret in ca.secrets().items():
        for name, blob in blobs.items():
            if secret in blob:
                hits.append(f"{what} in {name}")
    return hits


def record_blobs(records: Mapping[str, list[Rec]]) -> dict[str, bytes]:
    """Every key, value and header of every record, one blob per record."""
    out = {}
    for topic, recs in records.items():
        for r in recs:
            parts = [r.key or b"", r.value or b""]
            parts += [k.encode() + b"=" + v for k, v in r.headers]
            out[f"{topic}[{r.partition}]@{r.offset}"] = b"\0".join(parts)
    return out
