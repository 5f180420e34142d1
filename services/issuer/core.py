"""The issuer's core: a verdict or an incident event, plus the host's state, in; outputs out.

* ``apply_verdict``: PASS → a fresh host key, a short-lived certificate and its TPM-sealed
  delivery (``hostgate.CredentialIssued``), the host TRUSTED; FAIL (or a result this version
  does not understand, or a "pass" listing failed rules) → QUARANTINED and every certificate
  it holds revoked. A pass while quarantined releases the host only under the rule in
  ``services.issuer.hoststate``.
* ``apply_incident_event``: tracks the host's incident from ``attest.incidents.v1``; an
  unresolved incident quarantines the host (and revokes), a resolution is remembered.
* ``apply_identity_event``: an operator release of the host's identity (the collector's
  ``IdentityEvent`` RELEASED on ``attest.identity.events.v1``) resets the EK the host is bound
  to and revokes what the old TPM holds (``services.issuer.hoststate``).
* ``decide(inp, state, cfg)``: the stage contract (``services.runtime.stage``) around all
  three; ``cfg`` is the frozen ``services.issuer.config.IssuerConfig``.

A verdict issues only for the host's own EK: the first verdict binds the host to the SHA-256 of
its EK's SubjectPublicKeyInfo (``services.ekid``, what the collector's EK registry is keyed
by); a later verdict naming another EK issues nothing and quarantines the host until an
operator releases it. The collector already refuses such evidence; this is the issuer not
trusting that, or the verifier, with a credential.

Nothing here reads the clock: every time comes from the input record. The only non-determinism
is the fresh key material (host key, content key, wrap seed) and the CA's signature, on purpose,
and it comes only through the capabilities the config carries (``cfg.new_key``, ``cfg.seal``,
``cfg.ca``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from cryptography.hazmat.primitives.serialization import Encoding

from services.ekid import ek_key_sha256
from services.issuer.certificates import (
    HostCertificateRequest,
    RevokedCertificate,
    check_host_id,
    issue_host_certificate,
)
from services.issuer.config import IssuerConfig
from services.issuer.errors import IssuanceError
from services.issuer.hoststate import (
    RESOLVED_STATUSES,
    HeldCredential,
    HostTrust,
    HostTrustState,
    RevocationReason,
    Trigger,
    check_transition,
)
from services.issuer.sealing import seal_policy
from services.runtime.stage import Decision, InputRecord, Output, StateUpdate, StateView
from services.tpm.algorithms import SHA_BANKS
from services.tpm.errors import MalformedInput, Unsupported
from services.wire.banks import SYMBOL_OF_BANK, WIRE_BANKS
from services.wire.ids import coordinate_parts, derived_id
from services.wire.records import PcrValue, Verdict
from services.wire.subjects import CREDENTIAL_ISSUED, HOST_STATE, ISSUER_HOST_STATE
from services.wire.subjects import IDENTITY_EVENT as IDENTITY_SUBJECT
from services.wire.subjects import INCIDENT_EVENT as INCIDENT_SUBJECT
from services.wire.subjects import REMEDIATION_REJECTED as REJECTED_SUBJECT
from services.wire.subjects import VERDICT as VERDICT_SUBJECT
from services.wire.time import to_datetime

HOSTS_TABLE: Final = "hosts"
# attest.incidents.v1 also carries the incidents stage's RemediationRejected records:
# decodable, read and ignored by the core (not DLQ material).
INPUT_SUBJECTS: Final = frozenset({VERDICT_SUBJECT, INCIDENT_SUBJECT, REJECTED_SUBJECT,
                                   IDENTITY_SUBJECT})
TABLES: Final[Mapping[str, str]] = {HOSTS_TABLE: ISSUER_HOST_STATE}
#: Avro ``hostgate.HashAlg`` symbol → PCR bank name, for the banks a credential can be sealed
#: to (the SHA banks).
AVRO_BANKS: Final[Mapping[str, str]] = {SYMBOL_OF_BANK[b]: b for b in SHA_BANKS}
#: Most attested PCR entries read from a verdict (24 PCRs x every bank of the schema).
MAX_ATTESTED_PCRS: Final = 24 * len(WIRE_BANKS)
#: Incident lifecycle events that move an open incident along without a new failure.
OPERATOR_PROGRESS: Final = frozenset({"ACKNOWLEDGED", "ROOT_CAUSED"})
MAX_REASON: Final = 300


@dataclass(frozen=True)
class IssuerOutcome:
    """What one input did to one host."""

    state: HostTrustState
    host_state: Mapping[str, Any] | None
    """``hostgate.HostState`` to publish, or None if nothing changed (a duplicate)."""
    credential: Mapping[str, Any] | None = None
    """``hostgate.CredentialIssued`` on an issuing pass."""
    trigger: Trigger | None = None


def credential_id_for(verdict_id: str) -> str:
    """Deterministic credential id of a verdict."""
    return derived_id("cred", "hostgate-credential", verdict_id)


def attested_pcr_map(entries: Sequence[PcrValue]) -> dict[str, dict[int, bytes]]:
    """``bank -> {pcr: value}`` from a verdict's ``attested_pcrs`` (duplicates refused;
    banks this version does not know are skipped: they cannot be in the seal selection)."""
    if len(entries) > MAX_ATTESTED_PCRS:
        raise IssuanceError(f"verdict lists {len(entries)} attested PCRs, over "
                            f"{MAX_ATTESTED_PCRS}", field="attested_pcrs")
    out: dict[str, dict[int, bytes]] = {}
    for i, entry in enumerate(entries):
        bank = AVRO_BANKS.get(entry.bank)
        if bank is None:
            continue
        pcr = entry.pcr
        if not 0 <= pcr <= 23:
            raise IssuanceError(f"attested PCR {pcr} out of range", field=f"attested_pcrs[{i}]")
        if pcr in out.setdefault(bank, {}):
            raise IssuanceError(f"attested PCR {bank}:{pcr} listed twice",
                                field=f"attested_pcrs[{i}]")
        out[bank][pcr] = entry.value
    return out


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


def _utc(when: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(when, dt.datetime) or when.tzinfo is None:
        raise IssuanceError(f"{what} is not a time-zone-aware timestamp", field=what)
    return when.astimezone(dt.UTC)


def _entered(current: HostTrustState, target: HostTrust, at: dt.datetime) -> dt.datetime:
    return current.since if current.state is target else at


def apply_verdict(record: Verdict | Mapping[str, Any], current: HostTrustState | None,
                  cfg: IssuerConfig) -> IssuerOutcome:
    """Apply one ``hostgate.Verdict`` (typed, or as the codec decoded it) to the host's state
    (see the module docstring)."""
    verdict = record if isinstance(record, Verdict) else Verdict.from_avro(record)
    host_id = check_host_id(verdict.host_id)
    verdict_id = verdict.verdict_id
    at = to_datetime(verdict.appraised_at)
    state = (current or HostTrustState.pending(host_id, at))
    if state.host_id != host_id:
        raise IssuanceError(f"state for host {state.host_id} given for verdict of {host_id}",
                            field="host_id")
    if state.verdict_id == verdict_id:
        return IssuerOutcome(state, None)  # already applied: a duplicate verdict record
    state = state.pruned(at)
    rules = [r.rule_id for r in verdict.failed_rules]
    passed = verdict.passed and not rules
    ek = _ek_digest(verdict)
    if ek is not None and state.ek_key_sha256 is not None and ek != state.ek_key_sha256:
        target = check_transition(host_id, state.state, Trigger.EK_MISMATCH)
        new = replace(state.revoke_all(at, RevocationReason.KEY_COMPROMISE), state=target,
                      since=_entered(state, target, at), verdict_id=verdict_id,
                      ek_mismatch_at=at, reason=_clip(
                          f"verdict {verdict_id} names EK {ek.hex()[:16]}…, not the host's "
                          f"EK {state.ek_key_sha256.hex()[:16]}…: nothing issued; only an "
                          "operator release (hostgate identity release) rebinds the host"))
        return IssuerOutcome(new, new.public_record(), None, Trigger.EK_MISMATCH)
    if ek is not None and state.ek_key_sha256 is None:
        state = replace(state, ek_key_sha256=ek)  # the first verdict binds the host's EK

    if not passed:
        target = check_transition(host_id, state.state, Trigger.FAIL)
        why = ", ".join(rules[:5]) or f"result {verdict.result}"
        new = replace(state.revoke_all(at, RevocationReason.KEY_COMPROMISE), state=target,
                      since=_entered(state, target, at), verdict_id=verdict_id,
                      reason=_clip(f"verdict {verdict_id} failed: {why}"),
                      last_failure_at=max(at, state.last_failure_at or at))
        return IssuerOutcome(new, new.public_record(), None, Trigger.FAIL)

    if not state.release_allowed(at):
        target = check_transition(host_id, state.state, Trigger.PASS_BLOCKED)
        if not state.incident_resolved:
            why = f"incident {state.incident_id} is {state.incident_status}"
        elif state.incident_status is None or state.incident_changed_at is None:
            why = "no incident resolution seen since the last failure"
        else:
            why = "the pass does not follow a resolution later than the last failure"
        new = replace(state, state=target, since=_entered(state, target, at),
                      verdict_id=verdict_id,
                      reason=_clip(f"verdict {verdict_id} passed but {why}"))
        return IssuerOutcome(new, new.public_record(), None, Trigger.PASS_BLOCKED)

    target = check_transition(host_id, state.state, Trigger.PASS)
    credential, held = _issue(verdict, host_id, verdict_id, at, cfg)
    new = replace(state.with_credential(held, at, cfg.max_held), state=target,
                  since=_entered(state, target, at), verdict_id=verdict_id,
                  reason=_clip(f"verdict {verdict_id} passed; credential {held.serial} "
                               "issued"))
    return IssuerOutcome(new, new.public_record(), credential, Trigger.PASS)


def _issue(verdict: Verdict, host_id: str, verdict_id: str, at: dt.datetime,
           cfg: IssuerConfig) -> tuple[dict[str, Any], HeldCredential]:
    pcrs = attested_pcr_map(verdict.attested_pcrs)
    selection = cfg.seal_selection
    policy = seal_policy(selection, pcrs)
    policy_digest = verdict.policy_digest
    host_key = cfg.new_key()
    cert = issue_host_certificate(cfg.ca, HostCertificateRequest(
        host_id=host_id, public_key=host_key.public_key(), verdict_id=verdict_id,
        policy_digest=policy_digest, seal_policy_digest=policy, appraised_at=at),
        cfg.profile)
    cert_der = cert.public_bytes(Encoding.DER)
    credential_id = credential_id_for(verdict_id)
    delivery = cfg.seal(verdict.ek_public, selection, pcrs, host_key,
                        credential_id=credential_id, certificate_der=cert_der)
    if delivery.sealed.policy_digest != policy:  # both computed here: a bug if they differ
        raise IssuanceError("sealed policy digest differs from the certificate's",
                            field="attested_pcrs")
    serial = format(cert.serial_number, "x")
    record = {
        "credential_id": credential_id,
        "host_id": host_id,
        "serial": serial,
        "certificate": cert_der,
        "sealed": {
            "duplicate": delivery.sealed.duplicate,
            "encrypted_seed": delivery.sealed.encrypted_seed,
            "public": delivery.sealed.public,
            "encrypted_payload": delivery.encrypted_payload,
        },
        "pcr_selection": [{"bank": bank.upper(), "pcrs": list(p)}
                          for bank, p in selection.banks],
        "pcr_digest": delivery.pcr_digest,
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "verdict_id": verdict_id,
        "issued_at": at,
    }
    return record, HeldCredential(serial, cert.not_valid_after_utc, verdict_id)


def _ek_digest(verdict: Verdict) -> bytes | None:
    """The verdict's EK identity, or None when it carries no usable EK (a failed verdict
    quarantines whatever it names; a pass without one fails when it is sealed)."""
    raw = verdict.ek_public
    if not raw:
        return None
    try:
        return ek_key_sha256(raw)
    except (MalformedInput, Unsupported, ValueError):
        return None


def apply_identity_event(event: Mapping[str, Any], current: HostTrustState | None
                         ) -> IssuerOutcome:
    """Apply one ``hostgate.IdentityEvent``: RELEASED resets the host's EK binding, revokes its
    certificates (CESSATION_OF_OPERATION: that TPM no longer is the host) and leaves it REVOKED,
    or QUARANTINED while a failure still waits for its incident. Other events change nothing."""
    host_id = check_host_id(event["host_id"])
    if event.get("event") != "RELEASED" or current is None:
        return IssuerOutcome(current or HostTrustState.pending(
            host_id, _utc(event["occurred_at"], "occurred_at")), None)
    if current.host_id != host_id:
        raise IssuanceError(f"state for host {current.host_id} given for identity event of "
                            f"{host_id}", field="host_id")
    at = _utc(event["occurred_at"], "occurred_at")
    state = current.pruned(at)
    blocked = state.state is HostTrust.QUARANTINED and state.failure_pending()
    trigger = Trigger.RELEASE_BLOCKED if blocked else Trigger.RELEASE
    target = check_transition(host_id, state.state, trigger)
    new = replace(state.revoke_all(at, RevocationReason.CESSATION_OF_OPERATION), state=target,
                  since=_entered(state, target, at), ek_key_sha256=None, ek_mismatch_at=None,
                  reason=_clip(f"identity released by {str(event.get('actor'))[:64]!r} "
                               f"({str(event.get('reason'))[:120]}); the host must attest "
                               "again" + (", and its incident be resolved" if blocked else "")))
    return IssuerOutcome(new, new.public_record() if new != state else None, None, trigger)


def incident_resolved(event: Mapping[str, Any]) -> bool:
    """An incident event says "resolved" only if its status is REMEDIATED or CLOSED *and* its
    ``resolved`` flag (when present) agrees; anything else, UNKNOWN included, is unresolved."""
    status = event["status"]
    by_status = status in RESOLVED_STATUSES
    return by_status and event.get("resolved", by_status) is True


def apply_incident_event(event: Mapping[str, Any], current: HostTrustState | None
                         ) -> IssuerOutcome:
    """Apply one ``hostgate.IncidentEvent``: remember the incident, quarantine while it is
    unresolved (revoking every certificate the host holds)."""
    host_id = check_host_id(event["host_id"])
    at = _utc(event["occurred_at"], "occurred_at")
    state = (current or HostTrustState.pending(host_id, at))
    if state.host_id != host_id:
        raise IssuanceError(f"state for host {state.host_id} given for incident of {host_id}",
                            field="host_id")
    state = state.pruned(at)
    resolved = incident_resolved(event)
    trigger = Trigger.INCIDENT_RESOLVED if resolved else Trigger.INCIDENT_UNRESOLVED
    target = check_transition(host_id, state.state, trigger)
    # Operators moving an open incident along is not a new failure; anything else unresolved
    # (OPENED, UPDATED, REGRESSED, or an event this version does not know) is.
    failure = not resolved and event.get("event") not in OPERATOR_PROGRESS
    # A status that claims resolution while the event's flag denies it is kept as UNKNOWN, so
    # the stored state can never read as resolved (fail closed).
    status = event["status"] if resolved == (event["status"] in RESOLVED_STATUSES) else "UNKNOWN"
    new = replace(state, incident_id=event["incident_id"], incident_status=status,
                  incident_changed_at=at, state=target, since=_entered(state, target, at))
    if failure:
        new = replace(new, last_failure_at=max(at, state.last_failure_at or at))
    if not resolved:
        new = replace(new.revoke_all(at, RevocationReason.KEY_COMPROMISE),
                      reason=_clip(f"incident {event['incident_id']} is {status}"))
    elif target is HostTrust.QUARANTINED:
        new = replace(new, reason=_clip(f"incident {event['incident_id']} is "
                                        f"{event['status']}; waiting for a passing attestation"))
    changed = new != state
    return IssuerOutcome(new, new.public_record() if changed else None, None, trigger)


def crl_entries(states: Iterable[HostTrustState]) -> list[RevokedCertificate]:
    """Every revoked certificate in the hosts' states, for ``certificates.build_crl``."""
    return [RevokedCertificate(int(r.serial, 16), r.revoked_at, r.not_after,
                               r.reason.crl_reason)
            for s in states for r in s.revoked]


