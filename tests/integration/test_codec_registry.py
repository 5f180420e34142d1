"""The codec against a schema registry over real HTTP.

No Confluent Schema Registry or Karapace can be installed here (see ../shared/notes/kafka.md),
so this runs a small stand-in over a real socket that implements only the two endpoints the
client uses, with the Confluent REST API's semantics: ids are global and assigned on first
registration, registering the same schema text again returns the same id, unknown ids answer
404 with error_code 40403. The stand-in deliberately assigns ids different from registry.json,
so the test shows the codec uses the registry's ids when one is configured.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.runtime.codec import RegistryUnavailable, UnknownSchema
from tests.support.eostest import eostest_codec

RECORD = {"key": "host-1", "seq": 41}
SUBJECT = "hostgate.test.TestInput"


class _RegistryStandIn(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        self.next_id = 5000


class _Handler(BaseHTTPRequestHandler):
    server: _RegistryStandIn

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        self.server.requests.append(("POST", self.path))
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
            self._answer(404, {"error_code": 404, "message": "not found"})
            return
        text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
        known = [i for i, t in self.server.schemas.items() if t == text]
        if known:
            schema_id = known[0]
        else:
            schema_id = self.server.next_id
            self.server.next_id += 7
            self.server.schemas[schema_id] = text
        self.server.subjects.setdefault(parts[1], []).append(schema_id)
        self._answer(200, {"id": schema_id})

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
            text = self.server.schemas.get(int(parts[2]))
            if text is not None:
                self._answer(200, {"schema": text})
                return
        self._answer(404, {"error_code": 40403, "message": "Schema not found"})


@pytest.fixture
def registry() -> Iterator[_RegistryStandIn]:
    server = _RegistryStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _url(server: _RegistryStandIn) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def test_encode_registers_and_frames_with_the_registry_id(registry: _RegistryStandIn) -> None:
    codec = eostest_codec(registry_url=_url(registry))
    assert codec.framing == "confluent"
    value = codec.encode(SUBJECT, RECORD)
    assert value[:5] == b"\x00" + struct.pack(">I", 5000)
    assert registry.subjects == {SUBJECT: [5000]}
    # The id is cached: a second encode does not ask again.
    codec.encode(SUBJECT, {"key": "host-2", "seq": 1})
    assert [r for r in registry.requests if r[0] == "POST"] == [
        ("POST", f"/subjects/{SUBJECT}/versions")
    ]
    # A fresh reader looks the id up and maps it to the local schema by fingerprint.
    reader = eostest_codec(registry_url=_url(registry))
    decoded = reader.decode(value, expected={SUBJECT})
    assert (decoded.subject, decoded.record) == (SUBJECT, RECORD)
    assert ("GET", "/schemas/ids/5000") in registry.requests


def test_registry_reader_also_reads_single_object_values(registry: _RegistryStandIn) -> None:
    value = eostest_codec().encode(SUBJECT, RECORD)
    assert eostest_codec(registry_url=_url(registry)).decode(value).record == RECORD
    assert registry.requests == []


def test_unknown_registry_id_is_unknown_schema(registry: _RegistryStandIn) -> None:
    reader = eostest_codec(registry_url=_url(registry))
    with pytest.raises(UnknownSchema, match="registry has no /schemas/ids/77"):
        reader.decode(b"\x00" + struct.pack(">I", 77) + b"\x00")


def test_registry_schema_not_in_schemas_dir_is_unknown(registry: _RegistryStandIn) -> None:
    foreign = {"type": "record", "name": "other.Thing", "fields": [{"name": "a", "type": "int"}]}
    registry.schemas[9] = json.dumps(foreign)
    reader = eostest_codec(registry_url=_url(registry))
    with pytest.raises(UnknownSchema, match="schema id 9 from the registry is not any version"):
        reader.decode(b"\x00" + struct.pack(">I", 9) + b"\x02")


def test_unreachable_registry_is_retriable(registry: _RegistryStandIn) -> None:
    url = _url(registry)
    registry.shutdown()
    registry.server_close()
    codec = eostest_codec(registry_url=url, registry_timeout_s=2.0)
    with pytest.raises(RegistryUnavailable, match="registry POST") as info:
        codec.encode(SUBJECT, RECORD)
    assert info.value.retriable is True


def test_bad_registry_url() -> None:
    with pytest.raises(RegistryUnavailable, match="is not http"):
        eostest_codec(registry_url="ftp://example")


def test_timestamps_survive_the_confluent_path(registry: _RegistryStandIn) -> None:
    codec = eostest_codec(registry_url=_url(registry))
    record = {"key": "k", "count": 3}
    assert codec.decode(codec.encode("hostgate.test.TestCounter", record)).record == record
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=dt.UTC)
    used = {
        "nonce": b"n" * 32,
        "host_id": "h",
        "challenge_id": "c",
        "evidence": {"topic": "attest.evidence.v1", "partition": 2, "offset": 99},
        "used_at": when,
        "expires_at": when + dt.timedelta(minutes=2),
    }
    assert codec.decode(codec.encode("hostgate.UsedNonce", used)).record == used
