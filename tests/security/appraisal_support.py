"""Attacker-side helpers for the appraisal soundness tests: real swtpm hosts, forged logs.

The attacker is a host with a genuine TPM and root after a bad boot: it can extend any PCR and
write any log, but cannot forge its AK's signature or undo an extend. Each helper here does one
such thing to a simulated host (``services.agent.fleet``: one swtpm per host, a synthesised
measured boot) and hands the resulting evidence to the verifier's real core
(``services.verifier.core.appraise``). Nothing is mocked: quotes are made by swtpm.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.agent.fleet import Fleet, HostSpec, SimulatedHost
from services.tpm.eventlog_builder import (
    TPM_ALG_SHA1,
    TPM_ALG_SHA256,
    LogEvent,
    build_log,
    measure_digests,
)
from services.verifier.core import VerdictRecord, appraise
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy_in_force import PolicyInForce, load_in_force, published_record
from tests.support.simulated_evidence import collected_record, submitted_record

RECEIVED_AT_MS = 1_767_225_600_000
ACTIVE_BANKS = ("sha1", "sha256")
ALL_PCRS: tuple[int, ...] = tuple(range(24))
FIRMWARE_PCRS: tuple[int, ...] = tuple(range(8))
BANK_ALGS = {"sha1": TPM_ALG_SHA1, "sha256": TPM_ALG_SHA256}


@dataclass
class Lab:
    """A started fleet: one clean host per image and named tampered hosts."""

    fleet: Fleet

    def host(self, host_id: str) -> SimulatedHost:
        return self.fleet.host(host_id)


@contextmanager
def lab(workdir: Path, specs: Sequence[HostSpec]) -> Iterator[Lab]:
    """Start ``specs`` (one swtpm each)."""
    with Fleet(workdir, specs, workers=2) as fleet:
        yield Lab(fleet)


def policy_from(hosts: Sequence[SimulatedHost], *, policy_id: str = "soundness",
                version: int = 1, log: bytes | None = None) -> PolicyInForce:
    """The policy ``hostgate policy from-log`` derives from these hosts' logs, in force."""
    golden = [golden_from_log(log if log is not None else h.event_log, h.host_id)
              for h in hosts]
    derived = derive_policy(golden, policy_id=policy_id, version=str(version))
    return in_force(derived.text, version=version)


def in_force(text: str, *, version: int = 1) -> PolicyInForce:
    """A policy document as the verifier holds it in force."""
    record = published_record(text, version=version, published_at_ms=RECEIVED_AT_MS,
                              author="security-tests")
    return load_in_force(record)


def with_spec(policy: PolicyInForce, **changes: Any) -> PolicyInForce:
    """``policy`` with some spec sections replaced (``dataclasses.replace`` of its spec),
    re-published from its normalised document as an operator would write it."""
    spec = dataclasses.replace(policy.prepared.policy.spec, **changes)
    doc = dataclasses.replace(policy.prepared.policy, spec=spec).to_json()
    return in_force(yaml.safe_dump(doc, sort_keys=False), version=policy.version + 1)


def nonce_for(host: SimulatedHost, label: str) -> bytes:
    return hashlib.sha256(f"{host.host_id}:{label}".encode()).digest()


def collected(host: SimulatedHost, *, pcrs: Sequence[int] = ALL_PCRS, log: bytes | None = None,
              label: str = "round", active_banks: Sequence[str] = ACTIVE_BANKS,
              ima_log: bytes | None = None) -> dict[str, Any]:
    """A real swtpm quote of ``pcrs`` (every bank) over a fresh nonce, with ``log`` (default: the
    host's own log) as the collector would forward it."""
    evidence = host.quote(nonce_for(host, label), pcrs)
    if log is not None:
        evidence = type(evidence)(evidence.host_id, evidence.requested_nonce, evidence.quote,
                                  log, evidence.ak_public)
    sub = submitted_record(evidence, evidence_id=f"{host.host_id}-{label}",
                           challenge_id=f"ch-{host.host_id}-{label}",
                           active_banks=active_banks, quoted_at_ms=RECEIVED_AT_MS - 500,
                           ima_log=ima_log)
    return collected_record(sub, ak_public=host.ak_public, ek_public=host.ek_public,
                            received_at_ms=RECEIVED_AT_MS,
                            source=("attest.evidence.v1", 0, 0))


def appraised(host: SimulatedHost, policy: PolicyInForce, **kwargs: Any) -> VerdictRecord:
    """The verifier's verdict on ``collected(host, **kwargs)`` under ``policy``."""
    return appraise(collected(host, **kwargs), policy)


def events_of(host: SimulatedHost) -> list[LogEvent]:
    """The events the host's TPM measured, in order (its honest log's content)."""
    return list(host.measured_boot.events)


def log_of(events: Sequence[LogEvent], algs: Sequence[int] = (TPM_ALG_SHA1, TPM_ALG_SHA256)
           ) -> bytes:
    return build_log(events, algs)


def extend_unlogged(host: SimulatedHost, pcr: int, content: bytes) -> LogEvent:
    """Root after boot: extend ``pcr`` with the digests of ``content`` in every bank; returns
    the event an honest log would hold for it (type and data chosen by the caller later)."""
    digests = {a: hashlib.new(name, content).digest() for name, a in BANK_ALGS.items()}
    host.extend(pcr, {name: digests[a] for name, a in BANK_ALGS.items()})
    return measure_digests(pcr, 0, b"", digests)


def relabelled(event: LogEvent, event_type: int, data: bytes) -> LogEvent:
    """The same digests under another (host-chosen) type and data."""
    return LogEvent(event.pcr, event_type, event.digests, data)


def reasons(verdict: VerdictRecord) -> set[str]:
    return set(verdict.reason_ids)
