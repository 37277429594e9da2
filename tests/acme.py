"""A private ACME CA for tests: Debian's pebble, with pebble-challtestsrv as its DNS.

pebble-challtestsrv answers every A query with 127.0.0.1, so pebble's http-01 validation
really fetches ``http://<domain>:<http_port>/.well-known/acme-challenge/<token>`` from the
test's own Nginx: the challenge location is proved, not skipped. Everything listens on
127.0.0.1; both daemons are stopped (and waited for) by ``close``.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import free_port

PEBBLE = "pebble"
CHALLTESTSRV = "pebble-challtestsrv"


def available() -> bool:
    return all(shutil.which(b) for b in (PEBBLE, CHALLTESTSRV, "certbot", "openssl"))


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate for pebble's own HTTPS API (127.0.0.1 and localhost)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@dataclass
class Pebble:
    """pebble (ACME directory on 127.0.0.1) validating http-01 on ``http_port``."""

    workdir: Path
    http_port: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    api_port: int = 0
    mgmt_port: int = 0

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.api_port}/dir"

    @property
    def api_cert(self) -> Path:
        return self.workdir / "pebble-api.pem"

    def start(self, deadline_s: float = 60) -> Pebble:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self_signed(self.workdir, "pebble-api")
        dns_port, chall_mgmt = free_port(), free_port()
        self.api_port, self.mgmt_port = free_port(), free_port()
        config = self.workdir / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.api_port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.api_cert), "privateKey": str(self.workdir / "pebble-api.key"),
            "httpPort": self.http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        # No http-01/tls-alpn/https listeners: the test's Nginx answers the challenges.
        self._spawn([CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                     "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "",
                     "-tlsalpn01", "", "-management", f"127.0.0.1:{chall_mgmt}"], "challtestsrv")
        # NOSLEEP: no random 0-15 s wait before validating; NONCEREJECT=0: no deliberately
        # rejected nonces (certbot copes, but it costs round trips).
        self._spawn([PEBBLE, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
                    "pebble", env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                self.fetch("/dir", mgmt=False)
                self.fetch("/roots/0")
                return self
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"pebble did not start; see {self.workdir}/*.log"
                                       ) from None
                time.sleep(0.1)

    def _spawn(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        import os

        log = (self.workdir / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **(env or {})}))
        log.close()

    def fetch(self, path: str, *, mgmt: bool = True) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.api_cert))
        port = self.mgmt_port if mgmt else self.api_port
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx,
                                    timeout=5) as r:
            return r.read()

    def trust_bundle(self, dest: Path) -> Path:
        """pebble's API certificate and its (per-run) issuing roots, as one CA file: what
        certbot (REQUESTS_CA_BUNDLE) and zdagent (SSL_CERT_FILE) trust in the test."""
        roots = b"".join(self.fetch(f"/roots/{i}") for i in range(1))
        dest.write_bytes(self.api_cert.read_bytes() + roots)
        return dest

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.procs.clear()
