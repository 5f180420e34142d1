"""The verifier's pure core: one collected evidence record + the policy in force -> one verdict.

:func:`appraise` reads nothing but its arguments (no clock, no environment, no state), so audit
replay of the same record under the same policy reproduces the verdict byte for byte. Checks,
in order (DESIGN.md step 5):

1. the reported PCR values are well formed (known banks, one value per (bank, PCR));
2. the quote: signature with the enrolled AK, ``extraData`` == the nonce, ``pcrDigest`` over the
   reported values (``services.tpm.quote.verify_quote``), and the AK is the enrolled name;
3. the TPM counters against the host's previous quote (:mod:`.counters`);
4. no SHA-1-only quote while a stronger bank is active (the agent's reported active banks and
   the banks the log declares, whichever names more);
5. the boot log parses, and its replay per bank reproduces the quoted PCRs (first differing
   PCR and the events that built it are named);
6. the IMA list, when present, replays to PCR 10 and starts with the right boot_aggregate;
7. claims (``services.tpm.claims``) and the policy (``services.verifier.policy``).

A failure in 1, 2 or 5 stops there (nothing after it could be trusted); 3, 4 and 6 add to the
list and appraisal goes on, so a verdict names every problem it can. Malformed evidence is a
failed verdict with a reason id from :mod:`.reasons` and a sentence naming the byte offset;
only a bug raises (the stage turns that into ``verifier.internal_error``).

What a PASS means (``docs/design/threat-model.md``): the TPM signed, over the nonce issued for
this host, PCR values that cover every bank and PCR the policy in force requires
(``policy.coverage``); every quoted PCR is accounted for, by the boot log's replay in every
quoted bank or, where the policy names it, by the IMA list; claims were read only from those
replay-verified events, under the per-PCR event-type table; and every rule of the policy passed
on them, none for want of evidence. Work per record is bounded (:data:`BUDGET`): evidence over
it is a failed verdict, never a stalled worker.

The shell may pass a :class:`~services.verifier.memo.VerifierMemo` (``memo=``): it is handed to
the quote, parse, replay, claims and claims-JSON steps, and never changes a verdict (the
argument is in :mod:`services.verifier.memo`).

The shell may also pass the verifier's EAR signing key (``ear_key=``, a capability the config
carries: :mod:`services.verifier.ear_key`): ``ear_json`` is then the compact JWS of the claims
(:mod:`services.verifier.ear_token`) instead of the claims' JSON. A PEM key signs with RFC 6979
deterministic ECDSA, so the verdict stays a function of its inputs and the key; everything but
the signature is the same either way, and audit replay compares the signed claims.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from services.errors import HostgateError
from services.runtime.stage import Decision, InputRecord, Output, StateView
from services.tpm import ima as tpm_ima
from services.tpm import ima_replay as tpm_ima_replay
from services.tpm.claims import Claims, ImaClaim, QuirkUse, extract_claims
from services.tpm.decrepit import refuse_tpm12
from services.tpm.errors import (
    InvalidQuoteSignature,
    KeyAttributeError,
    MalformedInput,
    NonceMismatch,
    PcrDigestMismatch,
    ReplayMismatch,
    TpmError,
)
from services.tpm.eventlog import Event, EventLog, parse_event_log
from services.tpm.quote import VerifiedQuote, verify_quote
from services.tpm.replay import ReplayResult, verify_replay
from services.verifier import counters, ear, reasons
from services.verifier.claims_json import claims_json
from services.verifier.config import VerifierConfig
from services.verifier.ear_key import EarSigningKey
from services.verifier.ear_token import sign_claims
from services.verifier.memo import VerifierMemo
from services.verifier.policy.evaluate import QuoteFacts, evaluate, subject
from services.verifier.policy.events import shorten
from services.verifier.policy.model import ExternalPcr
from services.verifier.policy.results import EventRef, Outcome
from services.verifier.policy_in_force import PolicyInForce, PolicyUnusable, policy_of
from services.wire.banks import (
    BANK_OF_SYMBOL,
    STRONG_BANKS,
    SYMBOL_OF_BANK,
    UNKNOWN_SYMBOL,
    WIRE_BANKS,
)
from services.wire.records import (
    NOWHERE,
    Coordinates,
    EvidenceCollected,
    EvidenceSubmitted,
    FailedRule,
    PcrValue,
    QuoteCounters,
    Verdict,
)
from services.wire.subjects import EVIDENCE_COLLECTED
from services.wire.subjects import VERDICT as VERDICT_SUBJECT

VERDICT_ID_DOMAIN: Final = b"hostgate.verdict.v1\x00"
_SUMMARY_MAX: Final = 160
_SENTENCE_MAX: Final = 600
MAX_PCR_VALUES: Final = 24 * len(WIRE_BANKS)
@dataclass(frozen=True)
class AppraisalBudget:
    """The most one appraisal reads (deterministic, so a replayed audit reaches the same verdict).
    Above intake's defaults (1 MiB / 20,000 events, 8 MiB / 100,000 IMA entries) and far above
    any real boot in the corpus (largest 256 KiB, about 2,000 events), well below what would keep
    a worker busy for seconds."""

    log_bytes: int = 4 * 1024 * 1024
    log_events: int = 50_000
    ima_bytes: int = 16 * 1024 * 1024
    ima_entries: int = 200_000


BUDGET: Final = AppraisalBudget()


Failure = FailedRule
"""One failed check (``services.wire.records.FailedRule``): a reason or rule id, one plain
sentence, the offending event (if one)."""


@dataclass(frozen=True)
class VerdictRecord:
    """One appraisal's verdict; :attr:`record` is its ``hostgate.Verdict`` Avro record."""

    verdict: Verdict

    @property
    def verdict_id(self) -> str:
        return self.verdict.verdict_id

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def failures(self) -> tuple[FailedRule, ...]:
        return self.verdict.failed_rules

    @property
    def record(self) -> dict[str, Any]:
        """The ``hostgate.Verdict`` record, ready to encode."""
        return self.verdict.to_avro()

    @property
    def reason_ids(self) -> tuple[str, ...]:
        """Every failed rule/reason id, sorted."""
        return tuple(f.rule_id for f in self.failures)


