"""What an operator's remediation command is before it becomes a ``hostgate.RemediationCommand``
Avro record, whichever way it was given: the flags of ``hostgate incidents ack|root-cause|
remediate|close`` or the JSON document a SOAR playbook sends to ``hostgate incidents command``.

Both forms end in one :class:`CommandRequest` and one :func:`remediation_record`, so they publish
the same record. The topic itself stays Avro-only (one contract): JSON is converted here, at the
CLI, and never written to ``attest.remediation.v1``.

The JSON document (:data:`COMMAND_JSON_SCHEMA`, JSON Schema 2020-12, copied in the README's "For
the SOC" section) is untrusted input: it is checked against the schema before any field is read,
and an unknown key is refused rather than ignored (a playbook that misspells ``host_id`` must not
silently have the host looked up instead).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jsonschema

from services.errors import ExitCode, HostgateError

__all__ = [
    "ACTIONS",
    "COMMAND_JSON_SCHEMA",
    "MAX_COMMAND_JSON_BYTES",
    "BadCommandJson",
    "CommandRequest",
    "parse_command_json",
    "remediation_record",
]

ACTIONS: Final = {"ack": "ACKNOWLEDGE", "root-cause": "ROOT_CAUSE", "remediate": "REMEDIATE",
                  "close": "CLOSE"}
"""Sub-command name -> ``hostgate.RemediationAction`` symbol."""

MAX_COMMAND_JSON_BYTES: Final = 64 * 1024
"""Largest JSON command document read (one command is a few hundred bytes)."""

_TEXT: Final = {"type": "string", "minLength": 1, "maxLength": 1024}
_ID: Final = {"type": "string", "minLength": 1, "maxLength": 256}

COMMAND_JSON_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:hostgate:schema:remediation-command:v1",
    "title": "hostgate remediation command",
    "type": "object",
    "properties": {
        "incident_id": _ID,
        "action": {"enum": sorted(ACTIONS.values())},
        "actor": _TEXT,
        "reason": _TEXT,
        "host_id": _ID,
        "command_id": _ID,
    },
    "required": ["incident_id", "action", "actor", "reason"],
    "additionalProperties": False,
}
"""The JSON form of a remediation command (``host_id``: default looked up on the incidents topic;
``command_id``: default a fresh ``cli-<uuid>``; a repeated one is refused by the stage as
DUPLICATE, so a retried playbook step is applied once)."""

_VALIDATOR: Final = jsonschema.Draft202012Validator(COMMAND_JSON_SCHEMA)


class BadCommandJson(HostgateError):
    """A JSON remediation command that does not parse or does not fit the schema."""

    exit_code = ExitCode.BAD_INPUT


@dataclass(frozen=True)
class CommandRequest:
    """One remediation command as given, before its id, host and time are settled."""

    incident_id: str
    action: str
    """A ``hostgate.RemediationAction`` symbol (``ACKNOWLEDGE``...)."""
    actor: str
    reason: str
    host_id: str | None = None
    command_id: str | None = None


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(document)"


def _explain(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = COMMAND_JSON_SCHEMA["properties"]
        unknown = sorted(k for k in error.instance if k not in allowed)
        return (f"unknown field {unknown[0]!r} (allowed: {', '.join(allowed)})")
    if error.validator == "required":
        return f"missing field {error.message.split(' ', 1)[0]}"
    if error.validator == "enum":
        return f"field {_where(error)}: {error.instance!r} is not one of " \
               f"{', '.join(COMMAND_JSON_SCHEMA['properties']['action']['enum'])}"
    return f"field {_where(error)}: {error.message}"


def parse_command_json(text: str, *, source: str = "JSON command") -> CommandRequest:
    """The :class:`CommandRequest` of one untrusted JSON document; ``BadCommandJson`` (one line,
    naming ``source`` and the field) when it is not JSON or does not fit
    :data:`COMMAND_JSON_SCHEMA`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadCommandJson(f"{source}: not JSON ({exc.msg} at line {exc.lineno} column "
                             f"{exc.colno})") from None
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(doc))
    if error is not None:
        raise BadCommandJson(f"{source}: {_explain(error)}")
    return CommandRequest(incident_id=doc["incident_id"], action=doc["action"],
                          actor=doc["actor"], reason=doc["reason"], host_id=doc.get("host_id"),
                          command_id=doc.get("command_id"))


def new_command_id() -> str:
    """A fresh command id, ``cli-<uuid4>``."""
    return f"cli-{uuid.uuid4()}"


def remediation_record(request: CommandRequest, *, host_id: str, issued_at_ms: int,
                       new_id: Callable[[], str] = new_command_id) -> dict[str, Any]:
    """The ``hostgate.RemediationCommand`` record for ``request`` (its own ``command_id``, else
    ``new_id()``), for the incident's host ``host_id``, issued at ``issued_at_ms``."""
    return {"command_id": request.command_id or new_id(), "incident_id": request.incident_id,
            "host_id": host_id, "action": request.action, "actor": request.actor,
            "reason": request.reason, "issued_at": issued_at_ms}
