"""The ``banks`` section: every required bank quoted with every required PCR, and
not a SHA-1-only quote where a stronger bank is active.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.verifier.policy import ids
from services.verifier.policy.model import BankSpec
from services.verifier.policy.results import RuleResult
from services.verifier.policy.rules._common import FAIL, PASS, Subject, _judged, _r, _ranges
from services.wire.banks import STRONG_BANKS


def check_banks(spec: BankSpec, s: Subject, required_pcrs: Iterable[int] = ()) -> list[RuleResult]:
    """Coverage: every required bank quoted with every required PCR (``required_pcrs``: the
    policy's whole coverage, ``coverage.coverage``) and replayed from the log."""
    out: list[RuleResult] = []
    quoted = {b: p for b, p in s.quoted().items() if p}
    replayed = set(s.claims.banks)
    missing_banks = [b for b in spec.require_banks if b not in quoted or b not in replayed]
    if missing_banks:
        why = ", ".join(f"{b} ({'not quoted' if b not in quoted else 'not in the log'})"
                        for b in missing_banks)
        out.append(_r(ids.BANKS_REQUIRED_BANKS, FAIL, f"The policy requires bank(s) {why}: "
                      "the measurements cannot be confirmed in a bank it relies on."))
    else:
        out.append(_judged(s, ids.BANKS_REQUIRED_BANKS, PASS, lambda: (
            f"Every required bank ({', '.join(spec.require_banks)}) is quoted and replayed.")))
    wanted = sorted(set(spec.require_pcrs) | set(required_pcrs))
    if wanted:
        gaps = [(b, sorted(set(wanted) - quoted.get(b, frozenset())))
                for b in spec.require_banks]
        gaps = [(b, m) for b, m in gaps if m]
        if gaps:
            bank, missing = gaps[0]
            out.append(_r(ids.BANKS_REQUIRED_PCRS, FAIL,
                          f"PCRs {_ranges(missing)} are required but not quoted in the {bank} "
                          f"bank (quoted: {_ranges(quoted.get(bank, ()))}), so the claims read "
                          "from them cannot be confirmed."))
        else:
            out.append(_judged(s, ids.BANKS_REQUIRED_PCRS, PASS, lambda: (
                f"All required PCRs ({_ranges(wanted)}) are quoted in "
                f"{', '.join(spec.require_banks)}.")))
    if spec.refuse_sha1_only:
        active = set(s.active_banks if s.active_banks is not None else s.claims.banks)
        strong_active = sorted(active & STRONG_BANKS)
        if not quoted:
            out.append(_r(ids.BANKS_SHA1_ONLY, FAIL, "No bank was quoted."))
        elif set(quoted) == {"sha1"} and strong_active:
            out.append(_r(ids.BANKS_SHA1_ONLY, FAIL,
                          f"The quote covers only the SHA-1 bank although "
                          f"{', '.join(strong_active)} is active on this TPM."))
        elif set(quoted) == {"sha1"}:
            out.append(_r(ids.BANKS_SHA1_ONLY, PASS,
                          "The quote covers only SHA-1, the only bank active on this TPM."))
        else:
            out.append(_judged(s, ids.BANKS_SHA1_ONLY, PASS, lambda: (
                f"The quote covers a bank stronger than SHA-1 "
                f"({', '.join(sorted(set(quoted) & STRONG_BANKS))}).")))
    return out