@dataclass
class _Work:
    """Mutable accumulator private to one :func:`appraise` call."""

    memo: VerifierMemo | None = None
    """The shell's memo, passed on to every step that takes one."""
    failures: list[Failure] = field(default_factory=list)
    quote: VerifiedQuote | None = None
    counters_ok: bool = True
    log: EventLog | None = None
    replay: ReplayResult | None = None
    claims: Claims | None = None
    active_banks: tuple[str, ...] = ()
    rule_outcomes: list[tuple[str, bool]] = field(default_factory=list)
    ima_verified: tuple[int, ...] = ()
    """PCRs the IMA list replayed to (IMA rules read their claims from them)."""
    ima_quirks: tuple[str, ...] = ()
    """IMA-layer quirks the policy accepted and the list needed (reported in the claims)."""

    def fail(self, rule_id: str, sentence: str, event: Mapping[str, Any] | None = None) -> None:
        self.failures.append(Failure(rule_id, shorten(sentence, _SENTENCE_MAX), event))


# --- helpers ------------------------------------------------------------------------------
def verdict_id(evidence_digest: bytes, policy_digest: bytes) -> str:
    """Deterministic verdict id: SHA-256 over a domain tag and both length-prefixed digests."""
    h = hashlib.sha256(VERDICT_ID_DOMAIN)
    for part in (evidence_digest, policy_digest):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.hexdigest()


def _summary(ev: Event) -> str:
    data = ev.data[:64]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in data)
    printable = sum(32 <= b < 127 for b in data)
    shown = text if data and printable * 4 >= len(data) * 3 else data.hex()
    return shorten(f"{ev.type_name}, {len(ev.data)} bytes: {shown}", _SUMMARY_MAX)


def offending_event(ev: Event, summary: str | None = None) -> dict[str, Any]:
    """A ``hostgate.OffendingEvent`` record for ``ev`` (digest in its strongest known bank)."""
    bank = next((b for b in reversed(WIRE_BANKS) if b in ev.digests), None)
    return {
        "pcr": ev.pcr if ev.pcr < 2**31 else -1,
        "seq": ev.seq,
        "untrusted_event_type": ev.event_type,
        "event_type_name": ev.type_name,
        "bank": SYMBOL_OF_BANK.get(bank or "", UNKNOWN_SYMBOL),
        "digest": bytes(ev.digests[bank]) if bank is not None else b"",
        "data_summary": shorten(summary, _SUMMARY_MAX) if summary else _summary(ev),
    }


