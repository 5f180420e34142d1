"""OCSF findings for the SOC: a Detection Finding (class 2004) per failing occurrence, intake
rejection or stale host, an Incident Finding (class 2005) per incident lifecycle change;
rendering and validation.

Rendering is pure: values in, a JSON object out, times from the inputs. ``validate`` checks a
finding against the pinned schema of its class (``ocsf_schema``), the OCSF arithmetic
(``type_uid = class_uid * 100 + activity_id``), caption/id agreement, the key-material guard, and
for 2004 also ``py-ocsf-models``. hostgate-specific indicators go under ``unmapped.hostgate``;
they hold coordinates, digests, rule ids and sentences, never key material (no EK/AK public
areas, no quotes, no certificates: ``FORBIDDEN_KEYS`` is checked on every finding).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jsonschema
import pydantic
from py_ocsf_models.events.findings.detection_finding import DetectionFinding

from services.errors import HostgateError
from services.incidents.cloudevents import CloudEvent
from services.incidents.lifecycle import IncidentStatus, LifecycleEvent
from services.incidents.model import Indicators, IndicatorSource
from services.incidents.ocsf_schema import (
    DETECTION_FINDING,
    INCIDENT_FINDING,
    OCSF_SCHEMA_VERSION,
)

DETECTION_FINDING_UID: Final = 2004
INCIDENT_FINDING_UID: Final = 2005
CATEGORY_FINDINGS: Final = 2
PRODUCT: Final = {"name": "hostgate", "vendor_name": "hostgate"}
MAX_FINDING_BYTES: Final = 256 * 1024
"""A finding larger than this is a bug (all lists are bounded upstream): refused."""

ACTIVITY = {1: "Create", 2: "Update", 3: "Close"}
SEVERITY = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical",
            6: "Fatal"}
DETECTION_STATUS = {1: "New", 2: "In Progress", 3: "Suppressed", 4: "Resolved", 5: "Archived",
                    6: "Deleted"}
INCIDENT_STATUS = {1: "New", 2: "In Progress", 3: "On Hold", 4: "Resolved", 5: "Closed"}
CLASS_NAME = {DETECTION_FINDING_UID: "Detection Finding", INCIDENT_FINDING_UID: "Incident Finding"}

STATUS_ID: Final[Mapping[IncidentStatus, int]] = {
    IncidentStatus.OPEN: 1,
    IncidentStatus.ACKNOWLEDGED: 2,
    IncidentStatus.ROOT_CAUSED: 2,
    IncidentStatus.REMEDIATED: 4,
    IncidentStatus.CLOSED: 5,
}
"""hostgate status → OCSF Incident Finding ``status_id`` (New, In Progress, Resolved, Closed)."""

FORBIDDEN_KEYS: Final = frozenset({"ek_public", "ak_public", "ak_name", "ek_certificate",
                                   "quote", "signature", "private", "secret", "credential",
                                   "certificate", "key_material"})


class OcsfInvalid(HostgateError):
    """A finding that does not validate; the message names the JSON path and the rule."""


@dataclass(frozen=True)
class SocFinding:
    """One rendered OCSF finding for ``soc.findings.ocsf.v1``: the JSON body plus what its
    CloudEvents headers need. A shell serialises it with ``to_json`` (compact, sorted keys)."""

    uid: str
    host_id: str
    class_uid: int
    activity_id: int
    time_ms: int
    body: Mapping[str, Any]

    def to_json(self) -> bytes:
        return json.dumps(self.body, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    def cloudevent(self, source: str) -> CloudEvent:
        """The CloudEvents context: ``ce_id`` is the finding uid (stable across replays)."""
        kind = "detection_finding" if self.class_uid == DETECTION_FINDING_UID else "incident_finding"
        return CloudEvent(id=self.uid, source=source,
                          type=f"io.hostgate.ocsf.{kind}.{ACTIVITY[self.activity_id].lower()}",
                          time_ms=self.time_ms, subject=self.host_id,
                          dataschema=f"https://schema.ocsf.io/{OCSF_SCHEMA_VERSION}/classes/{kind}")


def _base(class_uid: int, activity_id: int, time_ms: int, severity_id: int, uid: str,
          correlation_uid: str, log_name: str) -> dict[str, Any]:
    return {
        "activity_id": activity_id, "activity_name": ACTIVITY[activity_id],
        "category_uid": CATEGORY_FINDINGS, "category_name": "Findings",
        "class_uid": class_uid, "class_name": CLASS_NAME[class_uid],
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{CLASS_NAME[class_uid]}: {ACTIVITY[activity_id]}",
        "time": time_ms, "severity_id": severity_id, "severity": SEVERITY[severity_id],
        "metadata": {"version": OCSF_SCHEMA_VERSION, "product": dict(PRODUCT), "uid": uid,
                     "correlation_uid": correlation_uid, "log_name": log_name,
                     "profiles": ["host"]},
    }


# OCSF observable type ids (dictionary.json types: resource_uid_t, file_hash_t).
OBSERVABLE_RESOURCE_UID: Final = 10
OBSERVABLE_HASH: Final = 8
MAX_OBSERVABLES: Final = 32


def device(host_id: str) -> dict[str, Any]:
    """The OCSF ``device`` (host profile) a finding is about: the attesting host, by its
    hostgate host id, which is also the name the fleet knows it by (its hardware type is not
    known here: ``type_id`` 0)."""
    return {"uid": host_id, "name": host_id, "hostname": host_id, "type_id": 0,
            "type": "Unknown"}


def _observable(name: str, type_id: int, caption: str, value: str) -> dict[str, Any]:
    return {"name": name, "type_id": type_id, "type": caption, "value": value}


def observables(host_id: str, ind: Indicators | None) -> list[dict[str, Any]]:
    """What a SIEM indexes and pivots on: the host, and the digests of the evidence, the policy
    and every offending event (each named by where it stands in the finding)."""
    out = [_observable("device.uid", OBSERVABLE_RESOURCE_UID, "Resource UID", host_id)]
    if ind is None:
        return out
    out.append(_observable("evidences.data.evidence_sha256", OBSERVABLE_HASH, "Hash",
                           ind.evidence_digest.hex()))
    if ind.policy_digest is not None:
        out.append(_observable("evidences.data.policy_sha256", OBSERVABLE_HASH, "Hash",
                               ind.policy_digest.hex()))
    out += [_observable("evidences.data.failed_rules.event.digest", OBSERVABLE_HASH, "Hash",
                        r.event.digest.hex())
            for r in ind.failed_rules if r.event is not None and r.event.digest]
    return out[:MAX_OBSERVABLES]


def evidences(host_id: str, ind: Indicators) -> list[dict[str, Any]]:
    """The evidence behind a finding, as OCSF ``evidences``: where the record and the evidence
    are (topic, partition, offset), their digests, the policy and the offending events."""
    # The device is the finding's own (``device``): py-ocsf-models' Device, unlike OCSF's,
    # requires an IP address, which hostgate does not know.
    return [{"uid": ind.record_id, "name": f"hostgate attestation record of {host_id}",
             "data": indicators_json(ind)}]


def indicators_json(ind: Indicators) -> dict[str, Any]:
    """The indicators as plain JSON (digests in hex, coordinates as ``topic[p]@offset``)."""
    return {
        "source": ind.source.value, "record_id": ind.record_id, "record": str(ind.record),
        "evidence": str(ind.evidence), "evidence_sha256": ind.evidence_digest.hex(),
        "policy_id": ind.policy_id, "policy_version": ind.policy_version,
        "policy_sha256": None if ind.policy_digest is None else ind.policy_digest.hex(),
        "failed_rules": [
            {"rule_id": r.rule_id, "sentence": r.sentence,
             "event": None if r.event is None else {
                 "pcr": r.event.pcr, "seq": r.event.seq, "bank": r.event.bank,
                 "untrusted_event_type": r.event.untrusted_event_type,
                 "event_type_name": r.event.event_type_name,
                 "digest": r.event.digest.hex(), "data_summary": r.event.data_summary}}
            for r in ind.failed_rules
        ],
        "observed_at": ind.observed_at_ms,
    }


def detection_uid(ind: Indicators) -> str:
    """Deterministic Detection Finding uid: one per failing record."""
    return f"det-{ind.record_id}"


def _occurrence_title(host_id: str, ind: Indicators) -> str:
    what = ("failed attestation" if ind.source is IndicatorSource.VERDICT
            else "was refused at intake")
    rules = ", ".join(ind.rule_ids[:8]) or "no rule named"
    return f"host {host_id} {what}: {rules}"[:512]


def detection_finding(host_id: str, incident_id: str, ind: Indicators,
                      occurrence: int) -> SocFinding:
    """The Detection Finding (2004, Create) for one failing occurrence of ``incident_id``."""
    uid = detection_uid(ind)
    severity = 4 if ind.source is IndicatorSource.VERDICT else 3
    log_name = ind.record.topic
    body = _base(DETECTION_FINDING_UID, 1, ind.observed_at_ms, severity, uid, incident_id,
                 log_name)
    body.update({
        "status_id": 1, "status": DETECTION_STATUS[1], "is_alert": True, "confidence_id": 3,
        "message": _occurrence_title(host_id, ind), "count": occurrence,
        "finding_info": {
            "uid": uid, "title": _occurrence_title(host_id, ind),
            "types": ["TPM attestation failure" if ind.source is IndicatorSource.VERDICT
                      else "TPM attestation intake rejection"],
            "analytic": {"name": "hostgate attestation policy"
                         if ind.source is IndicatorSource.VERDICT else "hostgate intake",
                         "uid": ind.policy_id or "hostgate.intake", "type_id": 1,
                         "type": "Rule"},
            "created_time": ind.observed_at_ms,
            "data_sources": [ind.evidence.topic],
        },
        "device": device(host_id), "observables": observables(host_id, ind),
        "evidences": evidences(host_id, ind),
        "unmapped": {"hostgate": {"incident_id": incident_id, "host_id": host_id,
                                  "occurrence": occurrence}},
    })
    return SocFinding(uid, host_id, DETECTION_FINDING_UID, 1, ind.observed_at_ms, body)


def detection_closed(host_id: str, incident_id: str, ind: Indicators, time_ms: int,
                     note: str) -> SocFinding:
    """The Detection Finding (2004, Close) that resolves one occurrence's finding when its
    incident closes: same uid, so a SIEM's case closes with hostgate's."""
    uid = detection_uid(ind)
    title = _occurrence_title(host_id, ind)
    body = _base(DETECTION_FINDING_UID, 3, time_ms, 4 if ind.source is IndicatorSource.VERDICT
                 else 3, uid, incident_id, ind.record.topic)
    body.update({
        "status_id": 4, "status": DETECTION_STATUS[4], "is_alert": False, "confidence_id": 3,
        "message": f"{title}: resolved with incident {incident_id}"[:1024],
        "comment": note or "-",
        "start_time": ind.observed_at_ms, "end_time": time_ms,
        "finding_info": {
            "uid": uid, "title": title, "created_time": ind.observed_at_ms,
            "last_seen_time": ind.observed_at_ms, "data_sources": [ind.evidence.topic],
        },
        "device": device(host_id), "observables": observables(host_id, ind),
        "evidences": evidences(host_id, ind),
        "unmapped": {"hostgate": {"incident_id": incident_id, "host_id": host_id}},
    })
    return SocFinding(uid, host_id, DETECTION_FINDING_UID, 3, time_ms, body)


def rejection_finding(host_id: str, ind: Indicators) -> SocFinding:
    """The Detection Finding (2004, Create) for one intake rejection of a record naming
    ``host_id``. It belongs to no incident and says so: anyone who can write to the request or
    evidence topics can make intake refuse a record naming any host, so the rejection tells the
    SOC about the *record* (what was refused, where it is, why) and nothing about the host's
    trust. Correlated per named host (``intake-<host>``) so a flood reads as one story."""
    uid = detection_uid(ind)
    rules = ", ".join(ind.rule_ids[:8]) or "no rule named"
    title = f"a record naming host {host_id} was refused at intake: {rules}"[:512]
    body = _base(DETECTION_FINDING_UID, 1, ind.observed_at_ms, 3, uid, f"intake-{host_id}",
                 ind.record.topic)
    body.update({
        "status_id": 1, "status": DETECTION_STATUS[1], "is_alert": True, "confidence_id": 1,
        "message": title,
        "finding_info": {
            "uid": uid, "title": title, "types": ["TPM attestation intake rejection"],
            "desc": "Intake refused a record that names this host. The record is not shown to "
                    "come from the host, so the host's trust state and incidents are unchanged.",
            "analytic": {"name": "hostgate intake", "uid": "hostgate.intake", "type_id": 1,
                         "type": "Rule"},
            "created_time": ind.observed_at_ms,
            "data_sources": [ind.evidence.topic],
        },
        "device": device(host_id), "observables": observables(host_id, ind),
        "evidences": evidences(host_id, ind),
        "unmapped": {"hostgate": {"incident_id": None, "host_id": host_id,
                                  "trust_state_changed": False}},
    })
    return SocFinding(uid, host_id, DETECTION_FINDING_UID, 1, ind.observed_at_ms, body)


def stale_host_finding(host_id: str, last_seen_ms: int, now_ms: int, window_ms: int,
                       source: str) -> SocFinding:
    """A liveness Detection Finding: ``host_id`` has not attested for more than ``window_ms``
    (``source``: the deployment's verdict topic, namespace included)."""
    uid = f"stale-{host_id}-{last_seen_ms}"
    title = f"host {host_id} has not attested for over {window_ms // 1000} s"
    body = _base(DETECTION_FINDING_UID, 1, now_ms, 3, uid, f"liveness-{host_id}", source)
    body.update({
        "status_id": 1, "status": DETECTION_STATUS[1], "is_alert": True, "confidence_id": 2,
        "message": title, "start_time": last_seen_ms, "end_time": now_ms,
        "finding_info": {
            "uid": uid, "title": title, "types": ["TPM attestation liveness"],
            "analytic": {"name": "hostgate liveness", "uid": "hostgate.liveness.stale",
                         "type_id": 1, "type": "Rule"},
            "created_time": now_ms, "last_seen_time": last_seen_ms,
            "data_sources": [source],
        },
        "device": device(host_id), "observables": observables(host_id, None),
        "unmapped": {"hostgate": {"host_id": host_id, "last_seen_at": last_seen_ms,
                                  "window_ms": window_ms}},
    })
    return SocFinding(uid, host_id, DETECTION_FINDING_UID, 1, now_ms, body)


@dataclass(frozen=True)
class IncidentView:
    """What an Incident Finding shows of an incident, after a lifecycle event."""

    incident_id: str
    host_id: str
    status: IncidentStatus
    occurrences: int
    indicators: Sequence[Indicators]
    root_cause: str | None
    assignee: str | None
    opened_at_ms: int


def incident_finding(view: IncidentView, event: LifecycleEvent, event_id: str, time_ms: int,
                     actor: str, note: str, assignee_group: str, log_name: str) -> SocFinding:
    """The Incident Finding (2005) for one lifecycle ``event`` of an incident: Create when it
    opens, Close when it closes, Update otherwise. ``event_id`` makes the finding uid unique;
    ``log_name`` is the deployment's incident topic."""
    activity = {LifecycleEvent.OPENED: 1, LifecycleEvent.CLOSED: 3}.get(event, 2)
    status_id = STATUS_ID[view.status]
    uid = f"{view.incident_id}-{event_id}"
    desc = f"hostgate incident for host {view.host_id}: {event.value.lower()} by {actor}"
    body = _base(INCIDENT_FINDING_UID, activity, time_ms, 4, uid, view.incident_id, log_name)
    latest = view.indicators[-1] if view.indicators else None
    body.update({
        "status_id": status_id, "status": INCIDENT_STATUS[status_id],
        "message": f"{desc}: {note}"[:1024], "desc": desc[:1024], "comment": note or "-",
        "priority_id": 3, "impact_id": 3, "is_suspected_breach": True,
        "start_time": view.opened_at_ms, "end_time": time_ms, "count": view.occurrences,
        "assignee_group": {"name": assignee_group},
        "device": device(view.host_id), "observables": observables(view.host_id, latest),
        "finding_info_list": [
            {"uid": detection_uid(ind), "title": _occurrence_title(view.host_id, ind),
             "created_time": ind.observed_at_ms} for ind in view.indicators
        ],
        "unmapped": {"hostgate": {
            "incident_id": view.incident_id, "host_id": view.host_id,
            "lifecycle_event": event.value, "status": view.status.value,
            "resolved": view.status.resolved, "occurrences": view.occurrences,
            "root_cause": view.root_cause, "actor": actor,
            "latest_indicators": indicators_json(latest) if latest is not None else None,
        }},
    })
    if view.assignee:
        body["assignee"] = {"name": view.assignee, "uid": view.assignee}
    return SocFinding(uid, view.host_id, INCIDENT_FINDING_UID, activity, time_ms, body)


def _forbidden_keys(node: object, path: str, depth: int = 0) -> str | None:
    if depth > 32:
        return f"{path} (nesting deeper than 32)"
    if isinstance(node, Mapping):
        for k, v in node.items():
            if str(k).lower() in FORBIDDEN_KEYS:
                return f"{path}.{k}"
            found = _forbidden_keys(v, f"{path}.{k}", depth + 1)
            if found:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _forbidden_keys(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


_VALIDATORS = {
    DETECTION_FINDING_UID: jsonschema.Draft202012Validator(DETECTION_FINDING),
    INCIDENT_FINDING_UID: jsonschema.Draft202012Validator(INCIDENT_FINDING),
}


def validate(body: Mapping[str, Any]) -> None:
    """Raise ``OcsfInvalid`` unless ``body`` is a valid OCSF 2004 or 2005 finding as hostgate
    emits it (see the module docstring for what is checked)."""
    raw_class = body.get("class_uid")
    validator = _VALIDATORS.get(raw_class) if isinstance(raw_class, int) else None
    if validator is None or not isinstance(raw_class, int):
        raise OcsfInvalid(f"$.class_uid: {raw_class!r} is not 2004 or 2005")
    class_uid: int = raw_class
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is not None:
        if error.validator in ("anyOf", "oneOf"):  # its message would repeat the instance
            detail = f"matches none of {json.dumps(error.validator_value)[:300]}"
        else:
            detail = error.message[:300]
        raise OcsfInvalid(f"{error.json_path}: {detail}")
    activity = body["activity_id"]
    if body["type_uid"] != class_uid * 100 + activity:
        raise OcsfInvalid(f"$.type_uid: {body['type_uid']} != class_uid*100 + activity_id "
                          f"({class_uid * 100 + activity})")
    captions = INCIDENT_STATUS if class_uid == INCIDENT_FINDING_UID else DETECTION_STATUS
    for id_key, name_key, table in (("activity_id", "activity_name", ACTIVITY),
                                    ("severity_id", "severity", SEVERITY),
                                    ("status_id", "status", captions)):
        if name_key in body and body.get(id_key) in table and body[name_key] != table[body[id_key]]:
            raise OcsfInvalid(f"$.{name_key}: {body[name_key]!r} does not match "
                              f"{id_key}={body[id_key]} ({table[body[id_key]]!r})")
    found = _forbidden_keys(body, "$")
    if found:
        raise OcsfInvalid(f"{found}: key material or a key-material field in a finding")
    if len(json.dumps(body)) > MAX_FINDING_BYTES:
        raise OcsfInvalid(f"$: larger than {MAX_FINDING_BYTES} bytes")
    if class_uid == DETECTION_FINDING_UID:
        try:
            DetectionFinding.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            loc = "$." + ".".join(str(p) for p in first["loc"])
            raise OcsfInvalid(f"{loc}: {first['msg']} (py-ocsf-models)") from None
