"""The incidents stage's pure core: ``decide(inp, state, cfg) -> Decision``.

Inputs (all keyed by ``host_id``, co-partitioned with the state changelogs):

* ``hostgate.Verdict`` (``attest.verdicts.v1``): FAIL (or a result this reader does not know,
  which fails closed) opens the host's incident or adds an occurrence; PASS only refreshes
  liveness and notes a pass after REMEDIATED.
* ``hostgate.IntakeRejected`` (``attest.rejections.v1``): one OCSF Detection Finding about the
  refused record (``ocsf.rejection_finding``), and nothing else: no incident, no occurrence, no
  state change (the benign reasons in ``IncidentsConfig.ignored_rejections`` not even a
  finding). A rejection names a host but does not show the host sent the record: anyone who
  can write to the request or evidence topics can have intake refuse a record naming any host
  (wrong key, copied nonce, unsigned request). An incident would make the issuer quarantine
  that host and revoke its certificate, or regress a remediated incident; so a refused record
  stays a SOC finding, and the host keeps the trust state its own verdicts gave it.
* ``hostgate.RemediationCommand`` (``attest.remediation.v1``): a lifecycle step, applied if
  ``lifecycle.check_transition`` allows it, else a ``RemediationRejected`` record on
  ``attest.incidents.v1`` with the reason; a refused command changes no state.
* ``hostgate.LivenessTick`` (``attest.remediation.v1``, produced to an explicit partition by
  ``hostgate incidents tick``): only the liveness check of its partition, with the tick's
  ``issued_at`` as "now"; no incident changes. A tick whose ``partition`` field is not the
  partition it arrived on raises ``MisroutedRecord`` (DLQ).

Outputs: ``IncidentEvent`` / ``RemediationRejected`` (Avro, ``attest.incidents.v1``), state
updates of the ``incidents`` table (``IncidentState`` per host) and the ``hosts`` table (one
``IncidentsRoster`` per partition), and OCSF findings for ``soc.findings.ocsf.v1``. The handlers
return the findings as values (``SocFinding``, in an ``IncidentsDecision``: ``assess``);
``decide`` turns each into a raw-JSON ``Output`` (``Output.raw_value``, produced as-is in the same
transaction) with its CloudEvents binary-mode headers (``ce_*`` and ``content-type:
application/json``). Each finding is validated against the OCSF schema first; one that does not
validate makes ``decide`` raise, so the input goes to the DLQ rather than an invalid finding
reaching a SIEM.

Time is never read from a clock: a verdict's ``appraised_at``, a rejection's ``rejected_at``, a
command's ``issued_at``, and for liveness the input record's Kafka timestamp (a tick's
``issued_at``).

Liveness: every input to partition *p* also checks *p*'s roster; a host whose latest verdict is
older than ``stale_after_ms`` gets one stale-host Detection Finding (again only after it was seen
since). A partition with no other traffic is checked when a ``LivenessTick`` arrives, so a
dead pipeline or a dead fleet is still noticed (``hostgate incidents tick``, a small process
beside the stage, produces one tick to every partition of ``attest.remediation.v1``, explicitly
by partition number; replaying the topics reproduces every stale finding).

``cfg`` is the frozen ``services.incidents.config.IncidentsConfig``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from services.errors import HostgateError
from services.incidents import roster as liveness
from services.incidents.cloudevents import binary_headers
from services.incidents.config import IncidentsConfig
from services.incidents.lifecycle import (
    IncidentStatus,
    InvalidTransition,
    LifecycleEvent,
    Trigger,
    check_transition,
    parse_status,
)
from services.incidents.model import (
    MAX_APPLIED_COMMANDS,
    MAX_CLOSED_INCIDENTS,
    MAX_ID,
    MAX_TEXT,
    FailedRule,
    Indicators,
    IndicatorSource,
    clip,
    coords_from_avro,
    keep_indicators,
    keep_last,
)
from services.incidents.ocsf import (
    IncidentView,
    SocFinding,
    detection_closed,
    detection_finding,
    incident_finding,
    rejection_finding,
    validate,
)
from services.incidents.roster import TABLE_HOSTS
from services.runtime.stage import Decision, InputRecord, Output, StateUpdate, StateView
from services.wire import subjects
from services.wire.coords import coordinates_record
from services.wire.ids import coordinate_parts, derived_id
from services.wire.subjects import INCIDENT_EVENT, INCIDENT_STATE, INCIDENTS_ROSTER
from services.wire.subjects import REMEDIATION_REJECTED as REJECTED
from services.wire.time import epoch_ms

VERDICT: Final = subjects.VERDICT
INTAKE_REJECTED: Final = subjects.INTAKE_REJECTED
COMMAND: Final = subjects.REMEDIATION_COMMAND
TICK: Final = subjects.LIVENESS_TICK
TABLE_INCIDENTS: Final = "incidents"
INPUT_SUBJECTS: Final = frozenset({VERDICT, INTAKE_REJECTED, COMMAND, TICK})
TABLES: Final[Mapping[str, str]] = {TABLE_INCIDENTS: INCIDENT_STATE,
                                    TABLE_HOSTS: INCIDENTS_ROSTER}
FINDING_SUBJECT: Final = "application/json"
"""What a raw finding output names as its subject (no Avro subject: it is OCSF JSON)."""
SYSTEM_ACTOR: Final = "hostgate"


class MisroutedRecord(HostgateError):
    """A record whose Kafka key is not its ``host_id``: it sits on a partition that does not
    hold that host's state, so deciding on it would fork the host's incident (goes to the DLQ)."""


@dataclass(frozen=True)
class IncidentsDecision:
    """The runtime ``Decision`` (Avro outputs, state, log) plus the OCSF findings to publish
    (``decide`` adds them to the decision as raw-JSON outputs)."""

    decision: Decision
    findings: tuple[SocFinding, ...] = ()


@dataclass(frozen=True)
class Incident:
    """One host's current (or last, if CLOSED) incident: the ``IncidentState`` record."""

    incident_id: str
    host_id: str
    status: IncidentStatus
    occurrences: int
    indicators: tuple[Indicators, ...]
    opened_at_ms: int
    updated_at_ms: int
    root_cause: str | None = None
    assignee: str | None = None
    applied_commands: tuple[str, ...] = ()
    closed_incidents: tuple[str, ...] = ()
    passed_since_remediation: bool = False

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> Incident:
        return cls(
            incident_id=str(rec["incident_id"]), host_id=str(rec["host_id"]),
            status=parse_status(str(rec["status"])), occurrences=int(rec["occurrences"]),
            indicators=tuple(Indicators.from_avro(i) for i in rec["indicators"]),
            opened_at_ms=epoch_ms(rec["opened_at"]), updated_at_ms=epoch_ms(rec["updated_at"]),
            root_cause=rec.get("root_cause"), assignee=rec.get("assignee"),
            applied_commands=tuple(rec["applied_commands"]),
            closed_incidents=tuple(rec["closed_incidents"]),
            passed_since_remediation=bool(rec["passed_since_remediation"]),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id, "host_id": self.host_id,
            "status": self.status.value, "occurrences": self.occurrences,
            "indicators": [i.to_avro() for i in self.indicators],
            "root_cause": self.root_cause, "assignee": self.assignee,
            "applied_commands": list(self.applied_commands),
            "closed_incidents": list(self.closed_incidents),
            "passed_since_remediation": self.passed_since_remediation,
            "opened_at": self.opened_at_ms, "updated_at": self.updated_at_ms,
        }

    def view(self) -> IncidentView:
        return IncidentView(self.incident_id, self.host_id, self.status, self.occurrences,
                            self.indicators, self.root_cause, self.assignee, self.opened_at_ms)


