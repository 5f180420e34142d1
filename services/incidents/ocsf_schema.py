"""Pinned JSON Schemas (Draft 2020-12) for the two OCSF classes hostgate emits, derived by hand
from ocsf/ocsf-schema v1.8.0 (``events/base_event.json``, ``events/findings/finding.json``,
``detection_finding.json``, ``incident_finding.json``, ``objects/{metadata,product,
finding_info,analytic,group,user}.json``).

Why pinned and hand-derived: ``py-ocsf-models`` 0.10.0 (OCSF 1.5.0) has a Detection Finding
model but no Incident Finding (class 2005) at all, and ``ocsf-lib`` ships no schema (it fetches
one from schema.ocsf.io or compiles a checkout of the schema repository at run time, which a
worker must not depend on). So 2005 is checked against this file, and 2004 against both this
file and ``py-ocsf-models``.

Deliberate narrowing: the top level and hostgate-built objects forbid unknown attributes
(``additionalProperties: false``), so a misspelled attribute fails instead of slipping through
to a SIEM; hostgate-specific data goes under ``unmapped``, as OCSF intends. Arithmetic
constraints (``type_uid = class_uid * 100 + activity_id``) and caption/id agreement are checked
in ``services.incidents.ocsf.validate``.
"""

from __future__ import annotations

from typing import Any, Final

OCSF_SCHEMA_VERSION: Final = "1.8.0"

_INT = {"type": "integer"}
_STR = {"type": "string", "minLength": 1, "maxLength": 4096}
_TIME = {"type": "integer", "minimum": 0}

_PRODUCT = {
    "type": "object",
    "required": ["name", "vendor_name"],
    "properties": {"name": _STR, "vendor_name": _STR, "version": _STR, "uid": _STR},
    "additionalProperties": False,
}
_METADATA = {
    "type": "object",
    "required": ["product", "version"],
    "properties": {
        "product": _PRODUCT,
        "version": {"const": OCSF_SCHEMA_VERSION},
        "uid": _STR,
        "correlation_uid": _STR,
        "log_name": _STR,
        "event_code": _STR,
        "profiles": {"type": "array", "items": {"enum": ["host"]}, "maxItems": 4},
    },
    "additionalProperties": False,
}
_ANALYTIC = {
    "type": "object",
    "required": ["type_id"],
    "properties": {
        "name": _STR, "uid": _STR, "type": _STR, "desc": _STR,
        "type_id": {"enum": [0, 1, 2, 3, 4, 5, 6, 99]},
    },
    "additionalProperties": False,
}
_FINDING_INFO = {
    "type": "object",
    "required": ["uid", "title"],
    "properties": {
        "uid": _STR, "title": _STR, "desc": _STR,
        "types": {"type": "array", "items": _STR, "maxItems": 64},
        "analytic": _ANALYTIC,
        "created_time": _TIME, "first_seen_time": _TIME, "last_seen_time": _TIME,
        "data_sources": {"type": "array", "items": _STR, "maxItems": 16},
    },
    "additionalProperties": False,
}
_NAMED = {  # OCSF group / user objects, as hostgate fills them
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STR, "uid": _STR},
    "additionalProperties": False,
}
_RESOURCE = {
    "type": "object",
    "required": ["uid"],
    "properties": {"uid": _STR, "name": _STR, "type": _STR},
    "additionalProperties": False,
}
_DEVICE = {  # objects/device.json (extends endpoint: at least one of uid, name, hostname...)
    "type": "object",
    "required": ["type_id"],
    "properties": {"uid": _STR, "name": _STR, "hostname": _STR, "type": _STR,
                   "type_id": {"enum": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                        99]}},
    "anyOf": [{"required": ["uid"]}, {"required": ["name"]}, {"required": ["hostname"]}],
    "additionalProperties": False,
}
_OBSERVABLE = {  # objects/observable.json
    "type": "object",
    "required": ["type_id"],
    "properties": {"name": _STR, "type": _STR, "value": _STR, "type_id": _INT},
    "additionalProperties": False,
}
_EVIDENCE = {  # objects/evidences.json: at least one of its artifacts (here device and data)
    "type": "object",
    "properties": {"uid": _STR, "name": _STR, "device": _DEVICE, "data": {"type": "object"}},
    "anyOf": [{"required": ["device"]}, {"required": ["data"]}],
    "additionalProperties": False,
}
_SEVERITY_ID = {"enum": [0, 1, 2, 3, 4, 5, 6, 99]}
_ACTIVITY_ID = {"enum": [0, 1, 2, 3, 99]}

_BASE_PROPERTIES: dict[str, Any] = {
    "activity_id": _ACTIVITY_ID,
    "activity_name": _STR,
    "category_uid": {"const": 2},
    "category_name": {"const": "Findings"},
    "class_name": _STR,
    "type_name": _STR,
    "type_uid": _INT,
    "time": _TIME,
    "severity_id": _SEVERITY_ID,
    "severity": _STR,
    "status": _STR,
    "message": _STR,
    "metadata": _METADATA,
    "start_time": _TIME,
    "end_time": _TIME,
    "count": {"type": "integer", "minimum": 0},
    "confidence_id": {"enum": [0, 1, 2, 3, 99]},
    "comment": _STR,
    "device": _DEVICE,
    "observables": {"type": "array", "items": _OBSERVABLE, "maxItems": 32},
    "unmapped": {"type": "object"},
}
_BASE_REQUIRED = ["activity_id", "category_uid", "class_uid", "type_uid", "time",
                  "severity_id", "metadata"]

DETECTION_FINDING: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": f"OCSF {OCSF_SCHEMA_VERSION} Detection Finding (2004), as hostgate emits it",
    "type": "object",
    "required": [*_BASE_REQUIRED, "finding_info", "device", "observables"],
    "properties": {
        **_BASE_PROPERTIES,
        "class_uid": {"const": 2004},
        "finding_info": _FINDING_INFO,
        "status_id": {"enum": [0, 1, 2, 3, 4, 5, 6, 99]},
        "is_alert": {"type": "boolean"},
        "resources": {"type": "array", "items": _RESOURCE, "minItems": 1, "maxItems": 16},
        "evidences": {"type": "array", "items": _EVIDENCE, "minItems": 1, "maxItems": 16},
    },
    "additionalProperties": False,
}

INCIDENT_FINDING: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": f"OCSF {OCSF_SCHEMA_VERSION} Incident Finding (2005), as hostgate emits it",
    "type": "object",
    "required": [*_BASE_REQUIRED, "finding_info_list", "status_id", "device", "observables"],
    "properties": {
        **_BASE_PROPERTIES,
        "class_uid": {"const": 2005},
        "finding_info_list": {"type": "array", "items": _FINDING_INFO, "minItems": 1,
                              "maxItems": 64},
        "status_id": {"enum": [0, 1, 2, 3, 4, 5, 99]},
        "desc": _STR,
        "assignee": _NAMED,
        "assignee_group": _NAMED,
        "priority_id": {"enum": [0, 1, 2, 3, 4, 99]},
        "impact_id": {"enum": [0, 1, 2, 3, 4, 99]},
        "is_suspected_breach": {"type": "boolean"},
    },
    # incident_finding.json "constraints": {"at_least_one": ["assignee", "assignee_group"]}
    "anyOf": [{"required": ["assignee"]}, {"required": ["assignee_group"]}],
    "additionalProperties": False,
}
