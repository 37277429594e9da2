"""The daemon's read-only HTTP listener: the status page and Prometheus metrics.

    GET /             the status page (HTML; its script polls /api/status)
    GET /static/<f>   the page's stylesheet and script
    GET /api/status   every app: slots, versions, health, live slot, watchdog, recent history
    GET /metrics      Prometheus text format (zdagent_* metrics)

Off unless ``--http ADDR:PORT`` is given. It binds 127.0.0.1 in the normal case (operators
reach it with ``ssh -L``); another address needs ``--http-token-file``, and then the data
routes ask for ``Authorization: Bearer <token>``. Without a token the Host header must name
the loopback, so a web page a browser loaded elsewhere cannot read it (DNS rebinding).
Served by the control API's h11 server (same limits and timeouts), one request per connection.

Looking at the slots (one Docker call, a probe of each running slot: ``looks``) costs a
little, so an app's look is kept ``LOOK_TTL`` seconds unless something happened meanwhile;
the live slot, the watchdog's state and history are read on every request.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zdagent import api
from zdagent.config import AppConfig
from zdagent.daemon import looks
from zdagent.daemon.metrics import CONTENT_TYPE, Metrics
from zdagent.errors import ConfigError
from zdagent.store import DeployRecord, Store
from zdagent.watchdog import RoutedSlot

if TYPE_CHECKING:
    from zdagent.daemon.server import Daemon

DEFAULT_PORT = 9361
LOOK_TTL = 5.0  # seconds an app's look at its slots is reused
# Seconds a view is shared: building one runs on the event loop (every app's status and
# traffic figures), so a burst of requests, friendly or not, costs one view, not one each.
VIEW_TTL = 0.5
RECENT = 10  # history records per app on the page
TIMELINE = 30  # records on the page's timeline, every app together
EXTRA_KEYS = ("traffic", "canary", "maintenance")  # lifted from the daemon's app status
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
SECURITY = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "default-src 'none'; script-src 'self'; "
             "style-src 'self'; img-src 'self' data:; connect-src 'self'"))


@dataclass(frozen=True)
class Listen:
    """Where the listener binds, and the token it asks for (None: loopback only)."""

    host: str
    port: int
    token: str | None = None

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def parse_listen(value: str, token_file: Path | None = None) -> Listen:
    """``ADDR:PORT`` (or ``:PORT`` / ``PORT`` for 127.0.0.1) and the token file, checked."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "", value
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--http {value!r}: expected ADDR:PORT with a port from 1 to 65535",
                          hint=f"e.g. --http 127.0.0.1:{DEFAULT_PORT}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"--http {value!r}: {host!r} is not an IP address",
                              hint=f"e.g. --http 127.0.0.1:{DEFAULT_PORT}") from None
    token = _read_token(token_file) if token_file else None
    listen = Listen(host, int(port_text), token)
    if not listen.loopback and token is None:
        raise ConfigError(f"--http {value}: refusing to serve status and metrics on a "
                          "non-loopback address without a token",
                          hint="pass --http-token-file FILE, or bind 127.0.0.1 and use "
                               f"`ssh -L {DEFAULT_PORT}:127.0.0.1:{listen.port} HOST`")
    return listen


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the HTTP token file {path}: {e.strerror}",
                          hint="a file holding one line: the token") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ConfigError(f"the HTTP token in {path} is too short or has spaces",
                          hint="use at least 16 characters, e.g. `openssl rand -hex 32`")
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def asset(name: str) -> bytes:
    """A file of the page, shipped in the package (zdagent/web/)."""
    return resources.files("zdagent").joinpath("web", name).read_bytes()


@dataclass(frozen=True)
class Look:
    """An app's slots and routing as ``status --json`` saw them, and when."""

    at: float  # monotonic
    wall: float
    cfg: AppConfig
    key: tuple[Any, ...]  # what was true then (live slot, watchdog state, last record)
    data: dict[str, Any]