def _output_id(kind: str, inp: InputRecord) -> str:
    return derived_id(kind, *coordinate_parts(inp.coordinates))


def decide(inp: InputRecord, state: StateView, cfg: IssuerConfig) -> Decision:
    """The issuer stage's ``decide``: verdicts, incident and identity events in, credentials,
    host states and the ``hosts`` table out. Other subjects on the inputs are ignored (logged)."""
    if inp.subject not in (VERDICT_SUBJECT, INCIDENT_SUBJECT, IDENTITY_SUBJECT):
        return Decision(log={"ignored": inp.subject})
    host_id = check_host_id(inp.record["host_id"])
    if inp.key != host_id:
        raise IssuanceError(f"record key {inp.key!r} is not its host_id {host_id!r} "
                            f"({inp.coordinates})", field="key")
    raw = state.get(HOSTS_TABLE, host_id)
    current = HostTrustState.from_record(raw) if raw is not None else None
    if inp.subject == VERDICT_SUBJECT:
        outcome = apply_verdict(inp.record, current, cfg)
    elif inp.subject == IDENTITY_SUBJECT:
        outcome = apply_identity_event(inp.record, current)
    else:
        outcome = apply_incident_event(inp.record, current)
    outputs: list[Output] = []
    if outcome.credential is not None:
        outputs.append(Output(cfg.topics.credentials, host_id, CREDENTIAL_ISSUED,
                              outcome.credential, outcome.credential["credential_id"]))
    updates: tuple[StateUpdate, ...] = ()
    if outcome.host_state is not None:
        outputs.append(Output(cfg.topics.hosts, host_id, HOST_STATE, outcome.host_state,
                              _output_id("hs", inp)))
        updates = (StateUpdate(HOSTS_TABLE, host_id, outcome.state.to_record()),)
    log: dict[str, str | int | bool] = {"host_id": host_id, "trust": outcome.state.state.value,
                                        "at": str(inp.coordinates)}
    if outcome.trigger is not None:
        log["trigger"] = outcome.trigger.value
    if outcome.credential is not None:
        log["serial"] = outcome.credential["serial"]
    return Decision(tuple(outputs), updates, log)


__all__ = [
    "HOSTS_TABLE",
    "INPUT_SUBJECTS",
    "TABLES",
    "IssuerOutcome",
    "apply_identity_event",
    "apply_incident_event",
    "apply_verdict",
    "attested_pcr_map",
    "credential_id_for",
    "crl_entries",
    "decide",
    "incident_resolved",
]
