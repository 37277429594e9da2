"""The daemon's control API: HTTP/1.1 + JSON on a unix socket (mode 0660, never 0666).

    GET  /v1/status                      the daemon, every app's watchdog, bad app files
    GET  /v1/apps/<app>/status           one app (the same JSON as `zdagent status --json`)
    GET  /v1/apps/<app>/history?limit=N
    POST /v1/apps/<app>/deploy   {"version": "v2", "no_wait": false}   streams NDJSON events
    POST /v1/apps/<app>/rollback {"to": null | "v1", "no_wait": false} same

A streamed reply is ``application/x-ndjson``: one ``{"event": …}`` per line, the last line
being ``{"result": …}`` or ``{"error": {"message", "hint", "exit_code"}}``. Every failure,
including a zdagent error raised by a handler, is answered with that error object and an HTTP
status; one request per connection, then the server closes it.

Requests are parsed by h11 (a maintained sans-IO parser) under hard limits: the request line
plus headers (431), the body (413), JSON nesting (400), the time to send the whole request
(408), and the number of connections served at once (503). The caller is identified by the
kernel (``SO_PEERCRED``), never by anything it says.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import pwd
import re
import socket
import struct
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from zdagent.errors import as_known

ROUTE = re.compile(r"^/v1/apps/([a-z0-9][a-z0-9-]{0,39})/"
                   r"(status|history|deploy|rollback|notify-test|promote|abort|maintenance)$")


@dataclass(frozen=True)
class Limits:
    """What one connection may cost the daemon."""

    max_head: int = 8192  # request line + headers, bytes
    max_body: int = 8192  # bytes
    max_depth: int = 16  # JSON nesting
    read_timeout: float = 10.0  # seconds to send the whole request
    write_timeout: float = 30.0  # seconds for a client to take a whole (non-streamed) answer
    max_connections: int = 32  # served at once; the rest get 503 at once


@dataclass(frozen=True)
class Peer:
    """The process at the other end of the socket, as the kernel reports it."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def user(self) -> str:
        """The caller's user name (``uid N`` without a passwd entry), for history's ``by``."""
        if self.uid is None:
            return "unknown"
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid {self.uid}"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]
    peer: Peer = field(default_factory=Peer)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    # Set when the client closed its end: a queued operation it asked for is cancelled.
    gone: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Raw:
    """A reply that is not JSON: a page, a stylesheet, Prometheus' text format."""

    body: bytes
    content_type: str
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


class ApiError(Exception):
    def __init__(self, status: int, message: str, exit_code: int = 2, hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.exit_code = exit_code
        self.hint = hint


Reply = dict[str, Any] | Raw | AsyncIterator[dict[str, Any]]
Handler = Callable[[Request], Awaitable[Reply]]
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"zdagent: {message}", file=sys.stderr, flush=True)


# --- parsing ------------------------------------------------------------------------------