class Web:
    """The listener's routes and the view they share (page, /api/status, /metrics)."""

    def __init__(self, daemon: Daemon, listen: Listen) -> None:
        self.d = daemon
        self.listen = listen
        self.log = daemon.engines.log
        self._outbox_depth = 0  # read in the web pool with each view (SQLite, never on the loop)
        self.metrics = Metrics(lambda: self._last, daemon.started,
                               lambda: self._outbox_depth)
        self.server = api.Server(self.handle, daemon.limits, self.log)
        self.error: str | None = None  # why it does not listen
        self._looks: dict[str, Look] = {}
        self._looking = asyncio.Lock()
        self._routed: dict[str, RoutedSlot] = {}  # per app: the live slot, one stat a look
        self._last: dict[str, Any] = {"apps": {}}
        self._viewing: asyncio.Future[dict[str, Any]] | None = None  # the shared view
        self._viewed_at = 0.0  # monotonic, when it was started

    async def start(self) -> asyncio.AbstractServer | None:
        """Listen; a port taken is logged and shown in status, never fatal: the watchdog and
        deploys matter more than the page."""
        try:
            server = await asyncio.start_server(self.server, self.listen.host,
                                                self.listen.port)
        except OSError as e:
            self.error = f"cannot listen on {self.listen}: {e.strerror or e}"
            self.log(f"status page and metrics: {self.error}")
            return None
        self.log(f"status page {self.listen} and metrics {self.listen}metrics")
        return server

    def info(self) -> dict[str, Any]:
        return {"url": str(self.listen), "token": self.listen.token is not None,
                "error": self.error}

    # --- routes -----------------------------------------------------------------------

    async def handle(self, req: api.Request) -> api.Reply:
        if req.method != "GET":
            raise api.ApiError(405, f"{req.method} not allowed: this listener is read-only")
        refused = self._refused(req)
        if refused is not None:
            return refused
        if req.path in ("/", "/index.html"):
            return api.Raw(asset("index.html"), "text/html; charset=utf-8", headers=SECURITY)
        if req.path.startswith("/static/") and req.path[8:] in STATIC:
            name = req.path[8:]
            return api.Raw(asset(name), STATIC[name], headers=SECURITY)
        if req.path == "/api/status":
            body = json.dumps(await self.view()).encode()
            return api.Raw(body, "application/json", headers=SECURITY)
        if req.path == "/metrics":
            await self.view()
            return api.Raw(self.metrics.exposition(), CONTENT_TYPE)
        raise api.ApiError(404, f"no such page: {req.path}")

    def _refused(self, req: api.Request) -> api.Raw | None:
        """401 without the token on a data route; 421 for a Host that is not ours."""
        token = self.listen.token
        if token is None:
            if host_name(req.headers.get("host", "")) not in LOOPBACK_NAMES:
                return _plain(421, "this listener answers only to a loopback Host "
                                   "(reach it with ssh -L)")
            return None
        if req.path not in ("/api/status", "/metrics"):
            return None  # the page and its files hold no data
        given = req.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        return _plain(401, "a bearer token is required", (("WWW-Authenticate", "Bearer"),))

    # --- the view -----------------------------------------------------------------------

    async def view(self) -> dict[str, Any]:
        """The view being built, or one built less than VIEW_TTL ago (see ``_view``)."""
        v = self._viewing
        if v is None or (v.done() and (v.cancelled() or v.exception() is not None
                                      or time.monotonic() - self._viewed_at > VIEW_TTL)):
            self._viewed_at = time.monotonic()
            v = self._viewing = asyncio.ensure_future(self._view())
        return await asyncio.shield(v)

    async def _view(self) -> dict[str, Any]:
        """Every app as the page shows it; counts newly finished history into the metrics."""
        names = list(self.d.apps.items())
        for name, rt in names:
            if name not in self._routed or self._routed[name].cfg is not rt.cfg:
                self._routed[name] = RoutedSlot(rt.cfg)
        reads = await asyncio.gather(*(self.d.pools.run(
            self.d.pools.web, read_app, self._routed[name], self.metrics.after(name))
            for name, _ in names))
        self._outbox_depth = await self.d.pools.run(self.d.pools.web, self.d.outbox_depth)
        keys = {}
        for (name, rt), (live, recent, new) in zip(names, reads, strict=True):
            self.metrics.follow(name, new)
            keys[name] = (live, rt.state.status, recent[0]["id"] if recent else None,
                          recent[0]["outcome"] if recent else None)
        await self._look({name: (rt.cfg, live) for (name, rt), (live, _r, _n)
                          in zip(names, reads, strict=True)}, keys)
        apps: dict[str, Any] = {}
        timeline: list[dict[str, Any]] = []
        for (name, rt), (live, recent, _new) in zip(names, reads, strict=True):
            apps[name] = app_view(self.d.app_status(name, rt), live, self._looks.get(name),
                                  recent)
            timeline += recent
        for name in set(self._routed) - set(apps):
            del self._routed[name]
        timeline.sort(key=lambda r: r["started_at"], reverse=True)
        self._last = {"now": time.time(), "daemon": self.d.status()["daemon"], "apps": apps,
                      "config_errors": dict(self.d.config_errors),
                      "timeline": timeline[:TIMELINE]}
        return self._last

    async def _look(self, apps: dict[str, tuple[AppConfig, str | None]],
                    keys: dict[str, tuple[Any, ...]]) -> None:
        """Look again at the apps whose look is older than LOOK_TTL, or was taken before
        something happened (another live slot, watchdog state or history record, a new
        config); one round at a time: a burst of requests waits for one look."""
        async with self._looking:
            now = time.monotonic()
            stale = {n: a for n, a in apps.items() if n not in self._looks
                     or now - self._looks[n].at > LOOK_TTL
                     or self._looks[n].cfg is not a[0] or self._looks[n].key != keys[n]}
            if stale:
                try:
                    found = await looks.look(stale, await self.d.pools.run(
                        self.d.pools.web, looks.list_containers))
                except Exception as e:  # Docker down: the page says so, the daemon goes on
                    found = {n: {"error": looks.docker_problem(e)} for n in stale}
                for name, (cfg, _live) in stale.items():
                    self._looks[name] = Look(time.monotonic(), time.time(), cfg, keys[name],
                                             found[name])
            for name in set(self._looks) - set(self.d.apps):
                del self._looks[name]