def _event_from_ref(ref: EventRef | None, by_seq: Mapping[int, Event]) -> dict[str, Any] | None:
    if ref is None:
        return None
    ev = by_seq.get(ref.seq)
    if ev is not None:
        return offending_event(ev, ref.summary)
    alg, _, hexval = ref.digest.partition(":")
    try:
        digest = bytes.fromhex(hexval)
    except ValueError:
        digest = b""
    return {"pcr": ref.pcr, "seq": ref.seq, "untrusted_event_type": -1,
            "event_type_name": ref.type or "UNKNOWN",
            "bank": SYMBOL_OF_BANK.get(alg, UNKNOWN_SYMBOL), "digest": digest,
            "data_summary": shorten(ref.summary, _SUMMARY_MAX)}


# --- the checks ---------------------------------------------------------------------------
def _pcr_values(ev: EvidenceSubmitted, w: _Work) -> dict[str, dict[int, bytes]] | None:
    values: dict[str, dict[int, bytes]] = {}
    if len(ev.pcr_values) > MAX_PCR_VALUES:
        w.fail(reasons.EVIDENCE_MALFORMED, f"The evidence reports {len(ev.pcr_values)} PCR "
               f"values; at most {MAX_PCR_VALUES} (24 PCRs in 5 banks) can exist.")
        return None
    for i, item in enumerate(ev.pcr_values):
        bank = BANK_OF_SYMBOL.get(item.bank)
        pcr = item.pcr
        if bank is None:
            w.fail(reasons.EVIDENCE_MALFORMED,
                   f"pcr_values[{i}] names bank {item.bank}, which this verifier does not know.")
            return None
        if not 0 <= pcr <= 23:
            w.fail(reasons.EVIDENCE_MALFORMED, f"pcr_values[{i}] names PCR {pcr}, not 0..23.")
            return None
        if pcr in values.setdefault(bank, {}):
            w.fail(reasons.EVIDENCE_MALFORMED,
                   f"pcr_values[{i}] reports {bank} PCR {pcr} a second time.")
            return None
        values[bank][pcr] = item.value
    return values


def _check_quote(collected: EvidenceCollected, pcrs: Mapping[str, Mapping[int, bytes]],
                 w: _Work) -> None:
    ev = collected.evidence
    try:
        quote = verify_quote(collected.ak_public, ev.quote_attest, ev.quote_signature,
                             nonce=ev.nonce, pcr_values=pcrs, memo=w.memo)
    except InvalidQuoteSignature as exc:
        w.fail(reasons.QUOTE_BAD_SIGNATURE, f"The quote's signature is not valid for the "
               f"host's enrolled AK: {exc}.")
        return
    except NonceMismatch:
        w.fail(reasons.QUOTE_NONCE_MISMATCH, "The quote's extraData is not the nonce issued for "
               f"challenge {ev.challenge_id}.")
        return
    except PcrDigestMismatch as exc:
        w.fail(reasons.QUOTE_PCR_DIGEST_MISMATCH, f"The reported PCR values are not the ones the "
               f"TPM quoted: {exc}.")
        return
    except KeyAttributeError as exc:
        w.fail(reasons.QUOTE_AK_ATTRIBUTES, f"The enrolled AK cannot vouch for a quote: {exc}.")
        return
    except MalformedInput as exc:
        w.fail(reasons.QUOTE_MALFORMED, f"The quote does not parse: {exc}.")
        return
    except TpmError as exc:  # Unsupported and any other library refusal
        w.fail(reasons.QUOTE_UNSUPPORTED, f"The quote cannot be verified: {exc}.")
        return
    if not hmac.compare_digest(quote.ak_name, collected.ak_name):
        w.fail(reasons.QUOTE_AK_NAME_MISMATCH, "The AK public area given with the evidence does "
               "not have the host's enrolled AK name.")
        return
    w.quote = quote


