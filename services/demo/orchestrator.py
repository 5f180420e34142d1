"""``hostgate demo``: the whole pipeline and a simulated fleet, started, watched and stopped.

Steps (each stops everything started so far when it fails, and on Ctrl-C/SIGTERM):

1. plan the fleet (``services.agent.fleet.plan_hosts``; ids ``demo-<run-id>-NN``, unique per run;
   each attack naming another host gets a clean victim, ``assign_targets``);
2. ensure the topics; derive the default policy from the simulator's golden images (the
   ``from-log`` derivation) and publish it as ``demo-<run-id>`` version 1;
3. create the issuer's CA (P-256, encrypted PEM, passphrase in a 0600 file) and start the stages
   that need no fleet (verifier, incidents, issuer) as ``hostgate run <stage>`` processes;
4. start the fleet (one swtpm per host, EK certificates from the fleet's private local CA) and
   then the collector with that CA as its EK CA;
5. wait for every stage's ``/readyz``; a watcher (no group, read_committed, from the end offsets
   taken now) follows rejections, verdicts, incidents, host states and credentials of this run's
   hosts; every host enrols (credential activation) and attests over Kafka. Protocol tamper
   profiles go through the agent client's evidence hooks: ``replayed_nonce`` attests honestly
   first (and is trusted), then answers its next challenge with that used nonce;
   ``stale_quote`` holds its evidence past the nonce's expiry (the collector runs with a short
   nonce TTL, ``DemoConfig.nonce_ttl_s``, so that takes seconds). Protocol attacks
   (``services.agent.attacks``) run instead of an attestation: ``borrowed_host_id`` and
   ``challenge_flood`` wait for their victim's enrolment and speak as it over the attacker's own
   TPM, and the victim attests only after them (so a flood that counted would starve it). Their
   rejections are keyed by the victim; the watcher gives each to the host that wrote the refused
   record, by its coordinates (:class:`Attribution`);
6. every host that becomes TRUSTED fetches its credential from ``attest.credentials.v1`` and
   opens it in its own swtpm, as its agent would (``credential_receiver.receive_credential``:
   import under the EK, PolicyPCR over the attested values, unseal, decrypt the host key,
   match it to the certificate issued by the run's CA);
7. when every host has its final state (or the deadline passes), write ``report.json`` and
   ``report.html`` and check the result against the tamper mix.

Stage processes run in their own session (a terminal Ctrl-C reaches only the demo, which stops
them in order with SIGTERM) and get ``PR_SET_PDEATHSIG`` so they end with the demo even if it
is killed. Their logs are ``<run dir>/<stage>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from services.demo.report import (
    REFUSED_AS,
    ROUNDS,
    DemoRun,
    HostOutcome,
    RuleFailure,
    rule_event_line,
)
from services.errors import ConfigError, HostgateError
from services.runtime.topics import NAMESPACE_ENV, Topics
from services.wire import subjects

REPO: Final = Path(__file__).resolve().parents[2]
PIPELINE_STAGES: Final = ("collector", "verifier", "incidents", "issuer")
DEFAULT_HOSTS: Final = 20
#: The default mix, in the order a smaller fleet takes them (half the hosts are tampered, so
#: the first ``hosts // 2`` profiles run; the other half are clean hosts of every image, two of
#: them the victims of ``challenge_flood`` and ``borrowed_host_id``). The first ten: what the
#: verifier stops (Secure Boot off, kernel debugger on, a relabelled kernel, a forged log,
#: dropped Windows events) and what intake stops (a flood naming another host, another host's
#: id, too few PCRs quoted, a never-enrolled AK, records on a foreign partition).
DEFAULT_TAMPERS: Final[tuple[tuple[str, int], ...]] = (
    ("secure_boot_off", 1), ("kernel_debugger_on", 1), ("boot_app_relabelled", 1),
    ("challenge_flood", 1), ("forged_log", 1), ("borrowed_host_id", 1),
    ("windows_events_dropped", 1), ("quote_fewer_pcrs", 1), ("wrong_ak", 1),
    ("foreign_partition", 1), ("replayed_nonce", 1), ("sha1_only_log", 1),
    ("unknown_bootloader", 1))
#: Nonce lifetime the demo's collector runs with: short, so ``stale_quote`` (evidence held past
#: the expiry) costs seconds, yet ample for an honest host to quote and send.
DEMO_NONCE_TTL_S: Final = 15.0
#: Environment of the issuer stage's CA (the issuer shell reads these; see services.issuer).
ISSUER_CA_ENV: Final = {"key": "HOSTGATE_ISSUER_CA_KEY", "cert": "HOSTGATE_ISSUER_CA_CERT",
                        "passphrase_file": "HOSTGATE_ISSUER_CA_PASSPHRASE_FILE"}
_PR_SET_PDEATHSIG: Final = 1


class DemoError(HostgateError):
    """The demo could not start or run its pipeline."""


@dataclass(frozen=True)
class DemoConfig:
    """Everything one demo run needs."""

    hosts: int = DEFAULT_HOSTS
    tampers: tuple[tuple[str, int], ...] | None = None
    """``None``: the default mix (as many of ``DEFAULT_TAMPERS`` as half the hosts allow)."""
    seed: int = 0
    out: Path | None = None
    home: Path = field(default_factory=lambda: Path(
        os.environ.get("HOSTGATE_HOME") or Path.home() / ".local" / "share" / "hostgate"))
    bootstrap: str = field(default_factory=lambda: os.environ.get(
        "HOSTGATE_BOOTSTRAP", "127.0.0.1:19092"))
    follow: bool = False
    timeout_s: float = 150.0
    """Longest wait for every host's final state once the fleet is attesting."""
    concurrency: int = 4
    """Hosts enrolling/attesting at the same time."""
    run_id: str = ""
    nonce_ttl_s: float = DEMO_NONCE_TTL_S
    """The collector's nonce lifetime (``HOSTGATE_NONCE_TTL_S``)."""
    credential_timeout_s: float = 60.0
    """Longest wait of a trusted host for its credential on the topic."""
    topics: Topics = field(default_factory=Topics.from_env)
    """The run's topics (``HOSTGATE_TOPIC_NAMESPACE``): stages, fleet and watcher use them."""

    def tamper_mix(self) -> dict[str, int]:
        """The tamper counts in force."""
        if self.tampers is not None:
            out: dict[str, int] = {}
            for name, n in self.tampers:
                out[name] = out.get(name, 0) + n
            return out
        return dict(DEFAULT_TAMPERS[: max(0, self.hosts // 2)])


def new_run_id(now: dt.datetime | None = None) -> str:
    """``YYYYmmdd-HHMMSS-xxxx`` (UTC; host-id safe)."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def plan(config: DemoConfig, run_id: str) -> list[Any]:
    """The run's ``HostSpec`` list: tampered hosts spread by ``seed``, ids ``demo-<run>-NN``."""
    from services.agent.fleet import assign_targets, plan_hosts

    specs = plan_hosts(config.hosts, config.tamper_mix(), prefix=f"demo-{run_id}")
    rng = random.Random(config.seed)
    rng.shuffle(specs)
    width = max(2, len(str(len(specs) - 1)))
    # victims are chosen again under the new ids (attackers name them by id)
    return assign_targets([replace(s, host_id=f"demo-{run_id}-{i:0{width}d}",
                                   seed=config.seed * 1000 + i, target=None)
                           for i, s in enumerate(specs)])


# --- trust material -----------------------------------------------------------------------
def derive_demo_policy(policy_id: str) -> str:
    """The default policy: ``from-log`` derivation over every golden image of the simulator."""
    from services.agent.measured_boot import IMAGES, synthesise
    from services.verifier.policy.derive import derive_policy, golden_from_log

    golden = [golden_from_log(synthesise(name, 0).log_bytes(), f"golden image {name}")
              for name in IMAGES]
    return derive_policy(golden, policy_id=policy_id, version="1",
                         description="hostgate demo: derived from the simulator's golden "
                                     "images (" + ", ".join(IMAGES) + ").").text


def create_issuing_ca(directory: Path, now: dt.datetime) -> dict[str, Path]:
    """A P-256 issuing CA for the demo: encrypted PEM key, certificate, passphrase file (0600).
    Returns the paths by ``ISSUER_CA_ENV`` key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from services.issuer.ca import self_signed_ca_certificate

    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    passphrase = secrets.token_urlsafe(24).encode()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_ca_certificate(key, "hostgate demo issuing CA", now - dt.timedelta(
        minutes=5), dt.timedelta(days=30))
    paths = {"key": directory / "ca-key.pem", "cert": directory / "ca-cert.pem",
             "passphrase_file": directory / "ca-passphrase"}
    for name, data in (
        ("passphrase_file", passphrase + b"\n"),
        ("key", key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(passphrase))),
        ("cert", cert.public_bytes(serialization.Encoding.PEM)),
    ):
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return paths


# --- stage processes ----------------------------------------------------------------------
def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StageProcess:
    """``hostgate run <stage>`` as a child process with its own log and health port."""

    def __init__(self, stage: str, env: Mapping[str, str], log_path: Path) -> None:
        self.stage = stage
        self.port = free_port()
        self.env = {**env, "HOSTGATE_HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (from the main thread: the death signal follows the forking thread)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", self.stage], cwd=REPO,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int | None:
        """The child's pid (None before start)."""
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        """``/readyz`` answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz",
                                        timeout=1) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    def log_tail(self, chars: int = 1500) -> str:
        """The end of its log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (the worker commits its batch and leaves the group), SIGKILL after
        ``timeout_s``. Idempotent; returns the exit status."""
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


# --- watching the topics ------------------------------------------------------------------
KINDS: Final = Topics()
"""The watched topics by their names without a namespace: what ``apply_record`` dispatches on
(the :class:`Watcher` maps its deployment's names to these)."""
WATCHED: Final[Mapping[str, str]] = {
    KINDS.rejections: subjects.INTAKE_REJECTED,
    KINDS.verdicts: subjects.VERDICT,
    KINDS.incidents: subjects.INCIDENT_EVENT,
    KINDS.hosts: subjects.HOST_STATE,
    KINDS.credentials: subjects.CREDENTIAL_ISSUED,
}


def watched_topics(topics: Topics) -> dict[str, str]:
    """The deployment's watched topics -> their kind (a key of ``WATCHED``)."""
    return {topics.rejections: KINDS.rejections, topics.verdicts: KINDS.verdicts,
            topics.incidents: KINDS.incidents, topics.hosts: KINDS.hosts,
            topics.credentials: KINDS.credentials}


def apply_record(h: HostOutcome, topic: str, rec: Mapping[str, Any]) -> HostOutcome:
    """Fold one observed record of this host into its outcome (pure); ``topic`` is the kind
    (the topic's name without a namespace)."""
    if topic == KINDS.rejections:
        return replace(h, rejection=str(rec["reason"]), rejection_detail=str(rec["detail"]),
                       rejections=(*h.rejections, str(rec["reason"])), answers=h.answers + 1)
    if topic == KINDS.verdicts:
        rules = tuple(RuleFailure(str(f["rule_id"]), str(f["sentence"]),
                                  rule_event_line(f.get("event")))
                      for f in rec["failed_rules"])
        return replace(h, verdict=str(rec["result"]), verdict_id=str(rec["verdict_id"]),
                       failed_rules=rules, answers=h.answers + 1)
    if topic == KINDS.incidents:
        return replace(h, incident_id=h.incident_id or str(rec["incident_id"]))
    if topic == KINDS.hosts:
        return replace(h, trust=str(rec["state"]),
                       cert_serial=rec.get("cert_serial") or h.cert_serial,
                       incident_id=rec.get("incident_id") or h.incident_id)
    if topic == KINDS.credentials:
        return replace(h, credential_id=str(rec["credential_id"]),
                       cert_serial=h.cert_serial or str(rec["serial"]))
    return h


def refused_since_trusted(h: HostOutcome) -> bool:
    """A failed verdict seen: a TRUSTED state is about to change. (An intake rejection changes
    no trust state: it is a finding about a record, which anyone may have written.)"""
    return h.verdict == "FAIL"


def wants_credential(h: HostOutcome) -> bool:
    """Whether the host, trusted after its last round, should now open its credential."""
    return (h.trust == "TRUSTED" and bool(h.cert_serial) and h.verdict == "PASS"
            and bool(h.verdict_id) and h.answers >= h.rounds and not h.error
            and not refused_since_trusted(h))


def is_final(h: HostOutcome, *, issuer_running: bool) -> bool:
    """Whether nothing more is expected for this host."""
    if h.tamper in REFUSED_AS:  # an attacker: done when every record it wrote is answered
        if h.attack_sent is None:
            return bool(h.error)
        return len(h.rejections) >= h.attack_sent or bool(h.attack_got_through)
    if h.error and h.verdict is None and not h.refused_at_intake:
        return True
    if h.answers < h.rounds and not h.error:
        return False  # more evidence rounds to come
    if issuer_running:
        if h.trust == "TRUSTED":
            if refused_since_trusted(h):
                return False  # the quarantine is on its way
            return bool(h.cert_serial) and (h.credential_opened is not None or bool(h.error))
        if h.trust == "QUARANTINED":
            return bool(h.incident_id) and h.verdict is not None
        # no trust state: final only when refused at intake alone (that changes no state)
        return h.verdict is None and h.refused_at_intake
    if h.verdict == "PASS":
        return True
    if h.verdict is None:
        return h.refused_at_intake
    return bool(h.incident_id)


@dataclass
class Attribution:
    """Who wrote the records a rejection refers to, when the records name another host.

    A rejection is keyed by the host id the refused record names, which for ``borrowed_host_id``
    and ``challenge_flood`` is the victim's. The attacker reports the coordinates of every
    record it wrote (``services.agent.attacks.AttackResult.sent``); a rejection whose ``source``
    is one of them is the attacker's. While an attack naming a host is still writing, that
    host's rejections wait (:meth:`route` says ``None``) until the coordinates are known, so a
    rejection is never given to the victim for a record it did not write."""

    owners: dict[tuple[str, int, int], str] = field(default_factory=dict)
    """(topic, partition, offset) of an attack's record -> the attacker's host id."""
    in_flight: dict[str, int] = field(default_factory=dict)
    """Victim host id -> attacks naming it that have not reported yet."""

    def route(self, key: str, rec: Mapping[str, Any]) -> str | None:
        """The row a rejection keyed ``key`` belongs to, or None to look again later."""
        src = rec.get("source") or {}
        owner = self.owners.get((str(src.get("topic")), int(src.get("partition", -1)),
                                 int(src.get("offset", -1))))
        if owner is not None:
            return owner
        return None if self.in_flight.get(key) else key

    def reported(self, attacker: str, victim: str | None,
                 coordinates: list[tuple[str, int, int]]) -> None:
        """An attack finished writing (or failed): its records are known from now on."""
        for c in coordinates:
            self.owners[c] = attacker
        if victim is not None and self.in_flight.get(victim):
            self.in_flight[victim] -= 1


class Watcher:
    """Follows the watched topics from their end offsets at :meth:`start` (own consumer, no
    group, read_committed) and keeps every run host's :class:`HostOutcome` up to date;
    rejections go to the host whose records they refuse (:class:`Attribution`)."""

    def __init__(self, bootstrap: str, rows: dict[str, HostOutcome],
                 attribution: Attribution | None = None, topics: Topics | None = None) -> None:
        self.bootstrap = bootstrap
        self._kinds = watched_topics(topics or Topics())
        self.rows = rows
        self.attribution = attribution or Attribution()
        self._deferred: list[tuple[str, Mapping[str, Any]]] = []
        self._consumer: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._codec: Any = None

    async def start(self) -> None:
        """Connect and position at the end of every watched partition."""
        from aiokafka import TopicPartition

        from services.runtime.codec import Codec
        from services.runtime.readers import groupless_consumer
        from services.verifier.cli_audit_replay import partition_counts

        self._codec = Codec.load()
        counts = await partition_counts(self.bootstrap, list(self._kinds))
        async with contextlib.AsyncExitStack() as stack:
            c = await stack.enter_async_context(
                groupless_consumer(self.bootstrap, client_id="hostgate.demo.watch"))
            tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
            c.assign(tps)
            await c.seek_to_end(*tps)
            for tp in tps:
                await c.position(tp)
            self._consumer, self._stack = c, stack.pop_all()

    async def poll(self) -> None:
        """Fetch what arrived and fold it in (rejections kept back earlier first: nothing
        awaits between them and the new batch, so a host's rejections keep their order)."""
        batch = await self._consumer.getmany(timeout_ms=300)
        self.release_deferred()
        for tp, recs in batch.items():
            kind = self._kinds[tp.topic]
            subject = WATCHED[kind]
            for r in recs:
                if r.value is None or r.key is None:
                    continue
                host = r.key.decode("utf-8", "replace")
                row = self.rows.get(host)
                if row is None:
                    continue
                try:
                    rec = self._codec.decode(r.value, expected={subject}).record
                except HostgateError:
                    continue
                if kind == KINDS.rejections:
                    self.fold_rejection(host, rec)
                else:
                    self.rows[host] = apply_record(row, kind, rec)

    def release_deferred(self) -> None:
        """Fold the rejections kept back so far, in order (those still unattributable, and
        any behind them for the same host, are kept back again)."""
        waiting, self._deferred = self._deferred, []
        for host, rec in waiting:
            self.fold_rejection(host, rec)

    def fold_rejection(self, host: str, rec: Mapping[str, Any]) -> None:
        """Fold a rejection keyed ``host`` into the row of whoever wrote the refused record,
        or keep it for the next poll while that is not known yet."""
        owner = self.attribution.route(host, rec)
        if owner is None or any(kept == host for kept, _ in self._deferred):
            self._deferred.append((host, rec))  # behind what is kept back for this key
        elif owner in self.rows:
            self.rows[owner] = apply_record(self.rows[owner], KINDS.rejections, rec)

    async def stop(self) -> None:
        """Close the consumer."""
        if self._stack is not None:
            with contextlib.suppress(Exception):
                await self._stack.aclose()
            self._consumer = self._stack = None


# --- the run ------------------------------------------------------------------------------
@dataclass
class RunState:
    """Mutable state of one run (private to the orchestrator and its live view)."""

    run_id: str
    run_dir: Path
    rows: dict[str, HostOutcome]
    phase: str = "planning"
    stages: dict[str, StageProcess] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    policy_id: str = ""
    policy_digest: str = ""
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(
        timespec="seconds"))
    fleet: Any = None
    ca_cert_path: Path | None = None
    """The issuing CA's certificate: a delivered credential must chain to it."""
    opening: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    """Hosts fetching and opening their credential (or done)."""
    attribution: Attribution = field(default_factory=Attribution)
    """Which rejections refuse an attacker's records (see :class:`Attribution`)."""
    enrolled: dict[str, asyncio.Future[bool]] = field(default_factory=dict)
    """Host id -> whether its enrolment succeeded (attacks naming it wait for this)."""
    attacked: dict[str, asyncio.Event] = field(default_factory=dict)
    """Attacker host id -> set once its attack has reported (its victim attests after)."""

    @property
    def issuer_running(self) -> bool:
        """Whether an issuer stage is part of this run."""
        return "issuer" in self.stages

    def done(self) -> int:
        """Hosts whose outcome is final."""
        return sum(is_final(h, issuer_running=self.issuer_running) for h in self.rows.values())

    def mark(self, name: str, since: float) -> float:
        """Record a phase's duration; returns now."""
        now = time.monotonic()
        self.timings[name] = round(now - since, 2)
        return now


def available_stages() -> tuple[str, ...]:
    """The pipeline stages ``hostgate run`` knows on this build."""
    from services.runtime.stages import STAGE_FACTORIES

    return tuple(s for s in PIPELINE_STAGES if s in STAGE_FACTORIES)


def _stage_env(config: DemoConfig, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTGATE_")}
    for keep in ("HOSTGATE_HOME", "HOSTGATE_SCHEMA_DIR"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    env.update({"HOSTGATE_BOOTSTRAP": config.bootstrap, "HOSTGATE_BATCH_MAX_MS": "150",
                "HOSTGATE_POLL_TIMEOUT_MS": "100", "HOSTGATE_SESSION_TIMEOUT_MS": "10000",
                "PYTHONUNBUFFERED": "1"})
    if config.topics.namespace:
        env[NAMESPACE_ENV] = config.topics.namespace
    env.update(extra)
    return env


async def _prepare_topics_and_policy(config: DemoConfig, st: RunState) -> None:
    from services.runtime.topics import ensure_topics
    from services.verifier.publish import publish

    t = time.monotonic()
    await ensure_topics(config.bootstrap, specs=config.topics.all_specs())
    t = st.mark("topics", t)
    text = derive_demo_policy(st.policy_id)
    (st.run_dir / "policy.yaml").write_text(text)
    done = await publish(text, bootstrap=config.bootstrap, version=1, author="hostgate demo",
                         topics=config.topics, first_only=True)
    st.policy_digest = done.digest
    st.mark("policy", t)


def _start_stage(st: RunState, config: DemoConfig, stage: str, extra: Mapping[str, str]
                 ) -> None:
    proc = StageProcess(stage, _stage_env(config, extra), st.run_dir / f"{stage}.log")
    st.stages[stage] = proc
    proc.start()


async def _wait_ready(st: RunState, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = dict(st.stages)
    while waiting:
        for name, proc in list(waiting.items()):
            if not proc.alive():
                raise DemoError(f"stage {name} exited with status {proc.proc and proc.proc.poll()}"
                                f" during start-up; its log ({proc.log_path.name}) ends:\n"
                                f"{proc.log_tail()}")
            if await asyncio.to_thread(proc.ready):
                del waiting[name]
        if time.monotonic() > deadline:
            raise DemoError(f"stages not ready after {timeout_s:.0f}s: {', '.join(waiting)} "
                            f"(logs in {st.run_dir})")
        await asyncio.sleep(0.3)


async def _wait_round_answered(st: RunState, host_id: str, answers: int,
                               timeout_s: float) -> None:
    """Until the host's ``answers``-th verdict/rejection is seen and, for a pass with the issuer
    running, its trust state is in (the watcher updates ``st.rows`` in this event loop)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        h = st.rows[host_id]
        if h.answers >= answers and not (st.issuer_running and h.verdict == "PASS"
                                         and h.trust != "TRUSTED"):
            return
        await asyncio.sleep(0.2)
    raise DemoError(f"host {host_id}: no outcome of evidence round {answers} within "
                    f"{timeout_s:.0f}s")


def _client_config(config: DemoConfig) -> Any:
    from services.agent.client import ClientConfig
    from services.agent.fleet import DEFAULT_PCRS

    return ClientConfig(config.bootstrap, config.topics, timeout_s=60.0, connect_timeout_s=30.0,
                        offered_pcrs=DEFAULT_PCRS)


async def _wait_for_attacks_on(st: RunState, host_id: str, timeout_s: float) -> None:
    """Until every attack naming ``host_id`` has reported, so its attestation comes after them
    (had the collector counted a flood against it, its own request would now be refused)."""
    events = [st.attacked[a] for a in st.rows[host_id].named_by if a in st.attacked]
    if not events:
        return
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout_s)
    except TimeoutError:
        st.notes.append(f"{host_id} attested before the attacks naming it had finished")


async def _drive_host(host: Any, config: DemoConfig, codec: Any, st: RunState,
                      sem: asyncio.Semaphore) -> None:
    """Enrol and attest one host over Kafka, as many rounds as its profile needs; its
    protocol tamper profile (if any) acts through the client's evidence hook, a protocol attack
    through :func:`_drive_attacker`."""
    from services.agent.client import AgentClient
    from services.agent.hosts import SimulatedHostSide

    if st.rows[host.host_id].tamper in REFUSED_AS:
        await _drive_attacker(host, config, codec, st, sem)
        return
    side = SimulatedHostSide(host)
    rounds = st.rows[host.host_id].rounds
    enrolled = st.enrolled.get(host.host_id)
    try:
        async with AgentClient(side, _client_config(config), codec=codec,
                               hook=side.hook) as client:
            async with sem:
                await client.enroll()
            if enrolled is not None:
                enrolled.set_result(True)
            await _wait_for_attacks_on(st, host.host_id, config.timeout_s)
            for n in range(1, rounds + 1):
                if n > 1:  # let the previous round be judged first (not holding a slot)
                    await _wait_round_answered(st, host.host_id, n - 1, config.timeout_s)
                async with sem:
                    await client.attest()
    except HostgateError as exc:
        st.rows[host.host_id] = replace(st.rows[host.host_id],
                                        error=f"{type(exc).__name__}: {exc}")
    finally:
        if enrolled is not None and not enrolled.done():
            enrolled.set_result(False)


async def _drive_attacker(host: Any, config: DemoConfig, codec: Any, st: RunState,
                          sem: asyncio.Semaphore) -> None:
    """Run one host's protocol attack (``services.agent.attacks``). An attack naming another
    host waits for that host's enrolment and speaks as it over the attacker's own TPM; the
    coordinates of everything it wrote go to the run's :class:`Attribution`."""
    from services.agent.attacks import run_attack
    from services.agent.client import AgentClient
    from services.agent.hosts import SimulatedHostSide

    row = st.rows[host.host_id]
    victim = row.target
    client: Any = None
    try:
        if victim is not None:
            try:
                ok = await asyncio.wait_for(asyncio.shield(st.enrolled[victim]),
                                            config.timeout_s)
            except TimeoutError:
                ok = False
            if not ok:
                raise DemoError(f"{victim} did not enrol, so the {row.tamper} attack naming it "
                                "was not run")
        side = SimulatedHostSide(host, speaks_as=victim)
        client = AgentClient(side, _client_config(config), codec=codec)
        async with client, sem:
            if victim is None:  # a host speaking for itself: enrolled like any other
                await client.enroll()
            result = await run_attack(str(row.tamper), client)
        st.rows[host.host_id] = replace(st.rows[host.host_id], attack_sent=len(result.sent),
                                        attack_heard=result.heard,
                                        attack_got_through=result.got_through)
    except HostgateError as exc:
        st.rows[host.host_id] = replace(st.rows[host.host_id],
                                        error=f"{type(exc).__name__}: {exc}")
    finally:
        written = [s.coordinates for s in client.sent] if client is not None else []
        st.attribution.reported(host.host_id, victim, written)
        st.attacked[host.host_id].set()


def _open_credential_blocking(bootstrap: str, topic: str, host: Any, verdict_id: str,
                              ca_cert_path: Path | None, timeout_s: float) -> Any:
    """The host agent's side of delivery, in a worker thread with its own event loop (the
    TPM work blocks): read the credential issued for ``verdict_id`` and open it in the TPM."""
    from cryptography import x509

    from services.agent.credential_receiver import receive_credential

    ca = (x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
          if ca_cert_path is not None else None)
    return asyncio.run(receive_credential(bootstrap, host.host_id, host, topic=topic,
                                          verdict_id=verdict_id, ca_certificate=ca,
                                          timeout_s=timeout_s))


async def _open_credential(host: Any, config: DemoConfig, st: RunState,
                           sem: asyncio.Semaphore) -> None:
    """Record in the host's row whether its TPM opened the credential of its passing verdict."""
    h = st.rows[host.host_id]
    try:
        async with sem:
            got = await asyncio.to_thread(_open_credential_blocking, config.bootstrap,
                                          config.topics.credentials, host,
                                          h.verdict_id, st.ca_cert_path,
                                          config.credential_timeout_s)
        want = st.rows[host.host_id].cert_serial
        ok, detail = (True, got.serial) if got.serial == want else (
            False, f"opened credential has serial {got.serial}, the host state names {want}")
    except Exception as exc:  # reported per host (Kafka, TPM or delivery error): never fatal
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    st.rows[host.host_id] = replace(st.rows[host.host_id], credential_opened=ok,
                                    credential_detail=detail)


def _start_credential_opening(st: RunState, config: DemoConfig,
                              sem: asyncio.Semaphore) -> None:
    for host_id, h in st.rows.items():
        if host_id not in st.opening and wants_credential(h):
            st.opening[host_id] = asyncio.create_task(
                _open_credential(st.fleet.host(host_id), config, st, sem))


async def _run_fleet(config: DemoConfig, st: RunState,
                     on_tick: Callable[[RunState], None]) -> None:
    from services.runtime.codec import Codec

    t = time.monotonic()
    st.phase = "waiting for the stages to be ready"
    on_tick(st)
    await _wait_ready(st)
    t = st.mark("stages_ready", t)
    watcher = Watcher(config.bootstrap, st.rows, st.attribution, config.topics)
    await watcher.start()
    loop = asyncio.get_running_loop()
    st.enrolled = {h: loop.create_future() for h in st.rows}
    st.attacked = {h: asyncio.Event() for h, row in st.rows.items() if row.tamper in REFUSED_AS}
    try:
        st.phase = "hosts enrolling and attesting"
        codec = Codec.load()
        sem = asyncio.Semaphore(max(1, config.concurrency))
        opening_sem = asyncio.Semaphore(max(1, config.concurrency))
        drive = asyncio.gather(*(_drive_host(h, config, codec, st, sem) for h in st.fleet))
        deadline = time.monotonic() + config.timeout_s
        while st.done() < len(st.rows) and time.monotonic() < deadline:
            await watcher.poll()
            if st.issuer_running:
                _start_credential_opening(st, config, opening_sem)
            on_tick(st)
            for name, proc in st.stages.items():
                if not proc.alive():
                    raise DemoError(f"stage {name} died; its log ends:\n{proc.log_tail()}")
        await drive
        if st.opening:
            await asyncio.gather(*st.opening.values())
        if st.done() < len(st.rows):
            st.notes.append(f"{len(st.rows) - st.done()} hosts had no final state after "
                            f"{config.timeout_s:.0f}s")
        st.mark("fleet_to_final", t)
        st.phase = "done" if not config.follow else "following (Ctrl-C stops everything)"
        on_tick(st)
        while config.follow:
            await watcher.poll()
            on_tick(st)
    finally:
        await watcher.stop()


def _ek_ca_dir(st: RunState) -> Path:
    d = st.run_dir / "ek-ca"
    d.mkdir(parents=True, exist_ok=True)
    (d / "root.pem").write_bytes(st.fleet.ek_ca_root_pem())
    (d / "intermediate.pem").write_bytes(st.fleet.ek_ca_intermediate_pem())
    return d


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_demo(config: DemoConfig, on_tick: Callable[[RunState], None] = lambda st: None
             ) -> tuple[DemoRun, RunState]:
    """Run the demo (see the module docstring); everything started is stopped on return,
    error or interrupt. ``on_tick`` is called as the state changes (the live view)."""
    from services.agent.fleet import Fleet

    run_id = config.run_id or new_run_id()
    run_dir = (config.out or config.home / "demo" / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = plan(config, run_id)
    rows = {s.host_id: HostOutcome(
        s.host_id, s.image, s.tamper, rounds=ROUNDS.get(s.tamper or "", 1), target=s.target,
        named_by=tuple(a.host_id for a in specs if a.target == s.host_id)) for s in specs}
    st = RunState(run_id, run_dir, rows, policy_id=f"demo-{run_id}")
    for s in specs:
        if s.target is not None:  # its victim's rejections wait until the attack reported
            st.attribution.in_flight[s.target] = st.attribution.in_flight.get(s.target, 0) + 1
    stages = available_stages()
    missing = [s for s in PIPELINE_STAGES if s not in stages]
    if missing:
        st.notes.append(f"stage(s) not available in this build: {', '.join(missing)} "
                        "(the self-check judges what the running stages produce)")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        st.phase = "publishing the policy"
        on_tick(st)
        asyncio.run(_prepare_topics_and_policy(config, st))
        t = time.monotonic()
        ca = create_issuing_ca(run_dir / "issuer-ca", dt.datetime.now(dt.UTC))
        st.ca_cert_path = ca["cert"]
        for stage in stages:
            if stage == "verifier":
                _start_stage(st, config, stage, {"HOSTGATE_POLICY_ID": st.policy_id})
            elif stage == "issuer":
                _start_stage(st, config, stage, {ISSUER_CA_ENV[k]: str(p)
                                                 for k, p in ca.items()})
            elif stage == "incidents":
                _start_stage(st, config, stage, {})
        t = st.mark("stages_spawned", t)
        st.phase = f"starting {len(specs)} simulated hosts (swtpm)"
        on_tick(st)
        st.fleet = Fleet(run_dir / "fleet", specs, workers=2, setup_workers=2)
        st.fleet.start()
        t = st.mark("fleet_start", t)
        if "collector" in stages:
            _start_stage(st, config, "collector", {"HOSTGATE_EK_CA_DIR": str(_ek_ca_dir(st)),
                                                   "HOSTGATE_NONCE_TTL_S": f"{config.nonce_ttl_s:g}",
                                                   # challenges ask for the policy's coverage
                                                   "HOSTGATE_POLICY_ID": st.policy_id})
        try:
            asyncio.run(_run_fleet(config, st, on_tick))
        except KeyboardInterrupt:
            if not st.phase.startswith("following"):
                raise  # interrupted before the fleet was done: no report
    finally:
        st.phase = "stopping"
        on_tick(st)
        stop_all(st)
        signal.signal(signal.SIGTERM, previous)
        _write_processes(st)
    finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    run = DemoRun(run_id=run_id, started_at=st.started_at, finished_at=finished,
                  duration_s=time.monotonic() - st.started, policy_id=st.policy_id,
                  policy_digest=st.policy_digest, stages=tuple(st.stages),
                  issuer_running=st.issuer_running, hosts=tuple(st.rows.values()),
                  notes=tuple(st.notes), timings=dict(st.timings))
    return run, st


def _write_processes(st: RunState) -> None:
    """``processes.json``: the pid of every stage process the run started (for audits/tests)."""
    import json

    doc = {name: {"pid": p.pid, "exit_status": p.proc.returncode if p.proc else None}
           for name, p in st.stages.items()}
    (st.run_dir / "processes.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def stop_all(st: RunState) -> None:
    """Stop the collector first (no new intake), then the other stages, then the swtpms."""
    order = sorted(st.stages, key=lambda s: PIPELINE_STAGES.index(s))
    for name in order:
        with contextlib.suppress(Exception):
            st.stages[name].stop()
    if st.fleet is not None:
        st.fleet.stop()


def parse_tampers(items: list[str]) -> tuple[tuple[str, int], ...]:
    """``--tamper profile=count`` values (count defaults to 1), checked against the profiles."""
    from services.agent.tamper import get_profile

    out = []
    for item in items:
        name, sep, count = item.partition("=")
        get_profile(name.strip())
        try:
            n = int(count) if sep else 1
        except ValueError:
            raise ConfigError(f"--tamper {item!r}: count must be an integer") from None
        if n < 0:
            raise ConfigError(f"--tamper {item!r}: count must not be negative")
        out.append((name.strip(), n))
    return tuple(out)
