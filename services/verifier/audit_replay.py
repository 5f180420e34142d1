"""Audit replay: re-appraise recorded evidence and compare with the recorded verdicts (pure).

The verifier's core is a pure function of one ``hostgate.EvidenceCollected`` record and the
policy in force (DESIGN.md step 4), so a verdict recorded on ``attest.verdicts.v1`` must be
reproduced exactly by running :func:`services.verifier.core.appraise` again on the collected
record it names, under the policy whose digest it names. Any difference is a **finding**: a bug
(the verifier is not deterministic, or changed behaviour between versions) or tampering with
the record (someone edited a verdict, or wrote one for evidence that never existed).

Two modes, both pure over already decoded records (the CLI does the Kafka reading):

* :func:`audit` — no policy given: for every recorded verdict find its collected record (by the
  ``collected`` coordinates it carries) and its policy (by ``policy_digest`` among every
  ``hostgate.PolicyPublished`` record ever published), re-appraise, and compare the canonical
  form of both verdicts field by field. Evidence without a verdict and verdicts without
  evidence are findings too.
* :func:`what_if` — a policy given: re-appraise every collected record under it and list the
  hosts whose result or failed rules would change, and why.

A signed EAR (``ear_json`` holding a compact JWS: :mod:`services.verifier.ear_token`) is
compared by its claims, not its signature: the signed payload is exactly the claims' JSON, so
``ear_json`` matches when the recorded token's payload equals the claims recomputed here. That
needs no signing key (an auditor holds none), and it holds for a PKCS#11 key too, whose ECDSA
signatures differ per signing. Whether the signature verifies is a separate question, answered
with the published JWKS by ``hostgate ear verify``.

Trust: the recorded verdicts are *untrusted* input here — the point of the audit is to check
them — so nothing in them is believed except as a pointer to what to recompute.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from services.verifier import core, reasons
from services.verifier.ear_token import untrusted_claims_text
from services.verifier.memo import VerifierMemo
from services.verifier.policy_in_force import PolicyCache, PolicyInForce, PolicyUnusable
from services.wire.coords import coordinates_key, coordinates_record
from services.wire.time import epoch_ms

MAX_SHOWN: Final = 120
"""Longest rendering of one field value in a finding (values are hex or JSON text)."""


class FindingKind(StrEnum):
    """Why a recorded verdict is not what the evidence and the policy produce."""

    MISMATCH = "mismatch"
    """Re-appraisal gives a different verdict (the fields that differ are listed)."""
    POLICY_NOT_FOUND = "policy_not_found"
    """The verdict names a policy digest no published policy record has."""
    EVIDENCE_NOT_FOUND = "evidence_not_found"
    """The verdict points at collected coordinates that hold no evidence (in the range read)."""
    MISSING_VERDICT = "missing_verdict"
    """Collected evidence that has no recorded verdict (the verifier skipped it, or it lags)."""
    DUPLICATE_VERDICT = "duplicate_verdict"
    """Two different verdicts recorded for one collected record."""


@dataclass(frozen=True)
class Located:
    """One decoded record with where it was read from (``topic[partition]@offset``)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    record: Mapping[str, Any]

    @property
    def where(self) -> str:
        """``topic[partition]@offset``."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class FieldDiff:
    """One field whose recorded and replayed values differ (both rendered canonically)."""

    field: str
    recorded: str
    replayed: str


@dataclass(frozen=True)
class Finding:
    """One recorded verdict (or evidence) the audit could not reproduce."""

    kind: FindingKind
    host_id: str
    where: str
    """Coordinates of the verdict (or, for a missing verdict, of the evidence)."""
    message: str
    verdict_id: str = ""
    diffs: tuple[FieldDiff, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {"kind": self.kind.value, "host_id": self.host_id, "where": self.where,
                "verdict_id": self.verdict_id, "message": self.message,
                "diffs": [{"field": d.field, "recorded": d.recorded, "replayed": d.replayed}
                          for d in self.diffs]}


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`audit`."""

    verdicts: int
    reproduced: int
    evidences: int
    findings: tuple[Finding, ...]
    by_result: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every recorded verdict was reproduced exactly and nothing is missing."""
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {"mode": "audit", "verdicts": self.verdicts, "reproduced": self.reproduced,
                "evidences": self.evidences, "by_result": dict(self.by_result),
                "findings": [f.to_json() for f in self.findings], "ok": self.ok}


@dataclass(frozen=True)
class Change:
    """One host whose verdict would change under the what-if policy."""

    host_id: str
    where: str
    """Coordinates of the collected evidence."""
    recorded: str
    """PASS/FAIL as recorded (``-`` when no verdict was recorded)."""
    would_be: str
    added_rules: tuple[str, ...]
    removed_rules: tuple[str, ...]
    sentences: tuple[str, ...]
    """The new failures' sentences, in rule order."""

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {"host_id": self.host_id, "where": self.where, "recorded": self.recorded,
                "would_be": self.would_be, "added_rules": list(self.added_rules),
                "removed_rules": list(self.removed_rules), "sentences": list(self.sentences)}


