"""A bounded request loop through Nginx (Connection: close) that records every outcome."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class RequestLoop:
    """GETs ``url`` from one thread until stopped or ``max_seconds``/``max_requests`` pass."""

    url: str
    max_seconds: float = 30.0
    max_requests: int = 100_000
    counter: bool = False  # send ?n=<request number>: the sample app's errors are then exact
    host: str | None = None  # Host header, and the TLS name (SNI) for an https:// url
    verify: Any = True  # httpx's verify: a CA file or SSLContext for a private CA
    keep_alive: bool = False  # reuse connections instead of Connection: close
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.max_seconds + 15)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        headers = {} if self.keep_alive else {"Connection": "close"}
        if self.host:
            headers["Host"] = self.host
        extensions = {"sni_hostname": self.host} if self.host else {}
        with httpx.Client(headers=headers, timeout=10, verify=self.verify) as client:
            while (not self._stop.is_set() and time.monotonic() < deadline
                   and self.total < self.max_requests):
                self.total += 1
                try:
                    r = client.get(f"{self.url}?n={self.total}" if self.counter
                                   else self.url, extensions=extensions)
                except httpx.HTTPError as e:
                    self.failures.append(f"{type(e).__name__}: {e}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"HTTP {r.status_code}")
                else:
                    self.versions[r.text.split()[0]] += 1
