"""Health probing with httpx: one probe, and wait-until-healthy.

Always HTTP, never a bare TCP connect: docker-proxy accepts connections on a published port
before the app inside listens.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

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