def json_depth(raw: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text, without recursing (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_body(raw: bytes, limits: Limits) -> dict[str, Any]:
    if not raw.strip():
        return {}
    if json_depth(raw) > limits.max_depth:
        raise ApiError(400, f"JSON nested deeper than {limits.max_depth} levels")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


async def read_request(reader: asyncio.StreamReader, limits: Limits,
                       peer: Peer | None = None) -> Request | None:
    """Parse one request under ``limits``; None if the client left before sending one."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            raise ApiError(e.error_status_hint, f"bad request: {e}") from None
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(4096))
        elif isinstance(event, h11.Request):
            head = event
            _check_head(event, limits)
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limits.max_body:
                raise ApiError(413, f"request body over {limits.max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            break
        else:  # ConnectionClosed before a whole request
            return None
    assert head is not None
    url = urlsplit(head.target.decode("ascii", "replace"))
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
    return Request(head.method.decode("ascii"), url.path, parse_qs(url.query),
                   parse_body(bytes(body), limits), peer or Peer(), headers)


def _check_head(event: h11.Request, limits: Limits) -> None:
    if event.method not in (b"GET", b"POST"):
        raise ApiError(405, f"method {event.method.decode('ascii', 'replace')} not allowed")
    for name, value in event.headers:
        if name == b"content-length" and int(value) > limits.max_body:
            raise ApiError(413, f"request body over {limits.max_body} bytes")


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    """SO_PEERCRED of a unix socket connection (Linux); an empty Peer elsewhere."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return Peer()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return Peer()
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


# --- answering ----------------------------------------------------------------------------

def _head(status: int, content_type: str, length: int | None = None,
          extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    reason = http.client.responses.get(status, "")
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    more = "".join(f"{k}: {v}\r\n" for k, v in extra)
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{size}{more}"
            "Connection: close\r\n\r\n").encode()


def raw_reply(reply: Raw) -> bytes:
    return _head(reply.status, reply.content_type, len(reply.body), reply.headers) + reply.body


def json_reply(status: int, data: dict[str, Any]) -> bytes:
    body = json.dumps(data).encode() + b"\n"
    return _head(status, "application/json", len(body)) + body


def error_object(message: str, hint: str, exit_code: int) -> dict[str, Any]:
    return {"error": {"message": message, "hint": hint, "exit_code": exit_code}}


def error_reply(e: Exception) -> tuple[int, dict[str, Any]]:
    """Any exception as (HTTP status, error object): nothing escapes unanswered."""
    if isinstance(e, ApiError):
        return e.status, error_object(e.message, e.hint, e.exit_code)
    known = as_known(e)  # ours, or a full disk
    if known is not None:
        status = {2: 400, 3: 503}.get(known.exit_code, 409)
        return status, error_object(known.message, known.hint, known.exit_code)
    return 500, error_object(f"unexpected error: {type(e).__name__}: {e}",
                             "this is a bug; see the daemon's log (journalctl -u zdagent)", 70)


class Server:
    """Serves connections with ``handler`` under ``limits``; counts the open ones."""

    def __init__(self, handler: Handler, limits: Limits | None = None,
                 log: Log = _stderr) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.log = log
        self.open = 0

    async def __call__(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        if self.open >= self.limits.max_connections:
            await self._refuse(reader, writer)
            return
        self.open += 1
        try:
            await self._serve(reader, writer)
        finally:
            self.open -= 1
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()
                await writer.wait_closed()

    async def _refuse(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._send(writer, json_reply(503, error_object(
                f"too many connections (max {self.limits.max_connections})",
                "retry in a moment", 3)))
            await _linger(reader, writer)
            writer.close()
            await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(read_request(reader, self.limits, peer_of(writer)),
                                             self.limits.read_timeout)
        except TimeoutError:
            await self._send(writer, json_reply(408, error_object(
                f"request not received within {self.limits.read_timeout:g}s", "", 2)))
            await _linger(reader, writer)
            return
        except ApiError as e:
            await self._send(writer, json_reply(*error_reply(e)))
            await _linger(reader, writer)
            return
        except (ConnectionError, OSError):
            return
        if request is None:
            return
        watcher = asyncio.create_task(_watch_gone(reader, request.gone))
        try:
            await self._answer(request, writer)
        finally:
            watcher.cancel()

    async def _answer(self, request: Request, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self.handler(request)
        except Exception as e:
            if not isinstance(e, ApiError) and as_known(e) is None:
                self.log(f"{request.method} {request.path}: unexpected error:\n"
                         + traceback.format_exc().rstrip())
            await self._send(writer, json_reply(*error_reply(e)))
            return
        # A whole answer gets write_timeout to be taken; a stream (a deploy's progress) none:
        # a CLI paused for a while must not lose its operation.
        if isinstance(reply, dict):
            await self._send(writer, json_reply(200, reply), self.limits.write_timeout)
            return
        if isinstance(reply, Raw):
            await self._send(writer, raw_reply(reply), self.limits.write_timeout)
            return
        try:
            if not await self._send(writer, _head(200, "application/x-ndjson")):
                return
            async for item in reply:
                if not await self._send(writer, json.dumps(item).encode() + b"\n"):
                    request.gone.set()
                    return  # the operation itself goes on (or, if queued, is cancelled)
        finally:
            if hasattr(reply, "aclose"):
                await reply.aclose()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes,
                    timeout: float | None = None) -> bool:
        if writer.is_closing():
            return False
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), timeout)
            return True
        except TimeoutError:  # the client stopped reading: drop it and what it did not take
            writer.transport.abort()
            return False
        except (ConnectionError, OSError):
            return False


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  seconds: float = 1.0, most: int = 1 << 20) -> None:
    """After an early answer: end our side, discard what the client still sends, briefly.

    Closing a socket with unread input resets the connection, and the client may then never
    read the answer (like Nginx's lingering_close).
    """
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        if writer.can_write_eof():
            writer.write_eof()

        async def discard() -> None:
            seen = 0
            while seen < most and (chunk := await reader.read(65536)):
                seen += len(chunk)

        await asyncio.wait_for(discard(), seconds)


async def _watch_gone(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
    """Set ``gone`` at EOF: the client closed its end (anything it sends more is ignored)."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(4096):
            pass
    gone.set()