@dataclass(frozen=True)
class WhatIfReport:
    """Result of :func:`what_if`."""

    policy: str
    evidences: int
    changes: tuple[Change, ...]
    by_result: Mapping[str, int] = field(default_factory=dict)

    @property
    def hosts(self) -> tuple[str, ...]:
        """Hosts with at least one changed verdict, sorted."""
        return tuple(sorted({c.host_id for c in self.changes}))

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {"mode": "what-if", "policy": self.policy, "evidences": self.evidences,
                "by_result": dict(self.by_result), "hosts": list(self.hosts),
                "changes": [c.to_json() for c in self.changes]}


# --- canonical form -----------------------------------------------------------------------
def canonical(value: Any) -> Any:
    """A comparable, JSON-able form of a decoded Avro value: bytes as hex, timestamps as epoch
    milliseconds, mappings with sorted keys, sequences as lists."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dt.datetime):
        return epoch_ms(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def _render(value: Any) -> str:
    import json

    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def compare_verdicts(recorded: Mapping[str, Any], replayed: Mapping[str, Any]
                     ) -> tuple[FieldDiff, ...]:
    """Every top-level field whose canonical value differs (a field present on one side only
    counts as a difference), in field order. A field whose two values are already equal as
    they are (the common case: the same bytes, strings, lists) is not canonicalised: equal
    values have equal canonical forms. ``ear_json`` compares the EAR claims, signed or not
    (module docstring)."""
    diffs = []
    absent = object()
    for name in sorted(set(recorded) | set(replayed), key=str):
        x, y = recorded.get(name, absent), replayed.get(name, absent)
        if name == "ear_json" and isinstance(x, str) and isinstance(y, str):
            x, y = untrusted_claims_text(x), untrusted_claims_text(y)  # claims, not signature
        if x is not absent and y is not absent and type(x) is type(y) and x == y:
            continue
        a = canonical(x) if x is not absent else "<absent>"
        b = canonical(y) if y is not absent else "<absent>"
        if a != b:
            diffs.append(FieldDiff(str(name), _render(a), _render(b)))
    return tuple(diffs)


# --- policy index -------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyIndex:
    """Every usable policy version ever published, by its canonical digest, plus the unusable
    records (a verdict may name none: it failed because the policy in force was unusable)."""

    by_digest: Mapping[bytes, PolicyInForce]
    unusable: tuple[PolicyUnusable, ...]

    @classmethod
    def build(cls, records: Iterable[Mapping[str, Any]]) -> PolicyIndex:
        """Load every ``PolicyPublished`` record (tombstones are skipped by the caller). A record
        read twice (from the history and from the compacted topic) is loaded once: the cache
        hands back the same policy, or the same ``PolicyUnusable``, which is listed once."""
        cache = PolicyCache(size=1024)
        by_digest: dict[bytes, PolicyInForce] = {}
        unusable: list[PolicyUnusable] = []
        for rec in records:
            try:
                loaded = cache.get(rec)
            except PolicyUnusable as exc:
                if not any(exc is seen for seen in unusable):
                    unusable.append(exc)
                continue
            by_digest.setdefault(loaded.digest, loaded)
        return cls(by_digest, tuple(unusable))


Appraiser = Callable[[Mapping[str, Any], PolicyInForce | PolicyUnusable | None,
                      Mapping[str, Any]], core.VerdictRecord]


def reappraise(collected: Mapping[str, Any], policy: PolicyInForce | PolicyUnusable | None,
               coordinates: Mapping[str, Any], *, memo: VerifierMemo | None = None
               ) -> core.VerdictRecord:
    """What the verifier stage does for one record (``services.verifier.core.decide``): appraise, and
    if appraisal raises, the same fail-closed ``verifier.internal_error`` verdict."""
    try:
        return core.appraise(collected, policy, collected_at=coordinates, memo=memo)
    except Exception as exc:  # mirrors the stage's on_error: a bug fails closed
        return core.error_verdict(
            collected, reasons.INTERNAL_ERROR,
            f"The verifier could not appraise this evidence ({type(exc).__name__}); it fails "
            "closed.", collected_at=coordinates)


def remembering_appraiser() -> Appraiser:
    """:func:`reappraise` with a memo of its own, as the verifier's shell appraises (one per
    audit run; a forked worker gets its own copy): remembering never changes a verdict
    (``services.verifier.memo``), and a fleet's records repeat each other."""
    memo = VerifierMemo()

    def appraiser(collected: Mapping[str, Any], policy: PolicyInForce | PolicyUnusable | None,
                  coordinates: Mapping[str, Any]) -> core.VerdictRecord:
        return reappraise(collected, policy, coordinates, memo=memo)
    return appraiser