def incident_id_for(host_id: str, first_record_id: str) -> str:
    """Deterministic incident id from the host and the id of its first failing record."""
    return derived_id("inc", "incident", host_id, first_record_id, hex_chars=24, terminated=True)


def event_id_for(inp: InputRecord) -> str:
    """Deterministic id of the record produced for ``inp`` (from its coordinates)."""
    return derived_id("ie", "incident-event", *coordinate_parts(inp.coordinates), hex_chars=24,
                      terminated=True)


# -- inputs → indicators --------------------------------------------------------------------


def verdict_indicators(inp: InputRecord) -> Indicators:
    """The indicators of a failed verdict (its rules, evidence and policy, and where it is)."""
    r = inp.record
    return Indicators(
        source=IndicatorSource.VERDICT, record_id=clip(r["verdict_id"], MAX_ID),
        record=inp.coordinates,
        failed_rules=tuple(FailedRule.from_avro(x) for x in r["failed_rules"][:32]),
        evidence=coords_from_avro(r["evidence"]), evidence_digest=bytes(r["evidence_digest"]),
        observed_at_ms=epoch_ms(r["appraised_at"]),
        # An empty policy_id means none was in force (the verdict fails for that reason).
        policy_id=clip(r["policy_id"], MAX_ID) or None,
        policy_version=int(r["policy_version"]) if r["policy_id"] else None,
        policy_digest=bytes(r["policy_digest"]) if r["policy_id"] else None,
    )