def _check_counters(collected: EvidenceCollected, quote: VerifiedQuote, w: _Work) -> None:
    previous = collected.previous_counters
    check = counters.compare(previous.clock_info() if previous is not None else None,
                             quote.clock_info)
    if not check.ok:
        w.counters_ok = False
        w.fail(reasons.COUNTERS_WENT_BACKWARDS, check.sentence)


def _active_banks(ev: EvidenceSubmitted, log: EventLog | None) -> tuple[str, ...]:
    reported = {BANK_OF_SYMBOL[s] for s in ev.active_banks if s in BANK_OF_SYMBOL}
    declared = set(log.banks) if log is not None else set()
    return tuple(b for b in WIRE_BANKS if b in reported | declared)


def _check_banks(quote: VerifiedQuote, w: _Work) -> None:
    quoted = {bank for bank, pcrs in quote.selection if pcrs}
    strong = sorted(set(w.active_banks) & STRONG_BANKS)
    if quoted <= {"sha1"} and strong:
        w.fail(reasons.BANKS_DOWNGRADE, f"The quote covers only the SHA-1 bank although "
               f"{', '.join(strong)} is active on this TPM.")


def _parse_log(ev: EvidenceSubmitted, w: _Work) -> None:
    try:
        w.log = parse_event_log(ev.boot_log, memo=w.memo)
        refuse_tpm12(w.log)  # issue 20: refused as what it is, before any digest or bank error
    except MalformedInput as exc:
        w.fail(reasons.LOG_MALFORMED, f"The boot event log does not parse: {exc}.")
    except TpmError as exc:
        w.fail(reasons.LOG_UNSUPPORTED, f"The boot event log cannot be read: {exc}.")


def _over_budget(ev: EvidenceSubmitted, w: _Work) -> bool:
    """Fail (and stop) evidence that holds more than :data:`BUDGET` lets one appraisal read."""
    boot_log, ima_log = ev.boot_log, ev.ima_log
    problem = ""
    if len(boot_log) > BUDGET.log_bytes:
        problem = f"the boot log is {len(boot_log)} bytes (budget {BUDGET.log_bytes})"
    elif ima_log is not None and len(ima_log) > BUDGET.ima_bytes:
        problem = f"the IMA list is {len(ima_log)} bytes (budget {BUDGET.ima_bytes})"
    elif w.log is not None and len(w.log.events) > BUDGET.log_events:
        problem = f"the boot log holds {len(w.log.events)} events (budget {BUDGET.log_events})"
    if problem:
        w.fail(reasons.OVER_BUDGET, f"The evidence is over the appraisal budget: {problem}. "
               "No real boot comes close; it fails closed.")
    return bool(problem)


def _replay(w: _Work, external: tuple[int, ...], quirks: tuple[str, ...]) -> None:
    assert w.log is not None and w.quote is not None
    try:
        w.replay = verify_replay(w.log, w.quote.pcr_values, allowed_quirks=quirks,
                                 external=external, memo=w.memo)
    except ReplayMismatch as exc:
        by_seq = {e.seq: e for e in w.log.events}
        last = by_seq.get(exc.event_seqs[-1]) if exc.event_seqs else None
        event = offending_event(last) if last is not None else None
        w.fail(reasons.REPLAY_PCR_MISMATCH, f"Replaying the boot log does not reproduce the "
               f"quote: {exc}.", event)
    except MalformedInput as exc:
        w.fail(reasons.LOG_MALFORMED, f"The boot event log cannot be replayed: {exc}.")
    except TpmError as exc:
        w.fail(reasons.LOG_UNSUPPORTED, f"The boot event log cannot be replayed: {exc}.")