def _candidates(verdict: Mapping[str, Any], index: PolicyIndex
                ) -> list[PolicyInForce | PolicyUnusable | None]:
    digest = bytes(verdict["policy_digest"])
    if digest:
        found = index.by_digest.get(digest)
        return [found] if found is not None else []
    rules = {str(f["rule_id"]) for f in verdict["failed_rules"]}
    if reasons.POLICY_UNUSABLE in rules:
        return list(index.unusable)
    return [None]


def _audit_one(loc: Located, collected: Located, index: PolicyIndex,
               appraiser: Appraiser) -> Finding | None:
    v = loc.record
    host, vid = str(v["host_id"]), str(v["verdict_id"])
    candidates = _candidates(v, index)
    if not candidates:
        return Finding(FindingKind.POLICY_NOT_FOUND, host, loc.where,
                       f"verdict names policy {v['policy_id']!r} version {v['policy_version']} "
                       f"digest {bytes(v['policy_digest']).hex()[:16]}…, which no record on the "
                       "policies topic has", vid)
    best: tuple[FieldDiff, ...] | None = None
    for policy in candidates:
        replayed = appraiser(collected.record, policy, coordinates_record(collected)).record
        diffs = compare_verdicts(v, replayed)
        if not diffs:
            return None
        if best is None or len(diffs) < len(best):
            best = diffs
    assert best is not None
    names = ", ".join(d.field for d in best)
    return Finding(FindingKind.MISMATCH, host, loc.where,
                   f"re-appraising {collected.where} does not reproduce the recorded verdict "
                   f"(fields differ: {names})", vid, best)


def audit(collected: Sequence[Located], verdicts: Sequence[Located], policies: PolicyIndex, *,
          appraiser: Appraiser | None = None, expect_all_verdicts: bool = True,
          progress: Callable[[int], None] | None = None, jobs: int = 1) -> AuditReport:
    """Re-appraise every recorded verdict and compare (see the module docstring).

    ``collected`` and ``verdicts`` are the records read (possibly filtered by time or host);
    a verdict whose collected coordinates are not among ``collected`` is a finding only when
    its evidence should have been read (``expect_all_verdicts``: the caller read the whole
    collected range the verdicts can point to). ``jobs`` > 1 re-appraises in that many forked
    processes; the report is the same, in the same order.
    """
    appraiser = appraiser or remembering_appraiser()
    by_coords = {(c.topic, c.partition, c.offset): c for c in collected}
    before: list[list[Finding]] = []  # per verdict: findings that need no re-appraisal
    pairs: list[tuple[Located, Located] | None] = []  # per verdict: what to re-appraise
    seen: dict[tuple[str, int, int], str] = {}
    for loc in verdicts:
        v = loc.record
        key = coordinates_key(v["collected"])
        col = by_coords.get(key)
        host, vid = str(v["host_id"]), str(v["verdict_id"])
        own: list[Finding] = []
        if col is None:
            if expect_all_verdicts:
                own.append(Finding(
                    FindingKind.EVIDENCE_NOT_FOUND, host, loc.where,
                    f"verdict points at {key[0]}[{key[1]}]@{key[2]}, which holds no collected "
                    "evidence in the range read", vid))
        else:
            previous = seen.get(key)
            if previous is not None and previous != vid:
                own.append(Finding(
                    FindingKind.DUPLICATE_VERDICT, host, loc.where,
                    f"a second verdict ({vid[:16]}…) for {col.where}, which already has "
                    f"verdict {previous[:16]}…", vid))
            seen.setdefault(key, vid)
        before.append(own)
        pairs.append((loc, col) if col is not None else None)
    outcomes = _reappraised([p for p in pairs if p is not None], policies, appraiser, jobs)
    findings: list[Finding] = []
    reproduced = 0
    by_result: dict[str, int] = {}
    for i, (own, pair) in enumerate(zip(before, pairs, strict=True)):
        findings.extend(own)
        if pair is not None:
            finding = next(outcomes)
            if finding is None:
                reproduced += 1
                result = str(pair[0].record["result"])
                by_result[result] = by_result.get(result, 0) + 1
            else:
                findings.append(finding)
        if progress is not None:
            progress(i + 1)
    for _ in outcomes:  # none left; resuming the generator lets it shut its workers down
        raise AssertionError("more re-appraisals than verdicts")
    for c in collected:
        if (c.topic, c.partition, c.offset) not in seen:
            findings.append(Finding(
                FindingKind.MISSING_VERDICT, str(c.record["evidence"]["host_id"]), c.where,
                "collected evidence has no recorded verdict (the verifier skipped it, or has not "
                "reached it yet)"))
    return AuditReport(verdicts=len(verdicts), reproduced=reproduced, evidences=len(collected),
                       findings=tuple(findings), by_result=by_result)


