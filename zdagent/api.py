"""The daemon's control API: HTTP/1.1 + JSON on a unix socket (mode 0660, never 0666).

    GET  /v1/status                      the daemon and every app's watchdog
    GET  /v1/apps/<app>/status           one app (the same JSON as `zdagent status --json`)
    GET  /v1/apps/<app>/history?limit=N
    POST /v1/apps/<app>/deploy   {"version": "v2"}     streams NDJSON events, then a result
    POST /v1/apps/<app>/rollback {"to": null | "v1"}   same

A streamed reply is ``application/x-ndjson``: one event per line, the last line being
``{"result": …}`` or ``{"error": {"message", "hint", "exit_code"}}``. Requests are small and
validated strictly; the server never runs anything but the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 4096
ROUTE = re.compile(r"^/v1/apps/([a-z0-9][a-z0-9-]{0,39})/(status|history|deploy|rollback)$")
DEFAULT_SOCKET = Path("/run/zdagent/zdagent.sock")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.exit_code = exit_code


Reply = dict[str, Any] | AsyncIterator[dict[str, Any]]
Handler = Callable[[Request], Awaitable[Reply]]


async def read_request(reader: asyncio.StreamReader) -> Request:
    line = (await reader.readline()).decode("latin-1").strip()
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] not in ("GET", "POST"):
        raise ApiError(400, "bad request line")
    headers: dict[str, str] = {}
    for _ in range(50):
        h = (await reader.readline()).decode("latin-1").strip()
        if not h:
            break
        name, _, value = h.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY:
        raise ApiError(413, "request body too large")
    raw = await reader.readexactly(length) if length else b""
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise ApiError(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    url = urlsplit(parts[1])
    return Request(parts[0], url.path, parse_qs(url.query), body)


def _head(status: int, content_type: str) -> bytes:
    reason = http.client.responses.get(status, "")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            "Connection: close\r\n\r\n").encode()


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           handler: Handler) -> None:
    """One request per connection; JSON or a stream of NDJSON lines; then close."""
    try:
        try:
            request = await read_request(reader)
            reply = await handler(request)
        except ApiError as e:
            writer.write(_head(e.status, "application/json") + json.dumps(
                {"error": {"message": e.message, "hint": "", "exit_code": e.exit_code}}
            ).encode() + b"\n")
            return
        if isinstance(reply, dict):
            writer.write(_head(200, "application/json") + json.dumps(reply).encode() + b"\n")
            return
        writer.write(_head(200, "application/x-ndjson"))
        async for item in reply:
            writer.write(json.dumps(item).encode() + b"\n")
            # If the client left, the operation itself still goes on to the end.
            with contextlib.suppress(ConnectionError):
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


class Client:
    """The CLI's side: plain requests and streamed NDJSON, over the unix socket."""

    def __init__(self, path: Path, timeout: float | None = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def _open(self, method: str, url: str, body: dict[str, Any] | None,
              timeout: float | None) -> http.client.HTTPResponse:
        conn = _UnixConnection(self.path, timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, url, body=data, headers=headers)
        return conn.getresponse()

    def get(self, url: str) -> dict[str, Any]:
        r = self._open("GET", url, None, self.timeout)
        return json.loads(r.read() or b"{}")

    def stream(self, url: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        r = self._open("POST", url, body, None)  # a deploy may take long: no read timeout
        for line in r:
            if line.strip():
                yield json.loads(line)