def _ima(ev: EvidenceSubmitted, ima_pcrs: tuple[int, ...], w: _Work,
         quirks: tuple[str, ...]) -> tuple[ImaClaim, ...] | None:
    """The IMA list's claims when the policy names PCRs IMA accounts for (``ima_pcrs``): the
    list is then required and must replay to them. Otherwise IMA is not read at all."""
    if not ima_pcrs:
        return None
    raw = ev.ima_log
    where = ", ".join(map(str, ima_pcrs))
    if raw is None:
        w.fail(reasons.IMA_MISSING, f"The policy says the IMA measurement list accounts for PCR "
               f"{where}, but the evidence carries none: those measurements cannot be "
               "confirmed.")
        return None
    assert w.quote is not None
    try:
        parsed = tpm_ima.parse(raw, quirks=[q for q in quirks
                                                    if q in tpm_ima.KNOWN_QUIRKS])
        if len(parsed.entries) > BUDGET.ima_entries:
            w.fail(reasons.OVER_BUDGET, f"The evidence is over the appraisal budget: the IMA "
                   f"list holds {len(parsed.entries)} entries (budget {BUDGET.ima_entries}).")
            return None
        verified = tpm_ima_replay.verify_replay(parsed, w.quote.pcr_values, pcrs=ima_pcrs)
    except MalformedInput as exc:
        w.fail(reasons.IMA_MALFORMED, f"The IMA measurement list does not parse: {exc}.")
        return None
    except ReplayMismatch as exc:
        w.fail(reasons.IMA_PCR_MISMATCH, f"The IMA list does not replay to the quote: {exc}.")
        return None
    except TpmError as exc:
        w.fail(reasons.IMA_MALFORMED, f"The IMA list cannot be checked: {exc}.")
        return None
    try:
        tpm_ima_replay.verify_boot_aggregate(parsed, w.quote.pcr_values)
    except HostgateError as exc:
        w.fail(reasons.IMA_BOOT_AGGREGATE, f"The IMA boot_aggregate is wrong: {exc}.")
    w.ima_verified = ima_pcrs
    w.ima_quirks = tuple(sorted(parsed.quirks_applied))
    return tuple(ImaClaim(e.pcr, e.template_name, e.file_hash_alg, e.file_hash, e.path,
                          e.violation) for e in verified.entries)


def _evaluate(policy: PolicyInForce, w: _Work) -> None:
    assert w.claims is not None and w.replay is not None and w.quote is not None
    facts = QuoteFacts(clock_safe=w.quote.clock_info.safe,
                       firmware_version=w.quote.firmware_version)
    s = subject(w.claims, w.replay.verified_events, active_banks=w.active_banks,
                quoted_pcrs={bank: pcrs for bank, pcrs in w.quote.selection},
                checked_pcrs=w.replay.checked_pcrs | set(w.ima_verified), quote=facts,
                explain=False)  # a verdict keeps only the outcome of a passed rule
    result = evaluate(policy.prepared, s)
    by_seq: dict[int, Event] | None = None
    for r in result.results:
        if r.outcome is Outcome.NOT_APPLICABLE:
            continue
        w.rule_outcomes.append((r.rule_id, r.outcome is Outcome.PASS))
        if r.outcome is Outcome.FAIL:
            if by_seq is None:
                by_seq = {e.seq: e for e in w.replay.verified_events}
            w.fail(r.rule_id, r.message, _event_from_ref(r.event, by_seq))


def _external_log(external: tuple[ExternalPcr, ...], pcr: int) -> str:
    log = next((e.log for e in external if e.pcr == pcr), "")
    return {"ima": "IMA measurement list"}.get(log, f"{log} log")


def _run_checks(collected: EvidenceCollected, policy: PolicyInForce | None, w: _Work) -> None:
    ev = collected.evidence
    pcrs = _pcr_values(ev, w)
    if pcrs is None:
        return
    _check_quote(collected, pcrs, w)
    if w.quote is None:
        return
    _check_counters(collected, w.quote, w)
    if _over_budget(ev, w):
        return
    _parse_log(ev, w)
    if _over_budget(ev, w):
        return
    w.active_banks = _active_banks(ev, w.log)
    _check_banks(w.quote, w)
    if w.log is None:
        return
    external = policy.prepared.coverage.external if policy is not None else ()
    quirks = policy.prepared.policy.spec.evidence.allowed_quirks if policy is not None else ()
    _replay(w, tuple(e.pcr for e in external), quirks)
    if w.replay is None:
        return
    for stray in w.replay.external_events[:1]:
        w.fail(reasons.REPLAY_EXTERNAL_PCR, f"The boot log extends PCR {stray.pcr} (event "
               f"{stray.seq}), which the policy says the {_external_log(external, stray.pcr)} "
               "accounts for: one PCR, one log.", offending_event(stray))
    ima_claims = _ima(ev, tuple(e.pcr for e in external if e.log == "ima"), w, quirks)
    w.claims = extract_claims(w.replay, ima=ima_claims, memo=w.memo, allowed_quirks=quirks)
    if w.ima_quirks:  # reported like every quirk used (replay: -1, no one event)
        w.claims = dataclasses.replace(w.claims, quirks_applied=(
            *w.claims.quirks_applied, *(QuirkUse(q, -1) for q in w.ima_quirks)))
    if policy is not None:
        _evaluate(policy, w)


