"""The Nginx side of a switch: render, write atomically, test, reload, verify, restore.

How the switch itself happens (reload or njs) is the app's ``Switcher`` (``switch.py``),
chosen once from ``nginx.switch_mode``; this module holds the templates, the names, the
parsers and the master (pid, workers, commands, verification) that every switcher uses.

A reload is not trusted until verified: ``nginx -t`` and ``nginx -s reload`` can both return 0
while the master rejects the new config (e.g. ``bind() failed``) and keeps its old workers. A
switch counts only when the master's workers were replaced *and* a response through the public
URL names the new slot in ``X-Zdagent-Upstream``. Anything less restores the previous file.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
import jinja2
import psutil

from zdagent import config as _config
from zdagent.config import MANAGED_RE, AppConfig, managed_header
from zdagent.errors import EnvironmentProblem, NginxError, ZdError
from zdagent.events import Emit, Event
from zdagent.probe import http_client, sni
from zdagent.runbook import with_link

UPSTREAM_HEADER = "X-Zdagent-Upstream"
# njs mode: idle upstream keep-alive connections close this soon, so a drain that waits for
# Nginx's connections to the old slot to end is not held up by idle ones for long.
NJS_KEEPALIVE_S = 4
TASK_PORTS_MARK = "# zdagent: task ports"
_TASK_PORTS_RE = re.compile(rf"^{TASK_PORTS_MARK} (.*)$", re.M)
_SLOT_PORTS_RE = re.compile(r"\b(blue|green)=([\d,]*)")
_SERVER_RE = re.compile(r"^\s*server\s+(?:127\.0\.0\.1|localhost):(\d+)\b([^;]*);", re.M)


def templates_dir() -> Path:
    """Bundled templates: inside the wheel, or beside the package in a source checkout."""
    packaged = resources.files("zdagent") / "nginx_templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "nginx_templates"


def upstream_name(app: str) -> str:
    """Reload mode's upstream group (njs mode: the js module); see config.nginx_names."""
    return _config.upstream_name(app)