#: What forked audit workers re-appraise: set by :func:`_reappraised` just before it forks, so
#: the children inherit the records instead of receiving them pickled.
_FORK_WORK: tuple[Sequence[tuple[Located, Located]], PolicyIndex, Appraiser] | None = None


def _audit_at(i: int) -> Finding | None:
    assert _FORK_WORK is not None
    pairs, index, appraiser = _FORK_WORK
    loc, col = pairs[i]
    return _audit_one(loc, col, index, appraiser)


def _reappraised(pairs: Sequence[tuple[Located, Located]], index: PolicyIndex,
                 appraiser: Appraiser, jobs: int) -> Iterator[Finding | None]:
    """``_audit_one`` of each (verdict, evidence) pair, in order; with ``jobs`` > 1 in forked
    worker processes (appraisal is pure: the same inputs give the same verdict anywhere)."""
    if jobs <= 1 or len(pairs) < 2 * jobs or "fork" not in mp.get_all_start_methods():
        return (_audit_one(loc, col, index, appraiser) for loc, col in pairs)
    return _forked(pairs, index, appraiser, jobs)


def _forked(pairs: Sequence[tuple[Located, Located]], index: PolicyIndex, appraiser: Appraiser,
            jobs: int) -> Iterator[Finding | None]:
    global _FORK_WORK
    _FORK_WORK = (pairs, index, appraiser)
    try:
        with mp.get_context("fork").Pool(jobs) as pool:
            yield from pool.imap(_audit_at, range(len(pairs)), chunksize=32)
    finally:
        _FORK_WORK = None


def what_if(collected: Sequence[Located], verdicts: Sequence[Located], policy: PolicyInForce, *,
            appraiser: Appraiser | None = None,
            progress: Callable[[int], None] | None = None) -> WhatIfReport:
    """Re-appraise every collected record under ``policy`` and list what would change, against
    the recorded verdict of the same evidence (or, without one, against nothing)."""
    appraiser = appraiser or remembering_appraiser()
    recorded = {coordinates_key(v.record["collected"]): v.record for v in verdicts}
    changes: list[Change] = []
    by_result: dict[str, int] = {}
    for i, col in enumerate(collected):
        new = appraiser(col.record, policy, coordinates_record(col))
        new_result = "PASS" if new.passed else "FAIL"
        by_result[new_result] = by_result.get(new_result, 0) + 1
        old = recorded.get((col.topic, col.partition, col.offset))
        old_rules = {str(f["rule_id"]) for f in old["failed_rules"]} if old else set()
        new_rules = set(new.reason_ids)
        old_result = str(old["result"]) if old else "-"
        if old_result != new_result or old_rules != new_rules:
            added = tuple(sorted(new_rules - old_rules))
            changes.append(Change(
                host_id=str(col.record["evidence"]["host_id"]), where=col.where,
                recorded=old_result, would_be=new_result, added_rules=added,
                removed_rules=tuple(sorted(old_rules - new_rules)),
                sentences=tuple(f.sentence for f in new.failures if f.rule_id in added)))
        if progress is not None:
            progress(i + 1)
    name = f"{policy.policy_id} v{policy.version} (sha256:{policy.digest.hex()[:16]}…)"
    return WhatIfReport(policy=name, evidences=len(collected), changes=tuple(changes),
                        by_result=by_result)