def rejection_indicators(inp: InputRecord) -> Indicators:
    """The indicators of an intake rejection: one rule ``intake.<reason>`` with the detail."""
    r = inp.record
    rule = FailedRule(f"intake.{str(r['reason']).lower()}", clip(r["detail"]))
    return Indicators(
        source=IndicatorSource.INTAKE_REJECTION, record_id=clip(r["rejection_id"], MAX_ID),
        record=inp.coordinates, failed_rules=(rule,), evidence=coords_from_avro(r["source"]),
        evidence_digest=bytes(r["record_digest"]), observed_at_ms=epoch_ms(r["rejected_at"]),
    )


# -- outputs --------------------------------------------------------------------------------


def _event_output(inc: Incident, event: LifecycleEvent, inp: InputRecord, time_ms: int,
                  actor: str, note: str, command_id: str | None,
                  cfg: IncidentsConfig) -> Output:
    event_id = event_id_for(inp)
    record = {
        "event_id": event_id, "incident_id": inc.incident_id, "host_id": inc.host_id,
        "event": event.value, "status": inc.status.value, "resolved": inc.status.resolved,
        "occurrences": inc.occurrences, "indicators": inc.indicators[-1].to_avro(),
        "root_cause": inc.root_cause, "actor": actor, "note": note,
        "command_id": command_id, "opened_at": inc.opened_at_ms, "occurred_at": time_ms,
    }
    return Output(cfg.topics.incidents, inc.host_id, INCIDENT_EVENT, record, event_id)


@dataclass(frozen=True)
class _Step:
    """What one lifecycle step produced, before it becomes a decision."""

    incident: Incident
    event: LifecycleEvent
    time_ms: int
    actor: str
    note: str
    command_id: str | None = None
    findings: tuple[SocFinding, ...] = field(default=())


def _step_decision(step: _Step, inp: InputRecord, cfg: IncidentsConfig) -> IncidentsDecision:
    inc = step.incident
    out = _event_output(inc, step.event, inp, step.time_ms, step.actor, step.note,
                        step.command_id, cfg)
    view = inc.view()
    finding = incident_finding(view, step.event, out.id, step.time_ms, step.actor,
                               step.note, cfg.assignee_group, cfg.topics.incidents)
    # A closed incident resolves the Detection Finding of every occurrence it still lists.
    closed = tuple(detection_closed(inc.host_id, inc.incident_id, ind, step.time_ms, step.note)
                   for ind in view.indicators) if step.event is LifecycleEvent.CLOSED else ()
    log: dict[str, str | int | bool] = {"host_id": inc.host_id, "incident_id": inc.incident_id,
                                        "incident_event": step.event.value,
                                        "status": inc.status.value,
                                        "occurrences": inc.occurrences}
    return IncidentsDecision(
        Decision(outputs=(out,),
                 state_updates=(StateUpdate(TABLE_INCIDENTS, inc.host_id, inc.to_avro()),),
                 log=log),
        findings=(*step.findings, finding, *closed),
    )


