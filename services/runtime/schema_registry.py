"""A minimal client for a Confluent-compatible Schema Registry (REST API v1), standard library only.

Only what the codec needs:

* ``register(subject, schema_text) -> id``: ``POST /subjects/{subject}/versions``
  (idempotent on the registry side: an already registered schema returns its existing id);
* ``schema_by_id(id) -> parsed schema``: ``GET /schemas/ids/{id}``.

Subjects are the record full names (Confluent's ``RecordNameStrategy``), because one topic
carries several record types. Answers are cached (ids are immutable in a registry). Responses
are size-bounded and parsed defensively: the registry is a network peer, not part of us.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

from fastavro import parse_schema

from services.runtime.codec_errors import RegistryUnavailable, UnknownSchema

MAX_RESPONSE_BYTES: Final = 1024 * 1024
CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"


class RegistryClient:
    """Talks to one registry at ``base_url`` (``http://host:8081``)."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RegistryUnavailable(f"registry URL {base_url!r} is not http(s)://host[:port]")
        self._base = base_url.rstrip("/")
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}

    def register(self, subject: str, schema_text: str) -> int:
        """The registry's id for ``schema_text`` under ``subject``, registering it if new."""
        key = (subject, schema_text)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        answer = self._request("POST", path, {"schema": schema_text})
        schema_id = answer.get("id")
        if not isinstance(schema_id, int) or isinstance(schema_id, bool) or schema_id < 0:
            raise RegistryUnavailable(f"registry answered {path} without an integer id")
        with self._lock:
            self._ids[key] = schema_id
        return schema_id

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The parsed (fastavro) schema registered under ``schema_id``."""
        with self._lock:
            if schema_id in self._schemas:
                return self._schemas[schema_id]
        path = f"/schemas/ids/{schema_id}"
        answer = self._request("GET", path, None, not_found_is_unknown=True)
        text = answer.get("schema")
        schema_type = answer.get("schemaType", "AVRO")
        if schema_type != "AVRO" or not isinstance(text, str):
            raise UnknownSchema(f"registry schema id {schema_id} is not an Avro schema")
        try:
            parsed = parse_schema(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise UnknownSchema(f"registry schema id {schema_id} does not parse: {exc}") from exc
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise UnknownSchema(f"registry schema id {schema_id} is not a record schema")
        with self._lock:
            self._schemas[schema_id] = parsed
        return parsed

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        not_found_is_unknown: bool = False,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self._base + path,
            data=data,
            method=method,
            headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and not_found_is_unknown:
                raise UnknownSchema(f"registry has no {path}") from exc
            raise RegistryUnavailable(f"registry {method} {path}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise RegistryUnavailable(f"registry {method} {path}: {exc}") from exc
        if len(raw) > MAX_RESPONSE_BYTES:
            raise RegistryUnavailable(f"registry {method} {path}: response over 1 MiB")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise RegistryUnavailable(f"registry {method} {path}: not JSON") from exc
        if not isinstance(answer, dict):
            raise RegistryUnavailable(f"registry {method} {path}: not a JSON object")
        return answer
