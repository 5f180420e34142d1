"""A fleet of simulated hosts: one swtpm each, booted from a golden image, some tampered.

``Fleet(workdir, specs)`` provisions every host with its own EK and EK certificate from the
fleet's private local CA (whose root is then a trusted EK CA for the collector), starts the
swtpms, creates each host's AK and extends its synthesised measured boot. Each
``SimulatedHost`` then answers like an agent would: ``ek_cert``, ``ek_public``, ``ak_public``,
``event_log``, ``quote(nonce, pcrs)``, ``activate(challenge)``, ``unseal(sealed)`` — with its
tamper profile applied to what it measures or sends. Over Kafka (``client.SimulatedHostSide``)
the protocol profiles ``replayed_nonce`` and ``stale_quote`` are left to the agent client's
evidence hooks, so the collector sees the real protocol abuse (a used nonce, an expired one),
and the protocol attacks (``foreign_partition``, ``borrowed_host_id``, ``challenge_flood``) to
``services.agent.attacks``; such a host's own quotes and log are honest.

A profile that edits the log (``TamperProfile.log_edit``) is applied as root would apply it:
the boot's measurements are extended first, then root's own extends (e.g. the approved kernel's
digest after a relabelled one) go into the same swtpm, and the host reports the edited log.

swtpm processes are started from the calling thread (see ``agent.swtpm``); provisioning and
TPM work run in a small thread pool (the machine has few cores; RSA work is CPU bound).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from threading import Lock
from typing import TypeVar

from services.agent.measured_boot import IMAGES, MeasuredBoot, get_image, synthesise
from services.agent.swtpm import LocalCA, SwtpmInstance, clone_state, provision
from services.agent.tamper import EvidenceTamper, TamperProfile, UnknownTamperProfile, get_profile
from services.agent.tpm import AgentTpm, AkInfo, EkInfo, Quote, Selection, normalise_selection
from services.errors import HostgateError
from services.tpm.credential import CredentialChallenge, SealedCredential
from services.tpm.eventlog_builder import HASH_ALGS, LogEvent

#: PCRs a simulated host quotes in every active bank when asked without a selection (local
#: use: ``hostgate fleet simulate``, benchmarks): firmware and boot loader (0-9), Windows
#: (12-14). Over Kafka a host quotes exactly the challenge's selection.
DEFAULT_PCRS: tuple[int, ...] = (*range(10), 12, 13, 14)
MAX_HOSTS = 500
T = TypeVar("T")


class FleetError(HostgateError):
    """The fleet could not be planned, started or driven as asked."""


@dataclass(frozen=True)
class HostSpec:
    """What to simulate for one host."""

    host_id: str
    image: str
    tamper: str | None = None
    seed: int = 0
    target: str | None = None
    """The host whose id this host's attack records name (``borrowed_host_id``,
    ``challenge_flood``); see :func:`assign_targets`."""


@dataclass(frozen=True)
class Evidence:
    """What the host sends for one attestation (untrusted until the verifier checked it)."""

    host_id: str
    requested_nonce: bytes
    quote: Quote
    event_log: bytes
    ak_public: bytes


@dataclass(frozen=True)
class StartTimings:
    """Seconds spent in each start phase for the whole fleet."""

    provision_s: float
    start_swtpm_s: float
    enrol_prepare_s: float
    per_host_prepare_s: tuple[float, ...] = field(default=())


def plan_hosts(count: int, tamper_counts: Mapping[str, int] | None = None,
               image: str | None = None, *, prefix: str = "sim-host") -> list[HostSpec]:
    """Assign images and tamper profiles to ``count`` hosts.

    Without ``image`` the catalogue's images take turns; tampered hosts get an image their
    profile fits (Windows-only profiles the Windows image, Linux-only ones a Linux image).
    """
    if not 1 <= count <= MAX_HOSTS:
        raise FleetError(f"host count must be 1..{MAX_HOSTS}, got {count}")
    if image is not None:
        get_image(image)
    tampers: list[str | None] = []
    for name, n in (tamper_counts or {}).items():
        profile = get_profile(name)
        if n < 0:
            raise FleetError(f"tamper count for {name} is negative")
        if image is not None and not profile.applies_to(IMAGES[image].family):
            raise UnknownTamperProfile(f"tamper profile {name} does not apply to image {image} "
                                       f"({IMAGES[image].family})")
        tampers += [name] * n
    if len(tampers) > count:
        raise FleetError(f"{len(tampers)} tampered hosts requested but only {count} hosts")
    tampers += [None] * (count - len(tampers))
    names = list(IMAGES)
    specs = []
    for i, tamper in enumerate(tampers):
        chosen = image or names[i % len(names)]
        if tamper is not None and not get_profile(tamper).applies_to(IMAGES[chosen].family):
            family = get_profile(tamper).family
            chosen = next(n for n in names if IMAGES[n].family == family)
        specs.append(HostSpec(f"{prefix}-{i:03d}", chosen, tamper, seed=i))
    return assign_targets(specs)


def assign_targets(specs: Sequence[HostSpec]) -> list[HostSpec]:
    """Give every host whose profile attacks another host (``names_another_host``) a clean
    victim, taking the clean hosts in turn so that victims differ while there are enough.
    Call it again after renaming hosts. ``FleetError`` if such a profile has no clean host."""
    clean = [s.host_id for s in specs if s.tamper is None]
    out: list[HostSpec] = []
    n = 0
    for s in specs:
        if s.tamper is not None and get_profile(s.tamper).evidence.names_another_host:
            if not clean:
                raise FleetError(f"tamper profile {s.tamper} attacks another host, but the "
                                 "fleet has no clean host to be its victim")
            s = replace(s, target=clean[n % len(clean)])
            n += 1
        elif s.target is not None:
            s = replace(s, target=None)
        out.append(s)
    return out


_BANKS = {alg: name for alg, (name, _) in HASH_ALGS.items()}


class SimulatedHost:
    """One simulated host: its swtpm, TPM connection, identity and boot."""

    def __init__(self, spec: HostSpec, state_dir: Path) -> None:
        self.spec = spec
        self.state_dir = state_dir
        self.swtpm = SwtpmInstance(state_dir)
        self.profile: TamperProfile | None = get_profile(spec.tamper) if spec.tamper else None
        self._tpm: AgentTpm | None = None
        self._ek: EkInfo | None = None
        self._ak: AkInfo | None = None
        self._rogue_ak: AkInfo | None = None
        self._previous: Quote | None = None
        self._boot: MeasuredBoot | None = None
        self._after_boot: tuple[LogEvent, ...] = ()
        self._log: bytes = b""
        self._lock = Lock()

    # -- identity ----------------------------------------------------------------------------
    @property
    def host_id(self) -> str:
        """The host's id (the Kafka record key)."""
        return self.spec.host_id

    @property
    def image(self) -> str:
        """The golden image it booted."""
        return self.spec.image

    @property
    def tamper(self) -> str | None:
        """Its tamper profile, if any."""
        return self.spec.tamper

    @property
    def tcti(self) -> str:
        """The TCTI string of its swtpm."""
        return self.swtpm.tcti

    @property
    def ek_cert(self) -> bytes | None:
        """The RSA EK certificate (DER) from the TPM's NV."""
        return self._need_ek().certificate

    @property
    def ek_public(self) -> bytes:
        """The EK's marshalled TPM2B_PUBLIC."""
        return self._need_ek().public

    @property
    def ak_public(self) -> bytes:
        """The enrolled AK's marshalled TPM2B_PUBLIC."""
        if self._ak is None:
            raise FleetError(f"{self.host_id} has no AK yet")
        return self._ak.public

    @property
    def event_log(self) -> bytes:
        """The TCG boot log the host reports (forged for ``forged_log``)."""
        return self._log

    @property
    def measured_boot(self) -> MeasuredBoot:
        """What the boot measured (root's later extends are :attr:`after_boot_extends`)."""
        if self._boot is None:
            raise FleetError(f"{self.host_id} has not booted")
        return self._boot

    @property
    def after_boot_extends(self) -> tuple[LogEvent, ...]:
        """What root extended after the boot for its edited log (in order, every bank)."""
        return self._after_boot

    def _need_ek(self) -> EkInfo:
        if self._ek is None:
            raise FleetError(f"{self.host_id} is not started")
        return self._ek

    def _need_tpm(self) -> AgentTpm:
        if self._tpm is None:
            raise FleetError(f"{self.host_id} is not started")
        return self._tpm

    # -- lifecycle ---------------------------------------------------------------------------
    def prepare(self, ak_kind: str = "ecc") -> None:
        """Connect, read the EK, create the AK and boot (extend the measured events)."""
        with self._lock:
            self._tpm = AgentTpm(self.swtpm.tcti, state_file=self.state_dir / "agent.json")
            self._ek = self._tpm.ek()
            self._ak = self._tpm.create_ak("rsa" if ak_kind == "rsa" else "ecc")
            self._boot_locked()

    def _boot_locked(self) -> None:
        tpm = self._need_tpm()
        measured = self.profile.measured_config() if self.profile else None
        boot = synthesise(self.image, self.spec.seed, measured)
        for event in boot.events:
            if event.measured:
                tpm.extend(event.pcr, {_BANKS[a]: d for a, d in event.digests})
        self._boot = boot
        logged = boot
        if self.profile is not None and self.profile.logged_config() != boot.config:
            logged = synthesise(self.image, self.spec.seed, self.profile.logged_config())
        self._log = logged.log_bytes()
        if self.profile is not None and self.profile.log_edit is not None:
            edited = self.profile.log_edit.apply(boot)
            for event in edited.extends:  # root, after boot: real extends, never undone
                tpm.extend(event.pcr, {_BANKS[a]: d for a, d in event.digests})
            self._after_boot = edited.extends
            self._log = edited.log
        evidence = self.profile.evidence if self.profile else EvidenceTamper.NONE
        if evidence in (EvidenceTamper.REPLAYED_NONCE, EvidenceTamper.STALE_QUOTE):
            self._previous = tpm.quote(self._previous_nonce(), DEFAULT_PCRS)
        if evidence is EvidenceTamper.WRONG_AK:
            self._rogue_ak = tpm.create_ak("ecc", remember=False)

    def _previous_nonce(self) -> bytes:
        return hashlib.sha256(f"{self.host_id}:previous-round".encode()).digest()

    def stop(self) -> None:
        """Close the TPM connection (flushing) and stop the swtpm. Idempotent."""
        with self._lock:
            if self._tpm is not None:
                with suppress(Exception):
                    self._tpm.close()
                self._tpm = None
            self.swtpm.stop()

    # -- agent operations -------------------------------------------------------------------
    def activate(self, challenge: CredentialChallenge) -> bytes:
        """ActivateCredential with the enrolled AK and the EK."""
        with self._lock:
            return self._need_tpm().activate_credential(challenge, self._ak)

    def unseal(self, sealed: SealedCredential) -> bytes:
        """Import, PolicyPCR and unseal a credential sealed to this host's EK."""
        with self._lock:
            return self._need_tpm().unseal(sealed)

    def extend(self, pcr: int, digests: Mapping[str, bytes]) -> None:
        """Extend one more measurement (e.g. to show a sealed credential no longer opens)."""
        with self._lock:
            self._need_tpm().extend(pcr, digests)

    def sign_request(self, binding: bytes) -> tuple[bytes, bytes]:
        """The enrolled AK's quote over a challenge request's ``binding`` (attest, signature):
        every profile signs its requests honestly (``wrong_ak`` is about the evidence quote)."""
        with self._lock:
            return self._need_tpm().sign_request(binding, ak=self._ak)

    def quote(self, nonce: bytes, pcrs: Sequence[int] = DEFAULT_PCRS, *,
              protocol_hooks: bool = False,
              selection: Sequence[tuple[str, Sequence[int]]] | None = None) -> Evidence:
        """The evidence this host sends when challenged with ``nonce``: a quote over
        ``selection`` bank by bank (what a challenge names), or without one over ``pcrs`` in
        every active bank.

        Locally (``protocol_hooks=False``, e.g. ``hostgate fleet simulate``) every tamper
        profile applies here: ``replayed_nonce`` quotes a fixed earlier nonce, ``stale_quote``
        re-sends the quote taken at boot. Over Kafka (``protocol_hooks=True``) those two are
        the agent client's evidence hooks, which need an honest quote of the issued nonce to
        work on (a nonce the collector really issued and the host already used; a nonce held
        past its expiry), so this returns one for them."""
        with self._lock:
            tpm = self._need_tpm()
            sel: Selection = normalise_selection(
                selection if selection is not None
                else [(bank, pcrs) for bank in tpm.active_banks()])
            mode = self.profile.evidence if self.profile else EvidenceTamper.NONE
            if protocol_hooks and mode.on_protocol:
                mode = EvidenceTamper.NONE
            if mode is EvidenceTamper.STALE_QUOTE and self._previous is not None:
                q = self._previous
            elif mode is EvidenceTamper.REPLAYED_NONCE:
                q = tpm.quote(self._previous_nonce(), selection=sel, ak=self._ak)
            elif mode is EvidenceTamper.WRONG_AK:
                q = tpm.quote(nonce, selection=sel, ak=self._rogue_ak)
            elif mode in (EvidenceTamper.PCR_BANK_DOWNGRADE, EvidenceTamper.FEWER_PCRS):
                assert self.profile is not None
                q = tpm.quote(nonce, selection=self.profile.quoted_selection(sel), ak=self._ak)
            else:
                q = tpm.quote(nonce, selection=sel, ak=self._ak)
            return Evidence(self.host_id, nonce, q, self._log, self.ak_public)