# -- failures -------------------------------------------------------------------------------


def _current(state: StateView, host_id: str) -> Incident | None:
    rec = state.get(TABLE_INCIDENTS, host_id)
    return None if rec is None else Incident.from_avro(rec)


def on_failure(host_id: str, ind: Indicators, inp: InputRecord, state: StateView,
               cfg: IncidentsConfig) -> IncidentsDecision:
    """Open the host's incident, or add an occurrence to the open one."""
    current = _current(state, host_id)
    if current is not None and current.status is not IncidentStatus.CLOSED:
        if any(i.record_id == ind.record_id for i in current.indicators):
            return IncidentsDecision(Decision(log={"host_id": host_id, "duplicate_occurrence":
                                                   ind.record_id}))
        status, event = check_transition(current.status, Trigger.FAILURE)
        inc = replace(current, status=status, occurrences=current.occurrences + 1,
                      indicators=keep_indicators(current.indicators, ind),
                      updated_at_ms=ind.observed_at_ms, passed_since_remediation=False)
    else:
        closed = () if current is None else keep_last(current.closed_incidents,
                                                      current.incident_id, MAX_CLOSED_INCIDENTS)
        inc = Incident(incident_id_for(host_id, ind.record_id), host_id, IncidentStatus.OPEN,
                       1, (ind,), ind.observed_at_ms, ind.observed_at_ms,
                       closed_incidents=closed)
        event = LifecycleEvent.OPENED
    detection = detection_finding(host_id, inc.incident_id, ind, inc.occurrences)
    note = f"{ind.source.value.lower()} {ind.record_id}: {', '.join(ind.rule_ids[:8])}"
    step = _Step(inc, event, ind.observed_at_ms, SYSTEM_ACTOR, clip(note), None, (detection,))
    return _step_decision(step, inp, cfg)


def on_rejection(host_id: str, ind: Indicators) -> IncidentsDecision:
    """An intake rejection: a Detection Finding about the refused record, and no incident or
    state change for the host it names (module docstring)."""
    finding = rejection_finding(host_id, ind)
    return IncidentsDecision(
        Decision(log={"host_id": host_id, "intake_rejection": ind.record_id,
                      "rules": ",".join(ind.rule_ids[:8])[:200]}),
        findings=(finding,))


def on_pass(host_id: str, state: StateView) -> Decision:
    """A passing verdict: notes the pass on a REMEDIATED incident (nothing else changes)."""
    current = _current(state, host_id)
    if (current is None or current.status is not IncidentStatus.REMEDIATED
            or current.passed_since_remediation):
        return Decision(log={"host_id": host_id, "verdict": "PASS"})
    inc = replace(current, passed_since_remediation=True)
    return Decision(state_updates=(StateUpdate(TABLE_INCIDENTS, host_id, inc.to_avro()),),
                    log={"host_id": host_id, "verdict": "PASS",
                         "incident_id": inc.incident_id, "passed_since_remediation": True})


# -- commands -------------------------------------------------------------------------------


