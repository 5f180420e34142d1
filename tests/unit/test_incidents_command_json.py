"""Issue 18, item 3: a SOAR playbook sends a remediation command as JSON
(``hostgate incidents command --json-file FILE|-``); the CLI publishes exactly the Avro record the
flag form would. Nothing here needs Kafka: the document is read and checked before the broker is
asked anything, and the record comparison stops at the encoded bytes."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from services.cli import build_parser, main
from services.errors import ExitCode
from services.incidents.cli import command_request
from services.incidents.commands import COMMAND_JSON_SCHEMA, remediation_record
from services.runtime.codec import Codec
from services.wire import subjects

ROOT = Path(__file__).parents[2]
NO_BROKER = "127.0.0.1:1"
ISSUED_AT = 1_760_000_000_000


def _encoded(argv: list[str]) -> bytes:
    request = command_request(build_parser().parse_args(argv))
    record = remediation_record(request, host_id=request.host_id or "", issued_at_ms=ISSUED_AT,
                                new_id=lambda: "cli-fixed")
    return Codec.load().encode(subjects.REMEDIATION_COMMAND, record)


def _doc_file(tmp_path: Path, doc: Any) -> str:
    path = tmp_path / "command.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize(("sub", "action"), [("ack", "ACKNOWLEDGE"),
                                             ("root-cause", "ROOT_CAUSE"),
                                             ("remediate", "REMEDIATE"), ("close", "CLOSE")])
def test_json_and_flags_publish_the_same_record(sub: str, action: str, tmp_path: Path) -> None:
    flags = _encoded(["incidents", sub, "INC-7", "--actor", "alice", "--reason",
                      "debug build of grub shipped", "--host", "web-1"])
    doc = {"incident_id": "INC-7", "action": action, "actor": "alice",
           "reason": "debug build of grub shipped", "host_id": "web-1"}
    assert _encoded(["incidents", "command", "--json-file", _doc_file(tmp_path, doc)]) == flags
    decoded = Codec.load().decode(flags)
    assert decoded.subject == subjects.REMEDIATION_COMMAND
    assert decoded.record["action"] == action and decoded.record["command_id"] == "cli-fixed"


def test_a_playbooks_command_id_is_kept(tmp_path: Path) -> None:
    doc = {"incident_id": "INC-7", "action": "CLOSE", "actor": "soar", "reason": "PM-17",
           "host_id": "web-1", "command_id": "playbook-42-step-3"}
    args = build_parser().parse_args(["incidents", "command", "--json-file",
                                      _doc_file(tmp_path, doc)])
    record = remediation_record(command_request(args), host_id="web-1", issued_at_ms=ISSUED_AT)
    assert record["command_id"] == "playbook-42-step-3"


def test_the_document_can_come_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"incident_id": "INC-7", "action": "ACKNOWLEDGE", "actor": "soar", "reason": "taking it"}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(doc).encode())))
    request = command_request(build_parser().parse_args(
        ["incidents", "command", "--json-file", "-"]))
    assert (request.incident_id, request.action, request.host_id) == ("INC-7", "ACKNOWLEDGE",
                                                                      None)


_GOOD = {"incident_id": "INC-7", "action": "ACKNOWLEDGE", "actor": "soar", "reason": "taking it"}


@pytest.mark.parametrize(("doc", "message"), [
    ({**_GOOD, "hostid": "web-1"},
     "unknown field 'hostid' (allowed: incident_id, action, actor, reason, host_id, command_id)"),
    ({k: v for k, v in _GOOD.items() if k != "actor"}, "missing field 'actor'"),
    ({**_GOOD, "action": "ack"},
     "field action: 'ack' is not one of ACKNOWLEDGE, CLOSE, REMEDIATE, ROOT_CAUSE"),
    ({**_GOOD, "reason": ""}, "field reason: '' should be non-empty"),
    ({**_GOOD, "actor": 7}, "field actor: 7 is not of type 'string'"),
    (["INC-7"], "field (document): ['INC-7'] is not of type 'object'"),
])
def test_a_bad_document_is_refused_in_one_line_naming_the_field(
        doc: Any, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _doc_file(tmp_path, doc)
    argv = ["incidents", "command", "--json-file", path, "--bootstrap", NO_BROKER]
    assert main(argv) == ExitCode.BAD_INPUT
    assert capsys.readouterr().err.splitlines() == [f"hostgate: error: {path}: {message}"]
    assert main([*argv, "--json"]) == ExitCode.BAD_INPUT
    out = json.loads(capsys.readouterr().out)
    assert out["error"] == {"type": "BadCommandJson", "message": f"{path}: {message}"}


def test_not_json_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "command.json"
    path.write_text("incident_id: INC-7\n")
    assert main(["incidents", "command", "--json-file", str(path)]) == ExitCode.BAD_INPUT
    assert capsys.readouterr().err.splitlines() == [
        f"hostgate: error: {path}: not JSON (Expecting value at line 1 column 1)"]


def test_the_readme_documents_the_schema_the_cli_checks() -> None:
    readme = (ROOT / "README.md").read_text()
    soc = readme[readme.index("## For the SOC"):readme.index("## Audit replay")]
    block = re.search(r"```json\n(.*?)```", soc, re.S)
    assert block is not None, "no JSON Schema block in For the SOC"
    documented = json.loads(block.group(1))
    assert documented == COMMAND_JSON_SCHEMA
    jsonschema.Draft202012Validator.check_schema(documented)
