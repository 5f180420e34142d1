"""Exactly once across the issuer and the incidents stage, each SIGKILLed mid-batch and restarted
while verdicts stream in (real broker, real ``hostgate run`` processes; the approach of
``test_runtime_eos_faults.py``, without restarting the shared broker).

Every host gets a sequence of PASS and FAIL verdicts. Afterwards a read_committed reader must
see: one ``HostState`` per verdict (the issuer writes one for each; its id is derived from the
input's coordinates), no credential id, certificate serial or output id twice, every revoked
serial one that was issued and never also held; one incident event per failing verdict and
exactly one OPENED incident per host that failed; and no CA key material anywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from services.issuer.core import _output_id
from services.issuer.crl import fold_states, read_changelog
from services.runtime.stage import Coordinates, InputRecord
from services.runtime.topics import Topics
from tests.integration import issuer_e2e_support as es
from tests.integration.runtime_support import produce_raw, read_committed, wait_until
from tests.unit.issuer_stage_support import write_pem_ca
from tests.unit.issuer_support import PCRS, software_ek_public

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

HOSTS = 40
ROUNDS = 8
KILLS = 3


def _plan(rng: random.Random) -> list[tuple[str, int, str]]:
    """(host, round, result): every host's rounds in order, hosts interleaved."""
    out = []
    for n in range(ROUNDS):
        for h in range(HOSTS):
            result = "FAIL" if rng.random() < 0.35 else "PASS"
            out.append((f"eos-h{h:03d}", n, result))
    return out


async def _consumed_all(group: str, topics: list[str]) -> bool:
    """Has ``group`` committed past the last committed *data* record of every partition? (The
    end offset is no yardstick: a transactionally written topic ends with a commit marker.)"""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=es.bootstrap())
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    except Exception:
        return False
    finally:
        await admin.close()
    for topic in topics:
        last: dict[int, int] = {}
        for r in await read_committed(topic):
            last[r.partition] = max(last.get(r.partition, 0), r.offset + 1)
        for tp, meta in committed.items():
            if (tp.topic == topic and tp.partition in last
                    and meta.offset < last.pop(tp.partition)):
                return False
        if last:
            return False
    return True


