"""Health probing: one probe and wait-until-healthy (httpx), and the watchdog's async GET.

Always HTTP, never a bare TCP connect: docker-proxy accepts connections on a published port
before the app inside listens. The watchdog probes every app every second, so its GET is a
minimal asyncio + h11 exchange (one request, response head only) instead of an httpx client
call, which costs several times more CPU per request.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import httpx

from zdagent.config import HealthConfig
from zdagent.errors import HealthCheckFailed
from zdagent.events import Emit, Event


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every HTTP client in the process (each costs ~1-5 MB)."""
    return ssl.create_default_context()


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
def _target(url: str) -> tuple[str, int, bool, bytes, bytes]:
    """(host, port, tls, Host header, request target) of ``url``; parsed once per URL."""
    u = urlsplit(url)
    tls = u.scheme == "https"
    host = u.hostname or "127.0.0.1"
    port = u.port or (443 if tls else 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return host, port, tls, (u.netloc or host).encode(), path.encode()


async def aget(url: str, timeout: float, header: str = "") -> Answer:
    """GET ``url`` on a fresh connection; return the status and the value of ``header``."""
    host, port, tls, host_header, target = _target(url)
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls_context() if tls else None)
            conn = h11.Connection(h11.CLIENT)
            writer.write(conn.send(h11.Request(method="GET", target=target, headers=[
                (b"Host", host_header), (b"Connection", b"close"),
                (b"User-Agent", b"zdagent-watchdog")])) or b"")
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(16384))
                elif isinstance(event, h11.Response):
                    value = next((v.decode("latin-1") for k, v in event.headers
                                  if header and k == header.lower().encode()), "")
                    return Answer(status=event.status_code, header=value)
                elif isinstance(event, h11.ConnectionClosed):
                    return Answer(error="connection closed before an answer", unreachable=True)
    except TimeoutError:
        return Answer(error=f"no answer within {timeout:g}s", unreachable=True)
    except ConnectionRefusedError:
        return Answer(error="connection refused", unreachable=True)
    except (ConnectionError, h11.RemoteProtocolError) as e:
        return Answer(error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__,
                      unreachable=True)
    except OSError as e:
        return Answer(error=f"{type(e).__name__}: {e.strerror or e}", unreachable=True)
    finally:
        if writer is not None:
            writer.close()
