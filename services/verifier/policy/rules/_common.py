"""What every rule module shares: the :class:`Subject` a policy judges, the result helpers,
the Windows-only fallback and the digest and code-event lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from services.tpm.claims import BootApplication, Claims
from services.tpm.sipa import WindowsBootConfig
from services.verifier.policy.events import EventIndex
from services.verifier.policy.model import RefDigest
from services.verifier.policy.results import EventRef, Outcome, RuleResult

PASS, FAIL, NA = Outcome.PASS, Outcome.FAIL, Outcome.NOT_APPLICABLE
NON_WINDOWS: Final = frozenset({"linux", "other"})


@dataclass(frozen=True)
class QuoteFacts:
    """What the verified quote itself says about the TPM (TPMS_CLOCK_INFO.safe, the TPM's
    firmwareVersion): signed by the AK, so claims a policy can check."""

    clock_safe: bool
    firmware_version: int


@dataclass(frozen=True)
class Subject:
    """What a policy judges: claims, the events they came from, and the quote's coverage.

    ``active_banks``: banks the TPM had active (the log's Spec ID event), default the claims'
    banks. ``quoted_pcrs``: bank -> PCR indices the quote covered, default the claims' PCRs.
    ``checked_pcrs``: PCRs whose replay matched the quote (claims come only from their events),
    default every PCR the claims hold a value for. ``quote``: the quote's own facts (None for a
    log-only check). ``explain``: word every result (``hostgate policy check``); when False (the
    verifier, which keeps only the outcome of a rule that passed), a rule whose pass is costly to
    word leaves its message empty and names no event. Failures are always worded in full, and
    outcomes never depend on it. ``platform`` and ``trusted_banks`` are set by ``evaluate``.
    """

    claims: Claims
    index: EventIndex = field(default_factory=lambda: EventIndex(()))
    active_banks: tuple[str, ...] | None = None
    quoted_pcrs: Mapping[str, frozenset[int]] | None = None
    explain: bool = True
    checked_pcrs: frozenset[int] | None = None
    quote: QuoteFacts | None = None
    platform: str | None = None
    """The platform a matched reference group proves (None: nothing proven)."""
    trusted_banks: frozenset[str] | None = None
    """Banks whose digests may approve (the policy's required banks; None: any bank)."""

    @property
    def windows(self) -> WindowsBootConfig | None:
        return self.claims.windows

    def quoted(self) -> dict[str, frozenset[int]]:
        if self.quoted_pcrs is not None:
            return {b: frozenset(p) for b, p in self.quoted_pcrs.items()}
        return {b: frozenset(v) for b, v in self.claims.pcrs.items()}

    def checked(self) -> frozenset[int]:
        """PCRs whose events were replay-verified against the quote."""
        if self.checked_pcrs is not None:
            return self.checked_pcrs
        return frozenset(p for values in self.claims.pcrs.values() for p in values)


def _r(rule: str, outcome: Outcome, message: str, event: EventRef | None = None) -> RuleResult:
    return RuleResult(rule_id=rule, outcome=outcome, message=message, event=event)


def _unworded(s: Subject, rule: str, outcome: Outcome) -> RuleResult | None:
    """The result without words when nobody will read them (a pass, unless ``s.explain``:
    see :class:`Subject`), else None: the rule words it."""
    if outcome is not FAIL and not s.explain:
        return RuleResult(rule_id=rule, outcome=outcome, message="")
    return None


def _judged(s: Subject, rule: str, outcome: Outcome, message: Callable[[], str],
            event: Callable[[], EventRef | None] | None = None) -> RuleResult:
    """A result whose message and event are worked out only when someone reads them."""
    return _unworded(s, rule, outcome) or RuleResult(
        rule_id=rule, outcome=outcome, message=message(),
        event=event() if event is not None else None)


def _ranges(values: Iterable[int]) -> str:
    return ", ".join(map(str, sorted(values))) or "none"


def _not_windows(rule: str, words: str, s: Subject) -> RuleResult:
    """A Windows-only rule on a host with no Windows boot configuration: not applicable only
    where a verified non-Windows boot was proven, else it cannot be confirmed."""
    if s.platform in NON_WINDOWS:
        return _r(rule, NA, f"{words}: not a Windows boot (the host matched a {s.platform} "
                  "reference group).")
    return _r(rule, FAIL, f"{words} cannot be confirmed: no Windows boot configuration was "
              "measured, and the host's verified boot did not match a non-Windows reference "
              "group.")


def _flag_result(s: Subject, rule: str, words: str, attr: str, value: object,
                 outcome: Outcome) -> RuleResult:
    """``{words} is on/off``, naming the SIPA event that measured ``attr`` as ``value``."""
    unworded = _unworded(s, rule, outcome)
    if unworded is not None:
        return unworded
    seq = s.index.windows_flag_event(attr, value)
    state = "on" if value else "off"
    event = s.index.ref(seq, f"SIPA: {attr} = {state}") if seq is not None else None
    at = f" (event {seq} in PCR {event.pcr})" if event is not None else ""
    return _r(rule, outcome, f"{words} is {state}{at}.", event)


def _digest_matches(refs: Iterable[RefDigest], digests: Mapping[str, bytes],
                    banks: frozenset[str] | None = None) -> RefDigest | None:
    """The first of ``refs`` equal to the event's digest in its algorithm; with ``banks``, only
    references in those banks count (what approves must be in a bank the policy relies on)."""
    for ref in refs:
        if banks is not None and ref.alg not in banks:
            continue
        value = digests.get(ref.alg)
        if value is not None and value.hex() == ref.hex:
            return ref
    return None


BOOT_APPLICATION_PCR: Final = 4
DRIVER_PCR: Final = 2




def code_in(claims: Claims, pcr: int) -> list[BootApplication]:
    """Every code event of ``pcr`` (images and opaque code, ``services.tpm.pcr_types``)."""
    return [a for a in claims.boot_applications if a.pcr == pcr]
