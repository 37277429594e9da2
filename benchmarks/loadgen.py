"""Load clients for the zero-downtime benchmark, each in its own process.

Three kinds of client, each with GET and POST, paced at a fixed rate:
* ``close``: a new connection per request with ``Connection: close``;
* ``retry``: keep-alive like a browser or urllib3/httpx: before reusing its idle connection it
  looks whether the server has closed it (and then opens a new one), and it retries an
  idempotent request once on a fresh connection when a reused connection closes before any
  response;
* ``raw``: keep-alive that never retries (wrk-like).
Every request is recorded on the client side, because a failed request often never reaches
Nginx's log: start time, duration, status (0 = no response), error, the answering upstream
(``X-Zdagent-Upstream``), the version in the body, and whether it was retried.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import select
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("close", "retry", "raw")
METHODS = ("GET", "POST")
# Errors that mean "the connection closed before any response byte": safe to retry only for
# an idempotent request on a reused connection.
NO_RESPONSE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
               ConnectionAbortedError)


@dataclass(frozen=True)
class Record:
    t: float  # wall-clock start
    dt: float  # seconds
    kind: str
    method: str
    proc: int
    status: int  # 0 = no response
    error: str
    upstream: str
    version: str
    retried: bool

    @property
    def ok(self) -> bool:
        return self.status == 200


class _Client:
    """One client's connection state and its single-request logic."""

    def __init__(self, kind: str, method: str, port: int, path: str) -> None:
        self.kind, self.method, self.port, self.path = kind, method, port, path
        self.conn: http.client.HTTPConnection | None = None
        self.used = 0  # requests sent on the current connection
        self.body = b"x" * 64 if method == "POST" else None

    def _send(self) -> tuple[int, str, str]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            self.used = 0
        headers = {"Connection": "close"} if self.kind == "close" else {}
        if self.body is not None:
            headers["Content-Type"] = "application/octet-stream"
        self.used += 1
        self.conn.request(self.method, self.path, body=self.body, headers=headers)
        r = self.conn.getresponse()
        text = r.read().decode("utf-8", "replace")
        if self.kind == "close" or r.will_close:
            self._drop()
        return r.status, r.getheader("X-Zdagent-Upstream", ""), text.split(" ", 1)[0].strip()

    def _dropped_by_server(self) -> bool:
        """An idle kept-alive socket that is readable was closed by the server (or holds
        junk): what urllib3's ``is_connection_dropped`` checks before reusing one."""
        sock = self.conn.sock if self.conn is not None else None
        return sock is not None and bool(select.select([sock], [], [], 0)[0])

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def request(self) -> tuple[int, str, str, str, bool]:
        """(status, error, upstream, version, retried) for one logical request."""
        if self.kind == "retry" and self._dropped_by_server():
            self._drop()
        reused = self.conn is not None and self.used > 0
        try:
            status, upstream, version = self._send()
            return status, "", upstream, version, False
        except NO_RESPONSE as e:
            self._drop()
            if self.kind == "retry" and reused and self.method == "GET":
                try:
                    status, upstream, version = self._send()
                    return status, "", upstream, version, True
                except (OSError, http.client.HTTPException) as e2:
                    self._drop()
                    return 0, type(e2).__name__, "", "", True
            return 0, type(e).__name__, "", "", False
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            self._drop()
            return 0, type(e).__name__, "", "", False


def _run_client(kind: str, method: str, proc: int, port: int, path: str, rate: float,
                stop: Any, max_seconds: float, out: str) -> None:
    client = _Client(kind, method, port, path)
    rows: list[list[Any]] = []
    interval = 1.0 / rate
    deadline = time.monotonic() + max_seconds
    next_at = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.monotonic() - 0.5)  # no burst after a stall
        t0, m0 = time.time(), time.perf_counter()
        status, error, upstream, version, retried = client.request()
        rows.append([t0, time.perf_counter() - m0, status, error, upstream, version, retried])
    Path(out).write_text(json.dumps({"kind": kind, "method": method, "proc": proc,
                                     "rows": rows}))


class Load:
    """Start every (kind, method) client against 127.0.0.1:<port>; collect their records."""

    def __init__(self, port: int, path: str, rate: float, workdir: Path,
                 max_seconds: float = 900.0, kinds: tuple[str, ...] = KINDS) -> None:
        self.ctx = multiprocessing.get_context("fork")
        self.stop = self.ctx.Event()
        self.workdir = workdir
        self.procs: list[Any] = []
        self.files: list[Path] = []
        clients = [(k, m) for k in kinds for m in METHODS]
        for i, (kind, method) in enumerate(clients):
            out = workdir / f"load-{i}-{kind}-{method}.json"
            p = self.ctx.Process(target=_run_client, daemon=True, args=(
                kind, method, i, port, path, rate, self.stop, max_seconds, str(out)))
            self.procs.append(p)
            self.files.append(out)

    def __enter__(self) -> Load:
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(60)

    def records(self) -> list[Record]:
        out: list[Record] = []
        for f in self.files:
            data = json.loads(f.read_text())
            out.extend(Record(t=r[0], dt=r[1], kind=data["kind"], method=data["method"],
                              proc=data["proc"], status=r[2], error=r[3], upstream=r[4],
                              version=r[5], retried=r[6]) for r in data["rows"])
        out.sort(key=lambda r: r.t)
        return out