def app_view(status: dict[str, Any], live: str | None, seen: Look | None,
             recent: list[dict[str, Any]]) -> dict[str, Any]:
    """Pure: one app for the page and the collector, from the daemon's app status, the slot
    Nginx's config routes to now, the last look at its slots and its recent history."""
    look_ = seen.data if seen else {}
    wd = {k: v for k, v in status.items() if k not in EXTRA_KEYS}
    view: dict[str, Any] = {
        "watchdog": wd,
        "live_slot": live,
        "slots": look_.get("slots"),
        "standby": look_.get("standby"),
        "look_error": look_.get("error"),
        "looked": seen.wall if seen else None,
        "history": recent,
    }
    view.update({k: status[k] for k in EXTRA_KEYS if k in status})
    return view


def read_app(routed: RoutedSlot, after: int
             ) -> tuple[str | None, list[dict[str, Any]], list[DeployRecord]]:
    """The slot Nginx routes to, the app's newest records for the page, and those after
    ``after`` for the metrics."""
    cfg = routed.cfg
    with Store(cfg.state_dir) as store:
        recent = [r.to_dict() for r in store.history(cfg.name, RECENT)]
        return routed.get(), recent, store.history_since(cfg.name, after)


def _plain(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> api.Raw:
    return api.Raw(text.encode() + b"\n", "text/plain; charset=utf-8", status, headers)


def host_name(header: str) -> str:
    """The host of a Host header, without its port (``[::1]:80`` -> ``[::1]``)."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rpartition(":")[0].lower() if ":" in header else header.lower()
