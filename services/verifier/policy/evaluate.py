"""Evaluate a policy against claims: a pure function, same inputs -> byte-identical verdict.

:func:`prepare` compiles a policy's custom CEL rules once; :func:`evaluate` runs every
configured built-in rule and every custom rule over one :class:`~.rules.Subject` and returns a
:class:`~.results.Verdict` with results sorted by rule id. Nothing here reads a clock, a file
or the environment (the CEL wall-clock backstop is off unless the caller sets it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from services.tpm.claims import Anomaly, Claims
from services.tpm.eventlog import Event
from services.verifier.policy import cel, ids
from services.verifier.policy.coverage import Coverage, coverage, rule_pcrs
from services.verifier.policy.events import EventIndex, shorten
from services.verifier.policy.model import CustomRule, Policy
from services.verifier.policy.results import Outcome, RuleResult, Verdict
from services.verifier.policy.rules import (
    QuoteFacts,
    Subject,
    check_banks,
    check_boot_chain,
    check_code_integrity,
    check_debug,
    check_evidence,
    check_reference_groups,
    check_secure_boot,
    check_tpm,
    proven_platform,
)

__all__ = ["PreparedPolicy", "QuoteFacts", "Subject", "evaluate", "prepare", "subject"]


@dataclass(frozen=True)
class PreparedPolicy:
    """A policy with its custom rules compiled and its coverage worked out. Build with
    :func:`prepare`; reuse per verdict."""

    policy: Policy
    digest: str
    programs: tuple[tuple[CustomRule, cel.CompiledExpression], ...]
    coverage: Coverage
    rule_pcrs: Mapping[str, frozenset[int]]
    """Configured rule id -> the PCRs it reads (``coverage.rule_pcrs``)."""


def prepare(policy: Policy) -> PreparedPolicy:
    """Compile every custom rule once (the loader already refused expressions that fail)."""
    programs = tuple((r, cel.compile_expression(r.expression)) for r in policy.spec.custom_rules)
    return PreparedPolicy(policy=policy, digest=policy.digest, programs=programs,
                          coverage=coverage(policy), rule_pcrs=rule_pcrs(policy.spec))


def subject(
    claims: Claims,
    events: Sequence[Event] = (),
    *,
    active_banks: Sequence[str] | None = None,
    quoted_pcrs: Mapping[str, Sequence[int]] | None = None,
    checked_pcrs: Collection[int] | None = None,
    quote: QuoteFacts | None = None,
    explain: bool = True,
) -> Subject:
    """Bundle claims with the replay-verified ``events`` they came from, the quote coverage
    and the PCRs whose replay matched (``checked_pcrs``). ``explain=False`` lets rules leave a
    pass unworded (see :class:`~.rules.Subject`)."""
    return Subject(
        claims=claims,
        index=EventIndex(events, claims.decoded),
        active_banks=tuple(active_banks) if active_banks is not None else None,
        quoted_pcrs=({b: frozenset(p) for b, p in quoted_pcrs.items()}
                     if quoted_pcrs is not None else None),
        checked_pcrs=frozenset(checked_pcrs) if checked_pcrs is not None else None,
        quote=quote,
        explain=explain,
    )


def _unconfirmed(results: list[RuleResult], needs: Mapping[str, frozenset[int]],
                 checked: frozenset[int]) -> list[RuleResult]:
    """Every result of a rule whose PCRs were not all replay-verified becomes a failure: its
    claims came from events nobody vouched for, or from none at all (absence is not a pass)."""
    out: list[RuleResult] = []
    for r in results:
        missing = sorted(needs.get(r.rule_id, frozenset()) - checked)
        if missing:
            out.append(RuleResult(r.rule_id, Outcome.FAIL, f"{r.rule_id} cannot be confirmed: "
                                  f"PCR {', '.join(map(str, missing))} was not quoted and "
                                  "replayed, and the rule reads its claims from there."))
        else:
            out.append(r)
    return out


_CLAIM_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Claims))


def _reads_unverified(expression: str, unverified: Mapping[str, Anomaly]) -> str | None:
    """Why a custom rule cannot be confirmed, or None: it names a claim read from event data
    that does not hash to its digest (``unverified``: claim name -> the anomaly, from
    ``Claims.unverified_claim``). The claim then lacks what that event said, so the rule's
    outcome would rest on absent evidence. Any mention of the field's name counts (CEL can
    reach it as ``claims.x`` or ``claims["x"]``)."""
    for name, a in unverified.items():
        if re.search(rf"\b{name}\b", expression):
            return (f"it reads {name}, and event {a.seq} ({a.event_type} in PCR {a.pcr}) that "
                    "claim is read from has data that does not hash to its digest.")
    return None


def _custom(prepared: PreparedPolicy, s: Subject, max_steps: int,
            deadline_seconds: float | None) -> list[RuleResult]:
    if not prepared.programs:
        return []
    out: list[RuleResult] = []
    unverified = {name: a for name in _CLAIM_FIELDS
                  if (a := s.claims.unverified_claim(name)) is not None}
    # absent, not empty: a rule reaching one by any path fails
    claims_json = {k: v for k, v in s.claims.to_json_dict().items() if k not in unverified}
    try:
        data = cel.prepare_input(claims_json)
    except cel.InputTooLarge as exc:
        return [RuleResult(ids.custom_rule_id(r.name), Outcome.FAIL,
                           f"Custom rule {r.name} could not run: {exc.message}.")
                for r, _ in prepared.programs]
    for rule, program in prepared.programs:
        unconfirmed = _reads_unverified(rule.expression, unverified)
        if unconfirmed is not None:
            out.append(RuleResult(ids.custom_rule_id(rule.name), Outcome.FAIL,
                                  f"Custom rule {rule.name} cannot be confirmed: {unconfirmed}"))
            continue
        res = cel.evaluate_expression(program, data, max_steps=max_steps,
                                      deadline_seconds=deadline_seconds)
        what = rule.description or shorten(rule.expression, 100)
        if res.passed:
            out.append(RuleResult(ids.custom_rule_id(rule.name), Outcome.PASS,
                                  f"Custom rule {rule.name} holds: {what}."))
        else:
            out.append(RuleResult(ids.custom_rule_id(rule.name), Outcome.FAIL,
                                  f"Custom rule {rule.name} failed ({res.reason}): {what}."))
    return out


def evaluate(
    prepared: PreparedPolicy,
    s: Subject,
    *,
    cel_max_steps: int = cel.DEFAULT_MAX_STEPS,
    cel_deadline_seconds: float | None = None,
) -> Verdict:
    """Judge ``s`` by ``prepared``; deterministic unless ``cel_deadline_seconds`` is set."""
    spec = prepared.policy.spec
    s = dataclasses.replace(s, trusted_banks=frozenset(spec.bank_spec.require_banks))
    s = dataclasses.replace(s, platform=proven_platform(spec.reference_groups, s))
    results: list[RuleResult] = []
    results += check_banks(spec.bank_spec, s, prepared.coverage.pcrs)
    if spec.tpm is not None:
        results += check_tpm(spec.tpm, s)
    if spec.secure_boot is not None:
        results += check_secure_boot(spec.secure_boot, s)
    if spec.debug is not None:
        results += check_debug(spec.debug, s)
    if spec.code_integrity is not None:
        results += check_code_integrity(spec.code_integrity, s)
    if spec.boot_chain is not None:
        results += check_boot_chain(spec.boot_chain, s)
    results += check_reference_groups(spec.reference_groups, s)
    results += check_evidence(spec.evidence, s)
    results += _custom(prepared, s, cel_max_steps, cel_deadline_seconds)
    results = _unconfirmed(results, prepared.rule_pcrs, s.checked())
    md = prepared.policy.metadata
    return Verdict(policy_id=md.id, policy_version=md.version, policy_digest=prepared.digest,
                   results=tuple(sorted(results, key=lambda r: r.rule_id)))