class CommandRefused(HostgateError):
    """A remediation command the stage refuses; becomes a ``RemediationRejected`` record."""

    def __init__(self, reason: str, detail: str, status: IncidentStatus | None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status


def _check_command(cmd: Mapping[str, Any], key: str | None,
                   current: Incident | None) -> tuple[Incident, Trigger]:
    """The incident the command applies to and its trigger, or ``CommandRefused``."""
    host_id, incident_id = str(cmd["host_id"]), str(cmd["incident_id"])
    status = None if current is None else current.status
    if cmd["action"] not in {t.value for t in Trigger if t is not Trigger.FAILURE}:
        raise CommandRefused("UNSUPPORTED_ACTION", f"action {cmd['action']} is not supported",
                             status)
    for name, limit in (("actor", MAX_ID), ("reason", MAX_TEXT), ("command_id", MAX_ID)):
        value = str(cmd[name])
        if not value.strip() or len(value) > limit:
            raise CommandRefused("MISSING_FIELD", f"field {name} is empty or longer than "
                                 f"{limit} characters", status)
    if key != host_id:
        raise CommandRefused("NO_SUCH_INCIDENT", f"record key {key!r} is not host_id "
                             f"{host_id!r}; publish commands keyed by host_id", None)
    if current is None or current.incident_id != incident_id:
        if current is not None and incident_id in current.closed_incidents:
            raise CommandRefused("INCIDENT_CLOSED", f"incident {incident_id} is closed",
                                 IncidentStatus.CLOSED)
        raise CommandRefused("NO_SUCH_INCIDENT", f"host {host_id} has no incident "
                             f"{incident_id}", None)
    if str(cmd["command_id"]) in current.applied_commands:
        raise CommandRefused("DUPLICATE", f"command {cmd['command_id']} was already applied",
                             status)
    if current.status is IncidentStatus.CLOSED:
        raise CommandRefused("INCIDENT_CLOSED", f"incident {incident_id} is closed", status)
    return current, Trigger(cmd["action"])


def _rejected(cmd: Mapping[str, Any], inp: InputRecord, refused: CommandRefused,
              cfg: IncidentsConfig) -> IncidentsDecision:
    record = {
        "command_id": clip(cmd["command_id"], MAX_ID), "incident_id": clip(cmd["incident_id"],
                                                                           MAX_ID),
        "host_id": clip(cmd["host_id"], MAX_ID), "action": cmd["action"],
        "reason": refused.reason, "detail": clip(refused.detail),
        "status": "UNKNOWN" if refused.status is None else refused.status.value,
        "actor": clip(cmd["actor"], MAX_ID),
        "command": coordinates_record(inp.coordinates),
        "rejected_at": epoch_ms(cmd["issued_at"]),
    }
    out = Output(cfg.topics.incidents, str(record["host_id"]), REJECTED, record,
                 event_id_for(inp))
    return IncidentsDecision(Decision(outputs=(out,), log={
        "host_id": record["host_id"], "incident_id": record["incident_id"],
        "command_rejected": refused.reason}))


def on_command(inp: InputRecord, state: StateView, cfg: IncidentsConfig) -> IncidentsDecision:
    """Apply a remediation command, or refuse it visibly with the state unchanged."""
    cmd = inp.record
    current = _current(state, str(cmd["host_id"])) if inp.key == cmd["host_id"] else None
    try:
        inc, trigger = _check_command(cmd, inp.key, current)
        status, event = check_transition(inc.status, trigger)
    except InvalidTransition as exc:
        return _rejected(cmd, inp, CommandRefused("INVALID_TRANSITION", str(exc), exc.status),
                         cfg)
    except CommandRefused as refused:
        return _rejected(cmd, inp, refused, cfg)
    actor, reason, when = clip(cmd["actor"], MAX_ID), clip(cmd["reason"]), epoch_ms(cmd["issued_at"])
    inc = replace(
        inc, status=status, updated_at_ms=when,
        applied_commands=keep_last(inc.applied_commands, str(cmd["command_id"]),
                                   MAX_APPLIED_COMMANDS),
        root_cause=reason if trigger is Trigger.ROOT_CAUSE else inc.root_cause,
        assignee=actor if trigger is Trigger.ACKNOWLEDGE else inc.assignee,
        passed_since_remediation=False if trigger is Trigger.REMEDIATE
        else inc.passed_since_remediation,
    )
    return _step_decision(_Step(inc, event, when, actor, reason, str(cmd["command_id"])),
                          inp, cfg)


# -- entry point ----------------------------------------------------------------------------


def _host_of(inp: InputRecord) -> str:
    host_id = str(inp.record["host_id"])
    if inp.key != host_id:
        raise MisroutedRecord(f"{inp.subject} at {inp.coordinates}: key {inp.key!r} is not "
                              f"host_id {host_id!r}")
    return host_id


def _merge(a: IncidentsDecision, b: Decision, findings: tuple[SocFinding, ...]) -> IncidentsDecision:
    d = a.decision
    return IncidentsDecision(
        Decision(outputs=(*d.outputs, *b.outputs),
                 state_updates=(*d.state_updates, *b.state_updates),
                 log={**d.log, **b.log}),
        findings=(*a.findings, *findings),
    )


def on_tick(inp: InputRecord, state: StateView, cfg: IncidentsConfig) -> IncidentsDecision:
    """A liveness tick: check its partition's roster with the tick's ``issued_at`` as "now"."""
    partition = inp.coordinates.partition
    if int(inp.record["partition"]) != partition:
        raise MisroutedRecord(f"{inp.subject} at {inp.coordinates}: field partition "
                              f"{inp.record['partition']} is not the partition it arrived on")
    now_ms = epoch_ms(inp.record["issued_at"])
    log: dict[str, str | int | bool] = {"liveness_tick": partition}
    if cfg.stale_after_ms <= 0:
        return IncidentsDecision(Decision(log=log))
    check = liveness.check(state, partition, now_ms, None,
                           stale_after_ms=cfg.stale_after_ms, max_hosts=cfg.max_roster,
                           source=cfg.topics.verdicts)
    return _merge(IncidentsDecision(Decision(log=log)), check.decision, check.findings)


def assess(inp: InputRecord, state: StateView, cfg: IncidentsConfig) -> IncidentsDecision:
    """Decide one input, its findings still as values (see the module docstring). Pure: same
    input and state, same result."""
    if inp.subject == TICK:
        return on_tick(inp, state, cfg)
    seen: tuple[str, int] | None = None
    if inp.subject == VERDICT:
        host_id = _host_of(inp)
        seen = (host_id, inp.timestamp_ms)  # liveness runs on Kafka timestamps only
        if inp.record["result"] == "PASS":
            result = IncidentsDecision(on_pass(host_id, state))
        else:  # FAIL, or UNKNOWN (a newer writer's result): fail closed
            result = on_failure(host_id, verdict_indicators(inp), inp, state, cfg)
    elif inp.subject == INTAKE_REJECTED:
        host_id = _host_of(inp)
        reason = str(inp.record["reason"])
        if reason in cfg.ignored_rejections:
            result = IncidentsDecision(Decision(log={"host_id": host_id,
                                                     "ignored_rejection": reason}))
        else:
            result = on_rejection(host_id, rejection_indicators(inp))
    elif inp.subject == COMMAND:
        result = on_command(inp, state, cfg)
    else:
        raise HostgateError(f"incidents: unexpected subject {inp.subject} at {inp.coordinates}")
    if cfg.stale_after_ms <= 0:
        return result
    check = liveness.check(state, inp.coordinates.partition, inp.timestamp_ms, seen,
                           stale_after_ms=cfg.stale_after_ms, max_hosts=cfg.max_roster,
                           source=cfg.topics.verdicts)
    return _merge(result, check.decision, check.findings)


def finding_output(finding: SocFinding, cfg: IncidentsConfig) -> Output:
    """A validated finding as a raw-JSON ``Output`` with its CloudEvents headers."""
    validate(finding.body)
    return Output(cfg.topics.findings, finding.host_id, FINDING_SUBJECT, {}, finding.uid,
                  headers=binary_headers(finding.cloudevent(cfg.ce_source)),
                  raw_value=finding.to_json())


def decide(inp: InputRecord, state: StateView, cfg: IncidentsConfig) -> Decision:
    """The incidents stage's ``decide``: ``assess`` with its findings turned into raw-JSON
    outputs (after the Avro ones). Pure: same input and state, same result."""
    result = assess(inp, state, cfg)
    if not result.findings:
        return result.decision
    d = result.decision
    outs = tuple(finding_output(f, cfg) for f in result.findings)
    return replace(d, outputs=(*d.outputs, *outs), log={**d.log, "ocsf_findings": len(outs)})
