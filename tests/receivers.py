"""Real local receivers for notification tests: an HTTP webhook receiver that checks the
HMAC signature, and an SMTP server (aiosmtpd). Both listen on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from benchmarks.harness import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """POSTs to http://127.0.0.1:<port>/hook, each with its signature verified by secret.
    ``start`` may be called after the sender has tried (the port is chosen up front)."""

    secret: bytes
    port: int = field(default_factory=free_port)
    status: int = 200
    delay: float = 0.0  # seconds before each answer (a slow receiver)
    got: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                want = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                sig = self.headers.get("X-Zdagent-Signature", "")
                ok = hmac.compare_digest(want, sig)
                with receiver._lock:
                    receiver.got.append(Received(dict(self.headers), body, ok))
                time.sleep(receiver.delay)
                self.send_response(receiver.status if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.payload for r in self.got if r.signature_ok]

    def ids(self) -> Counter[str]:
        return Counter(e["id"] for e in self.events())

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.events()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " \
                                                f"{[e['event'] for e in self.events()]}"
            time.sleep(0.05)


class SmtpReceiver:
    """An aiosmtpd server on 127.0.0.1 that keeps every message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                receiver.messages.append(envelope)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def url(self, to: str = "ops@example.com") -> str:
        """Apprise's URL for a plain (no TLS, no login) SMTP server on this port."""
        return f"mailto://127.0.0.1:{self.port}?from=zdagent@example.com&to={to}"


class TricklingReceiver:
    """Answers every request with a status line, then one header byte every ``gap`` s,
    forever: no single read ever times out, so only a bound on the whole send ends it."""

    def __init__(self, gap: float = 0.2) -> None:
        import socket

        self.gap = gap
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _trickle(self, conn: Any) -> None:
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self._stop.wait(self.gap):
                    conn.sendall(b"a")
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._server.close()