def _pool_map(fn: Callable[[T], None], items: Sequence[T], workers: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for fut in [pool.submit(fn, item) for item in items]:
            fut.result()


class Fleet:
    """N simulated hosts sharing one private EK CA. Use as a context manager."""

    def __init__(self, workdir: Path, specs: Sequence[HostSpec], *, workers: int = 4,
                 setup_workers: int = 2, distinct_identity: bool = True,
                 ak_kind: str = "ecc") -> None:
        if len({s.host_id for s in specs}) != len(specs):
            raise FleetError("host ids must be unique")
        self.workdir = workdir
        self.ca = LocalCA.create(workdir / "ek-ca")
        self.hosts = [SimulatedHost(s, workdir / "hosts" / s.host_id) for s in specs]
        self.workers = workers
        self.setup_workers = setup_workers
        self.distinct_identity = distinct_identity
        self.ak_kind = ak_kind
        self.timings: StartTimings | None = None

    def __iter__(self) -> Iterator[SimulatedHost]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def host(self, host_id: str) -> SimulatedHost:
        """The host ``host_id``."""
        for h in self.hosts:
            if h.host_id == host_id:
                return h
        raise FleetError(f"no host {host_id!r} in this fleet")

    def ek_ca_root_pem(self) -> bytes:
        """The fleet's EK CA root (PEM): the trust anchor for its EK certificates."""
        return self.ca.root_pem()

    def ek_ca_intermediate_pem(self) -> bytes:
        """The intermediate that signed the EK certificates (PEM)."""
        return self.ca.issuer_pem()

    def start(self) -> Fleet:
        """Provision, start and prepare every host. Stops everything if any step fails."""
        try:
            t0 = time.monotonic()
            self._provision()
            t1 = time.monotonic()
            for h in self.hosts:  # from this thread: see module docstring
                h.swtpm.start()
            t2 = time.monotonic()
            per_host: list[float] = []

            def prepare(h: SimulatedHost) -> None:
                s = time.monotonic()
                h.prepare(self.ak_kind)
                per_host.append(time.monotonic() - s)

            _pool_map(prepare, self.hosts, self.workers)
            self.timings = StartTimings(t1 - t0, t2 - t1, time.monotonic() - t2, tuple(per_host))
        except BaseException:
            self.stop()
            raise
        return self

    def _provision(self) -> None:
        first, rest = self.hosts[0], self.hosts[1:]
        provision(first.state_dir, self.ca)  # creates the CA keys: once, before any parallelism
        if self.distinct_identity:
            def setup(h: SimulatedHost) -> None:
                provision(h.state_dir, self.ca)

            _pool_map(setup, rest, self.setup_workers)
        else:
            for h in rest:
                clone_state(first.state_dir, h.state_dir)

    def stop(self) -> None:
        """Stop every host (closing TPM connections, then swtpm processes)."""
        for h in self.hosts:
            h.stop()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