# --- the verdict --------------------------------------------------------------------------
def _typed(collected: EvidenceCollected | Mapping[str, Any]) -> EvidenceCollected:
    return collected if isinstance(collected, EvidenceCollected) \
        else EvidenceCollected.from_avro(collected)


def _located(at: Coordinates | Mapping[str, Any] | None) -> Coordinates:
    if at is None:
        return NOWHERE
    return at if isinstance(at, Coordinates) else Coordinates.from_avro(at)


def appraise(
    collected: EvidenceCollected | Mapping[str, Any],
    policy: PolicyInForce | PolicyUnusable | None,
    *,
    collected_at: Coordinates | Mapping[str, Any] | None = None,
    memo: VerifierMemo | None = None,
    ear_key: EarSigningKey | None = None,
) -> VerdictRecord:
    """Appraise one ``hostgate.EvidenceCollected`` (typed, or as the codec decoded it) under
    ``policy``.

    ``policy`` is the policy in force, a :class:`PolicyUnusable` naming why the one in force
    cannot be used, or None when none is (both fail closed, after every evidence check ran so
    the verdict still lists what else is wrong). ``collected_at`` is where the collected record
    itself lives (the stage passes the input record's coordinates).
    ``memo``: the shell's memo (see the module docstring); None computes everything.
    ``ear_key``: the EAR signing key (see the module docstring); None writes the EAR unsigned.
    """
    typed = _typed(collected)
    w = _Work(memo=memo)
    usable = policy if isinstance(policy, PolicyInForce) else None
    _run_checks(typed, usable, w)
    if isinstance(policy, PolicyUnusable):
        w.fail(reasons.POLICY_UNUSABLE, f"The policy in force cannot be used: {policy}.")
    elif policy is None:
        w.fail(reasons.POLICY_NONE_IN_FORCE, "No attestation policy is in force, so the "
               "evidence cannot pass.")
    return _verdict(typed, usable, w, _located(collected_at), ear_key)


def error_verdict(collected: EvidenceCollected | Mapping[str, Any], rule_id: str,
                  sentence: str, *,
                  collected_at: Coordinates | Mapping[str, Any] | None = None,
                  ear_key: EarSigningKey | None = None) -> VerdictRecord:
    """A failed verdict with one reason and nothing else established (for the stage's error
    policy: a bug in appraisal fails the evidence closed instead of dead-lettering it)."""
    w = _Work()
    w.fail(rule_id, sentence)
    return _verdict(_typed(collected), None, w, _located(collected_at), ear_key)


def _attested(w: _Work) -> tuple[PcrValue, ...]:
    """Every quoted PCR value, for the issuer's seal; only a passing verdict carries them."""
    assert w.quote is not None
    return tuple(PcrValue(SYMBOL_OF_BANK[bank], pcr, value) for bank in WIRE_BANKS
                 for pcr, value in sorted(w.quote.pcr_values.get(bank, {}).items()))


