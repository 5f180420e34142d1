"""Shared helpers of the verifier tests: a simulated fleet (real swtpm), a policy derived from its
clean hosts with the ``from-log`` derivation, and EvidenceCollected records built from its quotes.

Provenance: every log and quote here is produced on the fly by ``services.agent.fleet`` (one
swtpm per host, golden images from ``services.agent.measured_boot``); nothing is stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.agent.fleet import DEFAULT_PCRS, Fleet, SimulatedHost, plan_hosts
from services.agent.tamper import PROFILES
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy_in_force import PolicyInForce, load_in_force, published_record
from tests.support.simulated_evidence import collected_record, submitted_record

#: Tamper profiles whose evidence never reaches the verifier: the collector stops them at intake
#: (a used or expired nonce, a never-enrolled AK) or their quotes and logs are honest and the
#: attack is in the records they write (``services.agent.attacks``). The rest reach the
#: verifier here, including those intake also stops in the pipeline (``quote_fewer_pcrs``,
#: ``pcr_bank_downgrade``): their evidence must fail appraisal on its own too.
INTAKE_PROFILES = frozenset({"replayed_nonce", "stale_quote", "wrong_ak", "foreign_partition",
                             "borrowed_host_id", "challenge_flood"})
VERIFIER_PROFILES = tuple(p for p in PROFILES if p not in INTAKE_PROFILES)
RECEIVED_AT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed "now" from the record
ACTIVE_BANKS = ("sha1", "sha256")  # what services.agent.swtpm provisions


@dataclass
class SimFleet:
    """A started fleet with its derived policy."""

    fleet: Fleet
    policy_text: str
    policy: PolicyInForce
    reference_hosts: tuple[str, ...]

    def hosts(self, tamper: str | None = None) -> list[SimulatedHost]:
        return [h for h in self.fleet if h.tamper == tamper]


def nonce_for(host_id: str, round_no: int = 0) -> bytes:
    return hashlib.sha256(f"{host_id}:{round_no}".encode()).digest()


def collected_for(host: SimulatedHost, *, round_no: int = 0, offset: int = 0,
                  previous_counters: Mapping[str, Any] | None = None,
                  submitted_changes: Mapping[str, Any] | None = None,
                  pcrs: Sequence[int] = DEFAULT_PCRS, ima_log: bytes | None = None
                  ) -> dict[str, Any]:
    """Quote ``host`` over a fresh nonce and wrap it as the collector would."""
    evidence = host.quote(nonce_for(host.host_id, round_no), pcrs)
    sub = submitted_record(evidence, evidence_id=f"{host.host_id}-{round_no}",
                           challenge_id=f"ch-{host.host_id}-{round_no}",
                           active_banks=ACTIVE_BANKS, quoted_at_ms=RECEIVED_AT_MS - 500,
                           ima_log=ima_log)
    sub.update(submitted_changes or {})
    return collected_record(sub, ak_public=host.ak_public, ek_public=host.ek_public,
                            received_at_ms=RECEIVED_AT_MS + offset,
                            source=("attest.evidence.v1", 0, offset),
                            previous_counters=previous_counters)


@contextmanager
def sim_fleet(workdir: Path, *, tampered: tuple[str, ...] = VERIFIER_PROFILES,
              clean_per_image: int = 2) -> Iterator[SimFleet]:
    """Start a fleet with one host per tamper profile plus ``clean_per_image`` clean hosts of
    each image; derive the policy from the first clean host of each image only."""
    specs = plan_hosts(len(tampered) + 3 * clean_per_image, {name: 1 for name in tampered},
                       prefix="vt")
    with Fleet(workdir, specs, workers=2) as fleet:
        ref: dict[str, SimulatedHost] = {}
        for h in fleet:
            if h.tamper is None:
                ref.setdefault(h.image, h)
        golden = [golden_from_log(h.event_log, h.host_id) for h in ref.values()]
        derived = derive_policy(golden, policy_id="fleet-baseline", version="1")
        record = published_record(derived.text, version=1, published_at_ms=RECEIVED_AT_MS,
                                  author="tests")
        yield SimFleet(fleet, derived.text, load_in_force(record),
                       tuple(h.host_id for h in ref.values()))


def with_ima_pcr(policy: PolicyInForce, pcr: int = 10) -> PolicyInForce:
    """``policy`` re-published with ``banks.externalPcrs: [{pcr, log: ima}]``: the IMA list
    then accounts for that PCR (and is required)."""
    import dataclasses

    import yaml

    from services.verifier.policy.model import ExternalPcr

    spec = policy.prepared.policy.spec
    banks = dataclasses.replace(spec.bank_spec, external_pcrs=(ExternalPcr(pcr, "ima"),))
    doc = dataclasses.replace(policy.prepared.policy,
                              spec=dataclasses.replace(spec, banks=banks)).to_json()
    record = published_record(yaml.safe_dump(doc, sort_keys=False), version=policy.version + 1,
                              published_at_ms=RECEIVED_AT_MS, author="tests")
    return load_in_force(record)
