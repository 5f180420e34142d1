"""The shared read-side helpers: ``jsonable`` and the group-less consumer's connection error."""

from __future__ import annotations

import datetime as dt
import json
import socket

import pytest

from services.errors import HostgateError
from services.runtime.readers import TopicUnavailable, groupless_consumer, jsonable


def test_jsonable_converts_nested_bytes_and_times() -> None:
    cest = dt.timezone(dt.timedelta(hours=2))
    value = {"digest": b"\x00\xff", "at": dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=cest),
             "events": [{"raw": b"\x01"}, 7, None], "name": "h1"}
    got = jsonable(value)
    assert got == {"digest": "00ff", "at": "2026-03-01T10:00:00.123Z",
                   "events": [{"raw": "01"}, 7, None], "name": "h1"}
    json.dumps(got)  # really JSON-friendly


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class _Mine(HostgateError):
    pass


async def test_unreachable_broker_is_one_line_error_of_the_callers_type() -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(TopicUnavailable, match=f"no Kafka broker at {bootstrap}: "):
        async with groupless_consumer(bootstrap, request_timeout_ms=2000):
            pytest.fail("a consumer without a broker must not start")
    with pytest.raises(_Mine, match=rf"^cannot reach {bootstrap} \(KafkaConnectionError\)$"):
        async with groupless_consumer(bootstrap, error=_Mine,
                                      unreachable="cannot reach {bootstrap} ({exc_type})"):
            pytest.fail("a consumer without a broker must not start")