def _verdict(collected: EvidenceCollected, policy: PolicyInForce | None, w: _Work,
             collected_at: Coordinates, ear_key: EarSigningKey | None = None
             ) -> VerdictRecord:
    failures = tuple(sorted(w.failures, key=lambda f: (f.rule_id, f.sentence)))
    passed = not failures
    policy_digest = policy.digest if policy is not None else b""
    vid = verdict_id(collected.evidence_digest, policy_digest)
    appraised_at = collected.received_at
    facts = ear.AppraisalFacts(
        quote_verified=w.quote is not None,
        ek_chain_verified=collected.ek.chain_verified,
        failed_reasons=tuple(f.rule_id for f in failures if f.rule_id.startswith("verifier.")),
        rule_outcomes=tuple(w.rule_outcomes),
    )
    vector = ear.trust_vector(facts)
    ear_json = ear.canonical_float_free(ear.ear_claims(
        vector, iat_seconds=appraised_at // 1000,
        policy_id_uri=ear.policy_uri(policy.policy_id, policy.version, policy.digest.hex())
        if policy is not None else ear.policy_uri("", 0, ""),
        nonce=collected.evidence.nonce))
    if ear_key is not None:
        ear_json = sign_claims(ear_key, ear_json)
    verdict = Verdict(
        verdict_id=vid,
        host_id=collected.evidence.host_id,
        result="PASS" if passed else "FAIL",
        failed_rules=failures,
        claims_json=claims_json(w.claims, w.memo) if w.claims is not None else "{}",
        policy_id=policy.policy_id if policy is not None else "",
        policy_version=policy.version if policy is not None else 0,
        policy_digest=policy_digest,
        evidence=collected.source,
        evidence_digest=collected.evidence_digest,
        collected=collected_at,
        trustworthiness=vector.to_avro(),
        ear_status=vector.status.avro,
        ear_json=ear_json,
        quote_counters=QuoteCounters.from_clock_info(w.quote.clock_info)
        if w.quote is not None and w.counters_ok else None,
        ek_public=collected.ek.ek_public,
        ak_name=collected.ak_name,
        attested_pcrs=_attested(w) if passed and w.quote is not None else (),
        appraised_at=appraised_at,
    )
    return VerdictRecord(verdict)


__all__ = [
    "BUDGET",
    "VERDICT_SUBJECT",
    "AppraisalBudget",
    "Failure",
    "VerdictRecord",
    "appraise",
    "error_verdict",
    "offending_event",
    "verdict_id",
]


# --- The stage's decision: one collected record in, one verdict out -----------------------

INPUT_SUBJECTS: Final = frozenset({EVIDENCE_COLLECTED})


def _coordinates(inp: InputRecord) -> Coordinates:
    c = inp.coordinates
    return Coordinates(c.topic, c.partition, c.offset)


def _decision(appraised: VerdictRecord, topic: str) -> Decision:
    verdict = appraised.verdict
    out = Output(topic=topic, key=verdict.host_id, subject=VERDICT_SUBJECT,
                 record=verdict.to_avro(), id=verdict.verdict_id)
    facts: Mapping[str, str | int | bool] = {
        "verdict": verdict.result, "verdict_id": verdict.verdict_id,
        "reasons": ",".join(appraised.reason_ids)[:300],
        "policy_version": verdict.policy_version,
    }
    return Decision(outputs=(out,), log=facts)


def decide(inp: InputRecord, state: StateView, cfg: VerifierConfig) -> Decision:
    """Appraise one collected record under the policy in force; one verdict out."""
    policy = policy_of(state, cfg.policy_id, cfg.policies)
    verdict = appraise(inp.record, policy, collected_at=_coordinates(inp), memo=cfg.memo,
                       ear_key=cfg.ear_key)
    return _decision(verdict, cfg.topics.verdicts)


def on_host_fault(inp: InputRecord, exc: HostgateError, cfg: VerifierConfig) -> Decision:
    """A host's fault that escaped appraisal (``services.runtime.faults``): a failed verdict
    naming it (its message names the field and offset)."""
    verdict = error_verdict(
        inp.record, reasons.EVIDENCE_MALFORMED,
        f"The evidence could not be appraised: {type(exc).__name__}: {exc}",
        collected_at=_coordinates(inp), ear_key=cfg.ear_key)
    return _decision(verdict, cfg.topics.verdicts)


def on_bug(inp: InputRecord, exc: Exception, cfg: VerifierConfig) -> Decision:
    """A bug in appraisal: a failed verdict that names the verifier as the one at fault. Never
    a dead letter: evidence that crashes the verifier would then leave its host TRUSTED on its
    last credential. Audit replay does the same (``services.verifier.audit_replay``)."""
    verdict = error_verdict(
        inp.record, reasons.INTERNAL_ERROR,
        f"The verifier could not appraise this evidence ({type(exc).__name__}); it fails "
        "closed.", collected_at=_coordinates(inp), ear_key=cfg.ear_key)
    return _decision(verdict, cfg.topics.verdicts)
