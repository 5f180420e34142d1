"""A local, verifier-style look at a simulated host's evidence (for ``hostgate fleet simulate``).

Not the pipeline's verifier: it runs the TPM library's checks in order — quote signature and
nonce against the enrolled AK (``services.tpm.quote``), then log replay against the quoted PCRs
(``services.tpm.replay``), then a comparison with the clean golden image's PCRs — and reports
the first that fails, so a demo can show each tamper profile being caught somewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.agent.fleet import Evidence
from services.agent.measured_boot import synthesise
from services.agent.swtpm import PCR_BANKS
from services.errors import HostgateError
from services.tpm.eventlog import parse_event_log
from services.tpm.eventlog_builder import HASH_ALGS
from services.tpm.quote import verify_quote
from services.tpm.replay import verify_replay

#: Banks a healthy simulated host must quote.
REQUIRED_BANKS = PCR_BANKS


@dataclass(frozen=True)
class LocalVerdict:
    """Outcome: ``ok``, or the failing ``stage`` (quote, banks, replay, golden) and why."""

    host_id: str
    ok: bool
    stage: str
    reason: str


def golden_pcrs(image: str, seed: int) -> dict[str, dict[int, bytes]]:
    """PCR values (bank -> pcr -> value) of a clean boot of ``image``."""
    boot = synthesise(image, seed)
    return {HASH_ALGS[a][0]: v for a, v in boot.pcrs().items()}


def check(evidence: Evidence, issued_nonce: bytes, enrolled_ak_public: bytes,
          golden: Mapping[str, Mapping[int, bytes]]) -> LocalVerdict:
    """Check one host's evidence against what the collector issued and enrolled."""
    host = evidence.host_id
    q = evidence.quote
    try:
        verified = verify_quote(enrolled_ak_public, q.attest, q.signature, nonce=issued_nonce,
                                pcr_values=q.pcr_values)
    except HostgateError as exc:
        return LocalVerdict(host, False, "quote", f"{type(exc).__name__}: {exc}")
    quoted_banks = {bank for bank, _ in verified.selection}
    missing = [b for b in REQUIRED_BANKS if b not in quoted_banks]
    if missing:
        return LocalVerdict(host, False, "banks", f"active bank(s) {missing} not quoted")
    try:
        log = parse_event_log(evidence.event_log)
        verify_replay(log, verified.pcr_values)
    except HostgateError as exc:
        return LocalVerdict(host, False, "replay", f"{type(exc).__name__}: {exc}")
    for bank, values in verified.pcr_values.items():
        for pcr, value in values.items():
            if pcr in golden.get(bank, {}) and golden[bank][pcr] != value:
                return LocalVerdict(host, False, "golden",
                                    f"PCR {bank}:{pcr} differs from the golden image")
    return LocalVerdict(host, True, "ok", "quote, replay and golden PCRs match")