async def test_issuer_and_incidents_sigkilled_mid_batch_exactly_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    prefix = es.fresh_namespace("eosiss")
    await es.create_topics(prefix, partitions=3)
    ca = write_pem_ca(tmp_path / "ca")
    eks = [software_ek_public() for _ in range(4)]
    issuer = es.StageProcess("issuer", prefix, tmp_path, {**ca.env,
                                                         "HOSTGATE_BATCH_MAX_MS": "1500"})
    incidents = es.StageProcess("incidents", prefix, tmp_path, {"HOSTGATE_BATCH_MAX_MS": "1500"})
    t_iss = t_inc = Topics(prefix)
    plan = _plan(rng)
    base = es.now()
    try:
        issuer.start()
        incidents.start()
        kills = {"issuer": 0, "incidents": 0}
        chunks = [plan[i:i + 20] for i in range(0, len(plan), 20)]
        kill_at = sorted(rng.sample(range(2, len(chunks) - 1), KILLS * 2))
        for i, chunk in enumerate(chunks):
            items = []
            for host, n, result in chunk:
                h = int(host[-3:])
                items.append(es.encode_verdict(es.wire_verdict(
                    f"v-{host}-{n}", host, result=result,
                    at=base + dt.timedelta(seconds=n),
                    ek_public=eks[h % len(eks)], pcrs=PCRS if result == "PASS" else None,
                    rules=("secureboot.enabled",) if result == "FAIL" else ())))
            await produce_raw(t_iss.verdicts, items)
            if i in kill_at:
                await asyncio.sleep(rng.uniform(0.2, 1.2))  # let a batch open, then kill it
                victim = issuer if kill_at.index(i) % 2 == 0 else incidents
                victim.kill()
                kills[victim.stage] += 1
                victim.start()
            else:
                await asyncio.sleep(0.1)
        assert kills == {"issuer": KILLS, "incidents": KILLS}

        async def drained() -> bool:
            return (await _consumed_all(incidents.group, [t_inc.verdicts])
                    and await _consumed_all(issuer.group, [t_iss.verdicts, t_iss.incidents,
                                                           t_iss.identity_events]))

        await wait_until(drained, 150, "both groups to drain", poll_s=1.0)
        assert issuer.stop() == 0 and incidents.stop() == 0

        verdicts = await read_committed(t_iss.verdicts)
        assert len(verdicts) == len(plan)
        hosts_out = es.decoded(await read_committed(t_iss.hosts))
        creds = es.decoded(await read_committed(t_iss.credentials))
        events = [e for e in es.decoded(await read_committed(t_inc.incidents))
                  if e["_subject"] == "hostgate.IncidentEvent"]

        # the issuer: one HostState per verdict, no output twice
        want = {_output_id("hs", InputRecord(None, "", {}, Coordinates(r.topic, r.partition,
                                                                      r.offset), 0))
                for r in verdicts}
        ids = Counter(h["_id"] for h in hosts_out)
        dupes = [k for k, c in ids.items() if c > 1]
        assert not dupes, f"HostState ids written twice: {dupes[:5]}"
        assert want <= set(ids), f"{len(want - set(ids))} verdicts have no HostState"
        for what, counter in (("credential id", Counter(c["credential_id"] for c in creds)),
                              ("serial", Counter(c["serial"] for c in creds))):
            assert max(counter.values(), default=1) == 1, f"a {what} was issued twice"
        passes = {f"v-{h}-{n}" for h, n, r in plan if r == "PASS"}
        assert {c["verdict_id"] for c in creds} <= passes
        issued = {c["serial"] for c in creds}

        # final state per host: revocations only of issued serials, never twice, never held
        folded = fold_states(await read_changelog(es.bootstrap(),
                                                  t_iss.changelog("issuer", "hosts")))
        assert folded.problems == []
        failed_hosts = {h for h, _, r in plan if r == "FAIL"}
        for host, state in folded.states.items():
            revoked = [r.serial for r in state.revoked]
            held = {h.serial for h in state.held}
            assert len(revoked) == len(set(revoked)), f"{host}: a serial revoked twice"
            assert set(revoked) <= issued and held <= issued
            assert not held & set(revoked), f"{host}: a serial both held and revoked"
            if host in failed_hosts:
                assert state.state.value == "QUARANTINED"  # no incident was ever resolved
        assert set(folded.states) == {h for h, _, _ in plan}

        # the incidents stage: one event per failing verdict, one OPENED per failing host
        fails = Counter(h for h, _, r in plan if r == "FAIL")
        assert Counter(e["host_id"] for e in events) == fails
        ev_ids = Counter(e["_id"] for e in events)
        assert max(ev_ids.values(), default=1) == 1, "an incident event was written twice"
        opened = Counter(e["host_id"] for e in events if e["event"] == "OPENED")
        assert opened == Counter(dict.fromkeys(fails, 1))
        for host, n in fails.items():
            last = max((e for e in events if e["host_id"] == host),
                       key=lambda e: e["occurrences"])
            assert last["occurrences"] == n
        findings = await read_committed(t_inc.findings)
        f_ids = Counter(v for r in findings for k, v in r.headers if k == "hg-id")
        assert max(f_ids.values(), default=1) == 1, "an OCSF finding was written twice"

        # and no CA key material in any log line or record
        records = await es.read_all_records(prefix)
        blobs = {"issuer log": issuer.log_bytes(), "incidents log": incidents.log_bytes(),
                 **es.record_blobs(records)}
        assert es.find_secrets(blobs, ca) == []
        print(f"seed={seed} verdicts={len(plan)} credentials={len(creds)} "
              f"incident_events={len(events)} kills={kills} starts="
              f"{issuer.starts}/{incidents.starts}", file=sys.stderr)
    finally:
        issuer.stop()
        incidents.stop()
        if sys.exc_info()[0] is not None:
            print(f"seed={seed}", file=sys.stderr)
            for proc in (issuer, incidents):
                print(f"--- {proc.stage} log tail", proc.log_bytes()[-3000:].decode(
                    errors="replace"), sep="\n", file=sys.stderr)
        await es.delete_topics(prefix)

