"""The tiny HTTP server behind /healthz, /readyz, /metrics and the CRL endpoint.

Deliberately small: the request line and headers are bounded (``MAX_REQUEST_BYTES``) and must
arrive within ``REQUEST_TIMEOUT_S``, only the methods given are served, and every connection
gets one response and is closed. What to answer is a pure function ``route(path) -> (status,
content type, body)`` supplied by the owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

MAX_REQUEST_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0
REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}

Route = Callable[[str], tuple[int, str, bytes]]


class TinyHttpServer:
    """Serves ``route`` on one port; ``port=0`` in :meth:`start` asks the OS for a free one."""

    def __init__(self, route: Route, *, methods: tuple[bytes, ...] = (b"GET",),
                 extra_headers: str = "") -> None:
        self._route = route
        self._methods = methods
        self._extra_headers = extra_headers
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  limit=MAX_REQUEST_BYTES)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) != 3 or parts[0] not in self._methods:
                allowed = " or ".join(m.decode() for m in self._methods)
                status, ctype, body = 405, "text/plain", f"{allowed} only\n".encode()
            else:
                status, ctype, body = self._route(parts[1].decode("ascii", "replace"))
                if parts[0] == b"HEAD":
                    body = b""
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        writer.write(f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\n{self._extra_headers}"
                     "Connection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
