"""Health probing: one probe and wait-until-healthy (httpx), and the watchdog's async GET.

Always HTTP, never a bare TCP connect: docker-proxy accepts connections on a published port
before the app inside listens. The watchdog probes every app every second, so its GET is a
minimal asyncio exchange on the loop's socket calls (one request, response head only: the
status line and one header) instead of an httpx client call, which costs several times more
CPU per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from zdagent.config import HealthConfig
from zdagent.errors import HealthCheckFailed
from zdagent.events import Emit, Event


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every HTTP client in the process (each costs ~1-5 MB)."""
    return ssl.create_default_context()


def sni(url: str, headers: dict[str, str] | None) -> dict[str, str]:
    """httpx request extensions for a request through Nginx over HTTPS: the TLS name (SNI and
    the certificate check) is the ``Host`` header's, not the URL's 127.0.0.1."""
    host = (headers or {}).get("Host")
    return {"sni_hostname": host} if host and url.startswith("https:") else {}


def http_client(agent: str) -> httpx.Client:
    """A client for probes and verification: fresh connections, the shared TLS context."""
    return httpx.Client(headers={"Connection": "close", "User-Agent": agent},
                        verify=tls_context())


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    status: int | None = None


def probe_once(client: httpx.Client, url: str, health: HealthConfig,
               version: str | None = None) -> ProbeResult:
    """One GET: healthy if the status is accepted and, if asked, the version matches."""
    try:
        r = client.get(url, timeout=health.timeout)
    except httpx.TimeoutException:
        return ProbeResult(False, f"no answer within {health.timeout:g}s")
    except httpx.HTTPError as e:
        return ProbeResult(False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    if r.status_code not in health.statuses:
        return ProbeResult(False, f"HTTP {r.status_code}", r.status_code)
    if version and health.expect_version != "none":
        header = health.version_header
        seen = r.headers.get(header, "") if header else r.text
        if version not in seen:
            where = f"header {header}" if header else "body"
            return ProbeResult(False, f"version {version!r} not in the {where}", r.status_code)
    return ProbeResult(True, f"HTTP {r.status_code}", r.status_code)


def slot_url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def wait_healthy(url: str, health: HealthConfig, version: str | None, emit: Emit,
                 exit_reason: Callable[[], str | None],
                 logs: Callable[[], list[str]]) -> float:
    """Probe until ``passes`` consecutive passes; fail fast if the container exits.

    Returns the seconds it took. Raises HealthCheckFailed with the last probe result and the
    container's last log lines.
    """
    start = time.monotonic()
    deadline = start + health.startup_deadline
    streak = 0
    last = ProbeResult(False, "not probed yet")
    with http_client("zdagent-probe") as client:
        while True:
            reason = exit_reason()
            if reason:
                raise _failed(f"candidate failed during startup: {reason}", logs())
            last = probe_once(client, url, health, version)
            streak = streak + 1 if last.ok else 0
            emit(Event("log", f"probe {url}: {last.detail} ({streak}/{health.passes})",
                       phase="probe"))
            if streak >= health.passes:
                return time.monotonic() - start
            if time.monotonic() + health.interval > deadline:
                raise _failed(
                    f"candidate not healthy within {health.startup_deadline:g}s "
                    f"(last probe: {last.detail})", logs())
            time.sleep(health.interval)


def _failed(message: str, log_lines: list[str]) -> HealthCheckFailed:
    tail = " | ".join(line.strip() for line in log_lines[-5:] if line.strip())
    return HealthCheckFailed(
        message + (f"; last log lines: {tail}" if tail else "; the container logged nothing"),
        hint="the live slot kept serving; check the health path, port and app logs",
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """The head of one response, or why there was none.

    ``unreachable``: no HTTP answer at all (refused, reset, timed out): the server is not there.
    """

    status: int | None = None
    header: str = ""
    error: str | None = None
    unreachable: bool = False


@functools.lru_cache(maxsize=4096)
def _target(url: str, header: str, host_header: str | None = None
            ) -> tuple[tuple[str, int], bool, str, bytes, bytes]:
    """((host, port), tls, host name, request bytes, b"\r\n<header>:") for ``url``;
    ``host_header`` replaces the URL's host in ``Host`` (an app's ``nginx.verify_host``)."""
    u = urlsplit(url)
    tls = u.scheme == "https"
    host = u.hostname or "127.0.0.1"
    port = u.port or (443 if tls else 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    request = (f"GET {path} HTTP/1.1\r\nHost: {host_header or u.netloc or host}\r\n"
               "Connection: close\r\n"
               "User-Agent: zdagent-watchdog\r\n\r\n").encode()
    return (host, port), tls, host, request, f"\r\n{header.lower()}:".encode()


async def aget(url: str, timeout: float, header: str = "",
               host_header: str | None = None) -> Answer:
    """GET ``url`` on a fresh connection; return the status and the value of ``header``.

    Reads the response head only (status line and headers). Plain HTTP uses the event loop's
    socket calls directly: no transport, protocol or stream objects per probe.
    """
    address, tls, host, request, needle = _target(url, header, host_header)
    try:
        async with asyncio.timeout(timeout):
            head = await (_head_tls(address, host_header or host, request) if tls else
                          _head_plain(address, request))
    except TimeoutError:
        return Answer(error=f"no answer within {timeout:g}s", unreachable=True)
    except ConnectionRefusedError:
        return Answer(error="connection refused", unreachable=True)
    except ConnectionError as e:
        return Answer(error=type(e).__name__, unreachable=True)
    except OSError as e:
        return Answer(error=f"{type(e).__name__}: {e.strerror or e}", unreachable=True)
    return _parse_head(head, needle)


async def _head_plain(address: tuple[str, int], request: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET,
                         socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, request)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            chunk = await loop.sock_recv(sock, 16384)
            if not chunk:
                break
            head += chunk
        return head
    finally:
        sock.close()


async def _head_tls(address: tuple[str, int], host: str, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address, ssl=tls_context(),
                                                   server_hostname=host)
    try:
        writer.write(request)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            chunk = await reader.read(16384)
            if not chunk:
                break
            head += chunk
        return head
    finally:
        writer.close()


MAX_HEAD = 65536


def _parse_head(head: bytes, needle: bytes) -> Answer:
    """Status and one header from a response head (pure: unit-tested)."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return Answer(error="connection closed before an answer" if len(head) < MAX_HEAD
                      else "response head too large", unreachable=len(head) < MAX_HEAD)
    block = head[:end + 2]
    parts = block.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1][:3].isdigit():
        return Answer(error="not an HTTP/1.x answer")
    value = ""
    if needle != b"\r\n:":
        at = block.lower().find(needle)
        if at >= 0:
            start = at + len(needle)
            value = block[start:block.find(b"\r\n", start)].strip().decode("latin-1")
    return Answer(status=int(parts[1][:3]), header=value)


class KeptAlive:
    """Repeated GETs of one URL over one HTTP/1.1 keep-alive connection (plain HTTP).

    The watchdog asks Nginx every second per app: reusing the connection saves a connect, an
    accept and a TIME_WAIT socket per probe (100 apps: 6000 TIME_WAIT sockets a minute). A
    reused connection the server closed meanwhile (a reload retires its workers) is retried
    once on a fresh one; the response is read whole so the connection stays in step.
    """

    def __init__(self, url: str, header: str = "", host_header: str | None = None) -> None:
        self.url, self.header, self.host_header = url, header, host_header
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def get(self, timeout: float) -> Answer:
        address, tls, _, request, needle = _target(self.url, self.header, self.host_header)
        if tls:
            return await aget(self.url, timeout, self.header, self.host_header)
        request = request.replace(b"Connection: close", b"Connection: keep-alive")
        try:
            async with asyncio.timeout(timeout):
                if self.sock is not None:
                    with contextlib.suppress(OSError):
                        answer = await self._exchange(self.sock, request, needle)
                        if answer is not None:
                            return answer
                    self.close()
                self.sock = await _connect(address)
                answer = await self._exchange(self.sock, request, needle)
                if answer is None:
                    self.close()
                    return Answer(error="connection closed before an answer", unreachable=True)
                return answer
        except TimeoutError:
            self.close()
            return Answer(error=f"no answer within {timeout:g}s", unreachable=True)
        except ConnectionRefusedError:
            self.close()
            return Answer(error="connection refused", unreachable=True)
        except OSError as e:
            self.close()
            return Answer(error=type(e).__name__ if isinstance(e, ConnectionError) else
                          f"{type(e).__name__}: {e.strerror or e}", unreachable=True)

    async def _exchange(self, sock: socket.socket, request: bytes,
                        needle: bytes) -> Answer | None:
        """One request/response; None if the server closed before sending anything."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, request)
        data = b""
        while True:
            chunk = await loop.sock_recv(sock, 16384)
            if not chunk:
                if not data:
                    return None
                self.close()
                return _parse_head(data, needle)
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) >= MAX_HEAD:
                    self.close()
                    return _parse_head(data, needle)
                continue
            done = _body_done(data[:end + 2].lower(), data[end + 4:])
            if done is None:  # no framing we can follow: do not reuse
                self.close()
                return _parse_head(data, needle)
            if done:
                return _parse_head(data, needle)


async def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET,
                         socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def _body_done(head: bytes, body: bytes) -> bool | None:
    """Whether ``body`` is the whole body the (lower-cased) ``head`` announces; None when the
    connection cannot be reused (close, unknown framing, bad chunk sizes)."""
    if b"\r\nconnection: close" in head:
        return None
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        value = head[at + 17:head.find(b"\r\n", at + 2)].strip()
        return len(body) >= int(value) if value.isdigit() else None
    if b"\r\ntransfer-encoding: chunked" not in head:
        return None
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return False
        try:
            size = int(body[pos:eol].split(b";")[0], 16)
        except ValueError:
            return None
        if size == 0:  # the last chunk, then optional trailers, then an empty line
            rest = body[eol + 2:]
            return rest.startswith(b"\r\n") or b"\r\n\r\n" in rest
        pos = eol + 2 + size + 2
        if pos > len(body):
            return False