@functools.lru_cache(maxsize=16)
def _environment(directory: str) -> jinja2.Environment:
    """One environment per template directory: templates compile once (auto_reload on change)."""
    return jinja2.Environment(
        # An operator's template may include the bundled pieces (tls_*.conf.j2).
        loader=jinja2.FileSystemLoader(list(dict.fromkeys([directory, str(templates_dir())]))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Nginx config, not HTML
    )


def render_template(template: Path | None, default: str, **context: object) -> str:
    """Render ``template`` (or the bundled ``default``); errors name the file and line."""
    path = template or templates_dir() / default
    try:
        return _environment(str(path.parent)).get_template(path.name).render(**context)
    except jinja2.TemplateError as e:
        where = f"{path}:{e.lineno}" if getattr(e, "lineno", None) else str(path)
        raise NginxError(f"cannot render {where}: {e.message}",
                         hint="fix the template; nothing was changed") from None


def template_names(cfg: AppConfig) -> dict[str, str]:
    """The Nginx names of one app, as template variables (collision-free across apps)."""
    return {"app": cfg.name, "upstream": upstream_name(cfg.name),
            "blue_pool": pool_name(cfg, "blue"), "green_pool": pool_name(cfg, "green"),
            "blue_alone": pool_name(cfg, "blue", alone=True),
            "green_alone": pool_name(cfg, "green", alone=True),
            "pool_var": _config.pool_variable(cfg.name)}


def mark(app: str, text: str) -> str:
    """Every upstream file starts with zdagent's header, whatever the template: config
    loading refuses to overwrite an existing file without it."""
    m = MANAGED_RE.match(text)
    if m and m.group(1) == app:
        return text
    return f"{managed_header(app)}: rewritten on every switch; do not edit.\n{text}"


def render_upstream(cfg: AppConfig, live_slot: str | None, standby_slot: str | None,
                    ports: SlotPorts | None = None) -> str:
    """The upstream file; with no live slot, a placeholder that Nginx accepts (all down).

    In njs mode the file holds both slots' groups and does not depend on the live slot.
    """
    return switcher_for(cfg, ports).upstream_text(live_slot, standby_slot)


def render_site(cfg: AppConfig) -> str:
    """The server block for the app's switch mode, installed once by the operator."""
    return switcher_for(cfg).render_site()


def task_ports_line(ports: dict[str, tuple[int, ...]]) -> str:
    """Swarm task-ports: the line zdagent appends to the upstream file, saying which slot
    each port it was rendered with belongs to (the traffic monitor reads it back)."""
    return f"{TASK_PORTS_MARK} " + " ".join(
        f"{slot}={','.join(map(str, p))}" for slot, p in sorted(ports.items())) + "\n"


def task_ports_in(text: str) -> dict[int, str]:
    """Each port's slot, from the upstream file's task-ports line (empty without one)."""
    m = _TASK_PORTS_RE.search(text)
    if m is None:
        return {}
    found: dict[int, str] = {}
    for slot, ports in _SLOT_PORTS_RE.findall(m.group(1)):
        found.update((int(p), slot) for p in ports.split(",") if p)
    return found


def live_port_in(text: str) -> int | None:
    """The primary (non-backup, non-down) server's port in an upstream file."""
    for m in _SERVER_RE.finditer(text):
        flags = m.group(2).split()
        if "backup" not in flags and "down" not in flags:
            return int(m.group(1))
    return None


def pool_name(cfg: AppConfig, slot: str, *, alone: bool = False) -> str:
    """njs mode: the upstream group of one slot (the active file holds one of these);
    ``alone``: without the other slot as its backup."""
    return _config.pool_name(cfg.name, slot, alone=alone)


def routed_slot(cfg: AppConfig) -> str | None:
    """The slot the Nginx config routes to: the upstream file, or (njs) the active file."""
    return switcher_for(cfg).routed_slot()


def atomic_write(path: Path, text: str, *, mode: int = 0o644, group: int | None = None) -> None:
    """Write via a temp file in the same directory, fsync, rename: never a half file.

    ``group``: the file is root's (when we are root) and that group's, set before the rename
    so it is never visible with the wrong owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if group is not None:
            os.chown(tmp, 0 if os.geteuid() == 0 else -1, group)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def answering_upstream(header: str) -> str | None:
    """The address that finally answered, from an ``X-Zdagent-Upstream`` value.

    ``$upstream_addr`` lists every try (``a, b``) and every upstream group (``a : b``).
    """
    parts = [p.strip() for p in re.split(r"[,:]\s", header) if p.strip()]
    return parts[-1] if parts else None


def served_by(client: httpx.Client, url: str, timeout: float = 2.0,
              headers: dict[str, str] | None = None) -> str | None:
    """Which upstream address answered a fresh request through Nginx (last one if retried).

    ``headers`` carries the app's ``Host`` (AppConfig.verify_headers): with several server
    blocks on one port, only that makes the app's own server block answer.
    """
    try:
        r = client.get(url, timeout=timeout, headers={**(headers or {}), "Connection": "close"},
                       extensions=sni(url, headers))
    except (httpx.HTTPError, httpx.InvalidURL):  # InvalidURL is no HTTPError
        return None
    return answering_upstream(r.headers.get(UPSTREAM_HEADER, ""))


@dataclass(frozen=True)
class SwitchResult:
    old_workers: frozenset[int]
    seconds: float


class Nginx:
    """One app's upstream file and the Nginx master that serves it."""

    def __init__(self, cfg: AppConfig, emit: Emit, ports: SlotPorts | None = None) -> None:
        """``ports``: where each slot answers (the backend's ``Slots.ports``); default the
        slot ports."""
        self.cfg = cfg
        self.emit = emit
        self.file = cfg.nginx.upstream_file
        self.switcher = switcher_for(cfg, ports)  # the switch strategy, chosen once
        # One client for every verification request: building one costs ~50 ms.
        self.http = http_client("zdagent-verify")

    def close(self) -> None:
        self.http.close()

    # --- inspection ---------------------------------------------------------------------

    def preflight(self, *, switch: bool = True) -> None:
        """Fail with exit 3 before touching anything if Nginx cannot be driven (with
        ``switch``: or the switcher cannot switch the files on disk, e.g. legacy names)."""
        for argv in (self.cfg.nginx.test_command, self.cfg.nginx.reload_command):
            if shutil.which(argv[0]) is None:
                raise EnvironmentProblem(f"nginx command not found: {argv[0]}",
                                         hint="install nginx or fix nginx.test_command")
        self.master()
        if switch:
            self.switcher.preflight()

    def master(self) -> psutil.Process:
        pid_file = self.cfg.nginx.pid_file
        try:
            pid = int(pid_file.read_text().strip())
            proc = psutil.Process(pid)
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (OSError, ValueError, psutil.Error):
            pass
        raise EnvironmentProblem(
            f"nginx is not running (no live master in {pid_file})",
            hint=with_link("start nginx, or point nginx.pid_file at its pid file",
                           "nginx-down"),
        )

    def workers(self) -> frozenset[int]:
        """The master's children: /proc's children list (cheap), else a psutil scan."""
        master = self.master()
        try:
            text = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text()
            return frozenset(int(p) for p in text.split())
        except (OSError, ValueError):
            pass
        try:
            return frozenset(p.pid for p in master.children())
        except psutil.Error:
            return frozenset()

    def current_text(self) -> str | None:
        try:
            return self.file.read_text()
        except FileNotFoundError:
            return None

    def live_slot_in_file(self) -> str | None:
        return self.switcher.routed_slot()

    def live_slot_served(self) -> str | None:
        addr = served_by(self.http, self.cfg.verify_url, headers=self.cfg.verify_headers)
        if not addr or ":" not in addr:
            return None
        port = addr.rsplit(":", 1)[1]
        return self.switcher.slot_of(int(port)) if port.isdigit() else None

    def addresses(self, slot: str) -> set[str]:
        """What ``$upstream_addr`` says when ``slot`` answered."""
        return {f"127.0.0.1:{p}" for p in self.switcher.ports(slot)}

    # --- actions ------------------------------------------------------------------------

    def run_command(self, argv: tuple[str, ...], what: str) -> str | None:
        """Run an nginx command (argv, no shell); return its error text or None."""
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except FileNotFoundError:
            raise EnvironmentProblem(f"nginx command not found: {argv[0]}",
                                     hint="install nginx or fix nginx.*_command") from None
        except subprocess.TimeoutExpired:
            return f"{what} did not finish within 60s"
        if p.returncode == 0:
            return None
        lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        important = [ln for ln in lines if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln]
        return (important or lines or [f"exit code {p.returncode}"])[0].strip()

    def switch(self, live_slot: str, standby_slot: str | None) -> SwitchResult:
        """Point Nginx at ``live_slot``, verified; on any failure restore and raise."""
        return self.switcher.switch(self, live_slot, standby_slot)

    def drop_backup(self, live_slot: str) -> bool:
        """Before a candidate replaces the standby: the live slot without it as backup."""
        return self.switcher.drop_backup(self, live_slot)

    def restore_backup(self, live_slot: str) -> None:
        """A deploy failed before its candidate replaced the standby: the backup again."""
        self.switcher.restore_backup(self, live_slot)

    def render_upstream(self, live_slot: str | None, standby_slot: str | None,
                        split: Split | None = None) -> str:
        return self.switcher.upstream_text(live_slot, standby_slot, split)

    def wait_old_connections(self, ports: tuple[int, ...], timeout: float) -> int:
        """The switcher's drain of the old slot (njs: its connections; reload: nothing left
        once the old workers are gone); the count still open at ``timeout``."""
        return self.switcher.wait_old_connections(self, ports, timeout)

    def reload_verified(self, slot: str, old: frozenset[int], *,
                        split: Split | None = None) -> None:
        """Reload; wait for new workers, then for ``slot`` to answer through Nginx (with
        ``split``: for both of its slots to answer)."""
        deadline = self.reload(old)
        if split is None:
            self.verify_serving(slot, deadline)
        else:
            self.verify_split(split, deadline)

    def reload(self, old: frozenset[int]) -> float:
        """Reload and wait until workers other than ``old`` run (the master took the new
        config); return the deadline left for further checks."""
        problem = self.run_command(self.cfg.nginx.reload_command, "nginx reload")
        if problem:
            raise NginxError(f"nginx reload failed: {problem}")
        deadline = time.monotonic() + self.cfg.nginx.reload_timeout
        while not (self.workers() - old):
            if time.monotonic() > deadline:
                raise NginxError(
                    "nginx accepted the reload but its master kept the old workers "
                    "(it rejected the new config)",
                    hint="look for [emerg] in Nginx's error log (e.g. bind() failed)",
                )
            time.sleep(0.005)
        return deadline

    def wait_not_accepting(self, pids: frozenset[int], deadline: float) -> bool:
        """After a reload: wait (until ``deadline``, monotonic) for the old workers to close
        their listening sockets, so no new connection lands on the old config; False if
        one still listens. Workers of another user cannot be looked at: then no wait."""
        while any(_listening(p) for p in pids):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def verify_split(self, split: Split, deadline: float) -> None:
        """Reload mode's canary step: both slots answer fresh requests through Nginx (the
        weights decide how often), by ``deadline``."""
        want = {a: s for s in (split.stable, split.candidate) for a in self.addresses(s)}
        seen: set[str] = set()
        while len(seen) < 2:
            addr = served_by(self.http, self.cfg.verify_url, headers=self.cfg.verify_headers)
            if addr in want:
                seen.add(want[addr])
                continue
            if time.monotonic() > deadline:
                missing = " and ".join(s for s in want.values() if s not in seen)
                raise NginxError(
                    f"during the canary split {missing} never answered through Nginx "
                    f"(last answer from {addr or 'nobody'})",
                    hint="a custom nginx.upstream_template must render the canary block "
                         "(see the bundled upstream.conf.j2)")
            time.sleep(0.05)

    def split(self, split: Split) -> SwitchResult:
        """Send ``split.percent`` % to the candidate, verified; on failure restore, raise."""
        return self.switcher.split(self, split)

    def routed_split(self) -> Split | None:
        return self.switcher.routed_split()

    def verify_serving(self, slot: str, deadline: float,
                       headers: dict[str, str] | None = None) -> None:
        """Three fresh requests in a row through Nginx answered by ``slot``, by ``deadline``."""
        addresses = self.addresses(slot)
        want = ", ".join(sorted(addresses))
        streak, seen = 0, None
        while streak < 3:
            seen = served_by(self.http, self.cfg.verify_url,
                             headers={**self.cfg.verify_headers, **(headers or {})})
            streak = streak + 1 if seen in addresses else 0
            if streak < 3:
                if time.monotonic() > deadline:
                    host = self.cfg.nginx.verify_host
                    raise NginxError(
                        f"after the reload {self.cfg.verify_url}"
                        f"{f' (Host: {host})' if host else ''} is answered by "
                        f"{seen or 'nobody'}, not the {slot} slot ({want})",
                        hint=f"the site must proxy to the zdagent upstream and add "
                        f"`add_header {UPSTREAM_HEADER} $upstream_addr always;` "
                        "(see `zdagent nginx render --site`)",
                    )
                time.sleep(0.02 if seen in addresses else 0.1)

    def wait_connections_closed(self, ports: tuple[int, ...], timeout: float) -> int:
        """Wait until no Nginx worker holds a connection to 127.0.0.1 on one of ``ports``;
        return the number still open when ``timeout`` ran out (njs mode's drain: no worker
        exits). A socket whose process cannot be looked at counts too: under the shipped
        unit (no CAP_SYS_PTRACE) root cannot see which process owns a www-data worker's
        sockets, and a drain that saw none would stop the old slot under its requests."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers()
            open_ = [c for c in psutil.net_connections(kind="tcp")
                     if (c.pid is None or c.pid in workers) and c.raddr
                     and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED]
            if not open_ or time.monotonic() >= deadline:
                return len(open_)
            time.sleep(0.1)

    def restore_upstream(self, previous: str | None, *, reload: bool) -> bool:
        """After a failed switch: put the previous upstream file back, then confirm the slot
        the restored files route to (``reload``: the failed switch may have reloaded, so
        reload again). Never raises, since the caller re-raises the switch's error; False if
        the file could not be put back."""
        try:
            if previous is None:
                self.file.unlink(missing_ok=True)
            else:
                atomic_write(self.file, previous)
        except OSError as e:
            self.emit(Event("warn", f"could not put back the previous {self.file}: {e}"))
            return False
        self._confirm_restored(reload=reload)
        return True

    def _confirm_restored(self, *, reload: bool) -> None:
        slot = self.switcher.routed_slot()
        try:
            if reload and slot:
                self.reload_verified(slot, self.workers())
            elif reload:
                problem = self.run_command(self.cfg.nginx.reload_command, "nginx reload")
                if problem:
                    raise NginxError(f"nginx reload failed: {problem}")
            elif slot:  # nothing reloaded, but njs routes by the file at once: check it
                self.master()
                self.verify_serving(slot, time.monotonic() + self.cfg.nginx.reload_timeout)
        except Exception as e:  # any: a failed check must not hide the switch's error
            why = e.message if isinstance(e, ZdError) else f"{type(e).__name__}: {e}"
            self.emit(Event("warn", f"the restored routing ({slot or 'none'}) could not be "
                                    f"verified: {why}"))
            return
        self.emit(Event("warn", f"restored the previous routing ({slot or 'none'})"))

    def wait_workers_gone(self, pids: frozenset[int], timeout: float) -> set[int]:
        """Wait until the pre-reload workers exited (their requests done); return leftovers."""
        deadline = time.monotonic() + timeout
        while True:
            alive = {p for p in pids if _alive(p)}
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.05)


def _listening(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        conns = (getattr(proc, "net_connections", None) or proc.connections)(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(c.status == psutil.CONN_LISTEN for c in conns)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# switch.py builds on the helpers above; imported last so both modules load in either order.
from zdagent.nginx.split import Split  # noqa: E402
from zdagent.nginx.switch import (  # noqa: E402
    NjsSwitcher,
    ReloadSwitcher,
    SlotPorts,
    Switcher,
    switcher_for,
)

__all__ = [
    "NJS_KEEPALIVE_S", "UPSTREAM_HEADER", "Nginx", "NjsSwitcher", "ReloadSwitcher", "SlotPorts",
    "SwitchResult", "Switcher", "answering_upstream", "atomic_write", "live_port_in",
    "pool_name", "render_site", "render_template", "render_upstream", "routed_slot",
    "served_by", "switcher_for", "template_names", "templates_dir", "upstream_name",
]
