"""How traffic moves from one slot to the other: one ``Switcher`` per app, chosen once.

``nginx.switch_mode`` picks the strategy when the app's Nginx side is built
(``switcher_for``); nothing else branches on the mode. A switcher renders the app's files,
says which slot they route to, performs a verified switch (restoring the previous routing on
any failure) and knows how the old slot drains:

* ``ReloadSwitcher``: the upstream file names the live slot; a switch rewrites it, runs
  ``nginx -t`` and a verified reload. The old workers' exit is the drain.
* ``NjsSwitcher``: the upstream file holds both slots' groups once; a switch renames a new
  one-line active file into place, which njs reads on every request. No reload, no worker
  exits, so the drain waits for Nginx's connections to the old slot to close.
"""

from __future__ import annotations

import copy
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from zdagent import config as _config
from zdagent.config import AppConfig
from zdagent.errors import EnvironmentProblem, NginxError, ZdError
from zdagent.events import Event
from zdagent.nginx import (
    NJS_KEEPALIVE_S,
    SwitchResult,
    atomic_write,
    live_port_in,
    mark,
    pool_name,
    render_template,
    task_ports_line,
    template_names,
    templates_dir,
    upstream_name,
)
from zdagent.nginx.maintenance import maintenance_conf, maintenance_file
from zdagent.nginx.split import (
    FORCE_HEADER,
    Split,
    active_text,
    parse_active,
    parse_upstream,
    weights,
)

if TYPE_CHECKING:
    from zdagent.nginx import Nginx


SlotPorts = Callable[[str], tuple[int, ...]]
_HEADER_LIVE_RE = re.compile(r"^# zdagent: live=(blue|green)\b", re.M)


def fixed_ports(cfg: AppConfig) -> SlotPorts:
    """Each slot on its slot port (containers, and swarm services on a published port)."""
    return lambda slot: (cfg.slot_port(slot),)


class SeenPorts:
    """A slot's ports as asked while rendering, remembered: the upstream file records the
    task ports it was rendered with, without asking Docker twice."""

    def __init__(self, ports: SlotPorts) -> None:
        self._ports = ports
        self.seen: dict[str, tuple[int, ...]] = {}

    def __call__(self, slot: str) -> tuple[int, ...]:
        self.seen[slot] = self._ports(slot)
        return self.seen[slot]


class Switcher(ABC):
    """One switch strategy for one app; pure where it can be (rendering, routing).

    ``ports`` says where a slot answers: its slot port, or (swarm task-ports) the port of
    each running task, asked whenever a file is rendered."""

    mode: ClassVar[str]

    def __init__(self, cfg: AppConfig, ports: SlotPorts | None = None) -> None:
        self.cfg = cfg
        self.ports = SeenPorts(ports or fixed_ports(cfg))

    def upstream_text(self, live_slot: str | None, standby_slot: str | None,
                      split: Split | None = None) -> str:
        """The upstream file as written: the template's text under zdagent's header, and
        (task-ports) the line saying which slot each rendered port belongs to."""
        self.ports.seen.clear()
        text = mark(self.cfg.name, self.render_upstream(live_slot, standby_slot, split))
        if not self.cfg.swarm.task_ports:
            return text
        return text + ("" if text.endswith("\n") else "\n") + task_ports_line(self.ports.seen)

    def slot_of(self, port: int) -> str | None:
        """The slot that answers on ``port`` (a task's or the slot's own)."""
        return self.cfg.slot_for_port(port) or next(
            (s for s in ("blue", "green") if self.cfg.swarm.task_ports and
             port in self.ports(s)), None)

    @abstractmethod
    def render_upstream(self, live_slot: str | None, standby_slot: str | None,
                        split: Split | None = None) -> str:
        """The upstream file's text (without zdagent's header, which the caller adds)."""

    @abstractmethod
    def render_site(self) -> str:
        """The server block the operator installs once."""

    @abstractmethod
    def routed_slot(self) -> str | None:
        """The slot the files on disk route to (None if nothing is routed yet)."""

    @abstractmethod
    def switch(self, nginx: Nginx, live_slot: str, standby_slot: str | None) -> SwitchResult:
        """Route to ``live_slot``, verified through Nginx; on failure restore and raise."""

    @abstractmethod
    def split(self, nginx: Nginx, split: Split) -> SwitchResult:
        """Route ``split.percent`` % to the candidate, verified (both slots answer through
        Nginx); on failure restore the previous routing and raise."""

    @abstractmethod
    def routed_split(self) -> Split | None:
        """The canary split the files on disk hold (None when one slot takes everything)."""

    def preflight(self) -> None:
        """Raise (before anything is touched) if the files on disk cannot be switched."""
        return None  # reload mode: any upstream file zdagent wrote can be rewritten

    def wait_old_connections(self, nginx: Nginx, ports: tuple[int, ...],
                             timeout: float) -> int:
        """After the switch: wait until nothing is in flight to the old slot on ``ports``;
        return how many connections were still open when ``timeout`` ran out."""
        return 0

    def drop_backup(self, nginx: Nginx, live_slot: str) -> bool:
        """Before the standby's container is replaced by a candidate: stop routing to it as
        the live slot's backup, so a hiccup of the live slot never reaches an unverified
        candidate. True if the routing changed. Reload mode: nothing (it would cost a
        reload per deploy); the backup there is the old version's port until the switch."""
        return False

    def restore_backup(self, nginx: Nginx, live_slot: str) -> None:
        """Undo ``drop_backup`` when the standby was kept after all."""
        return None


class ReloadSwitcher(Switcher):
    """Rewrite the upstream file, ``nginx -t``, verified reload (plain Nginx)."""

    mode = "reload"

    def render_upstream(self, live_slot: str | None, standby_slot: str | None,
                        split: Split | None = None) -> str:
        cfg = self.cfg
        canary: dict[str, object] = {"canary_port": None, "canary_ports": ()}
        if split is not None:  # both primary, weighted; no backup
            live_w, canary_w = weights(split.percent)
            ports = self.ports(split.candidate)
            canary = {"canary_port": ports[0], "canary_ports": ports,
                      "canary_slot": split.candidate, "canary_percent": split.percent,
                      "live_weight": live_w, "canary_weight": canary_w}
            standby_slot = None
        live = self.ports(live_slot) if live_slot else ()
        standby = self.ports(standby_slot) if standby_slot else ()
        return render_template(
            cfg.nginx.upstream_template, "upstream.conf.j2", **template_names(cfg),
            live_slot=live_slot, live_port=live[0] if live else None, live_ports=live,
            placeholder_port=cfg.slots.blue_port,
            standby_slot=standby_slot, standby_port=standby[0] if standby else None,
            standby_ports=standby,
            **canary,
        )

    def render_site(self) -> str:
        return _site(self.cfg, "site.conf.j2")

    def routed_slot(self) -> str | None:
        """The primary server's slot; task-ports: the header's, since a task's port
        outlives its task in the file until the next render."""
        try:
            text = self.cfg.nginx.upstream_file.read_text()
        except OSError:
            return None
        header = _HEADER_LIVE_RE.search(text) if self.cfg.swarm.task_ports else None
        if header:
            return header.group(1)
        port = live_port_in(text)
        return self.slot_of(port) if port else None

    def routed_split(self) -> Split | None:
        try:
            return parse_upstream(self.cfg.nginx.upstream_file.read_text())
        except OSError:
            return None

    def switch(self, nginx: Nginx, live_slot: str, standby_slot: str | None) -> SwitchResult:
        text = nginx.render_upstream(live_slot, standby_slot)  # a template error: no write
        return self._install(nginx, text, lambda old: nginx.reload_verified(live_slot, old))

    def split(self, nginx: Nginx, split: Split) -> SwitchResult:
        text = nginx.render_upstream(split.stable, None, split)

        def verify(old: frozenset[int]) -> None:
            nginx.reload_verified(split.stable, old, split=split)

        return self._install(nginx, text, verify)

    def _install(self, nginx: Nginx, text: str,
                 verify: Callable[[frozenset[int]], None]) -> SwitchResult:
        """Write ``text``, ``nginx -t``, reload and ``verify``; restore on any failure."""
        start = time.monotonic()
        previous = nginx.current_text()
        old: frozenset[int] = frozenset()
        reloaded = False
        try:
            atomic_write(nginx.file, text)
            problem = nginx.run_command(self.cfg.nginx.test_command, "nginx -t")
            if problem:
                raise NginxError(f"nginx -t failed: {problem}",
                                 hint="fix the template (nginx.upstream_template)")
            old = nginx.workers()
            reloaded = True
            verify(old)
        except Exception as e:
            restored = nginx.restore_upstream(previous, reload=reloaded)
            raise restored_error(e, restored, "the previous upstream",
                                 fallback_hint="check Nginx's error log") from _cause(e)
        return SwitchResult(old_workers=old, seconds=time.monotonic() - start)


class NjsSwitcher(Switcher):
    """Rename a one-line active file into place; njs reads it per request (no reload)."""

    mode = "njs"

    def render_upstream(self, live_slot: str | None, standby_slot: str | None,
                        split: Split | None = None) -> str:
        cfg = self.cfg  # both slots' groups: independent of the live slot and of a split
        return render_template(
            cfg.nginx.upstream_template, "upstream_njs.conf.j2", **template_names(cfg),
            blue_port=cfg.slots.blue_port, green_port=cfg.slots.green_port,
            blue_ports=self.ports("blue"), green_ports=self.ports("green"),
            js_dir=str(templates_dir()), active_file=str(cfg.nginx.active_file),
            keepalive_timeout=NJS_KEEPALIVE_S,
        )

    def render_site(self) -> str:
        return _site(self.cfg, "site_njs.conf.j2")

    def routed_slot(self) -> str | None:
        """The active file's slot; before the njs names changed it was the legacy file."""
        for path in (self.cfg.nginx.active_file, self.legacy_active_file):
            try:
                text = path.read_text()
            except OSError:
                continue
            live, _split = parse_active(self.cfg.name, text)
            return live or next((s for s in ("blue", "green")
                                 if text.strip() == self._legacy_pool(s)), None)
        return None

    def routed_split(self) -> Split | None:
        try:
            return parse_active(self.cfg.name, self.cfg.nginx.active_file.read_text())[1]
        except OSError:
            return None

    # --- installs from before the njs names changed -------------------------------------

    @property
    def legacy_active_file(self) -> Path:
        """Where the active file was (``<stem>.active``) before it followed the file name."""
        f = self.cfg.nginx.upstream_file
        return f.with_name(f.name.split(".")[0] + ".active")

    def _legacy_pool(self, slot: str) -> str:
        return f"{upstream_name(self.cfg.name)}_{slot}"  # now pool_name(): zdagent__<slot>_<app>

    def legacy_problem(self) -> str | None:
        """What on disk still has the pre-upgrade njs names (None if nothing).

        An old site block proxies to ``$zdagent_<app>_pool`` and reads ``<stem>.active``:
        a switch would fail at ``nginx -t`` (unknown variable) or route nowhere.
        """
        nginx, old = self.cfg.nginx, upstream_name(self.cfg.name)
        try:
            text = nginx.upstream_file.read_text()
        except OSError:
            text = ""
        if re.search(rf"^\s*upstream\s+{old}_(?:blue|green)\s*\{{|\${old}_pool\b", text,
                     re.M):
            return f"{nginx.upstream_file} uses the pre-upgrade njs names (${old}_pool)"
        try:
            name = nginx.active_file.read_text().strip()
        except OSError:
            name = None
        if name in (self._legacy_pool("blue"), self._legacy_pool("green")):
            return f"{nginx.active_file} names the pre-upgrade pool {name}"
        legacy = self.legacy_active_file
        if name is None and legacy != nginx.active_file and legacy.exists():
            return f"{legacy} is the pre-upgrade active file and {nginx.active_file} is missing"
        return None

    def preflight(self) -> None:
        problem = self.legacy_problem()
        if problem is None:
            return
        nginx, slot = self.cfg.nginx, self.routed_slot()
        render = f"zdagent nginx render -c {self.cfg.path}"
        activate = (f"echo {pool_name(self.cfg, slot)} > {nginx.active_file} && "
                    if slot else "")
        raise EnvironmentProblem(
            f"{problem}: this zdagent renamed them, so the site block must be re-rendered",
            hint=f"re-render the site block: {render} --site > <site file> and "
                 f"{render} > {nginx.upstream_file}; then {activate}"
                 "nginx -t && nginx -s reload (nothing was changed)")

    # --- the switch ---------------------------------------------------------------------

    def switch(self, nginx: Nginx, live_slot: str, standby_slot: str | None) -> SwitchResult:
        """Reload only when the upstream file itself must change (first use, new ports).
        Without a standby the live slot's group without backup is named (if the template
        has one)."""
        def verify(deadline: float) -> None:
            nginx.verify_serving(live_slot, deadline)

        def active_line(running: str, wanted: str) -> str:
            # The running Nginx must know the group too (an upgrade's first switch may not
            # reload: then it keeps the backup).
            alone = standby_slot is None and self._has_alone(running) and \
                self._has_alone(wanted)
            return pool_name(self.cfg, live_slot, alone=alone) + "\n"

        return self._install(nginx, live_slot, active_line, verify)

    def drop_backup(self, nginx: Nginx, live_slot: str) -> bool:
        """Name the live slot's group without backup, when the active file names its group
        with one and the upstream file Nginx runs has the group without (no reload)."""
        active = self.cfg.nginx.active_file
        try:
            routed = active.read_text().strip()
        except OSError:
            return False
        if routed != pool_name(self.cfg, live_slot) or not self._has_alone(
                nginx.current_text() or ""):
            return False
        atomic_write(active, pool_name(self.cfg, live_slot, alone=True) + "\n")
        try:  # the group must exist in the Nginx that runs, not only on disk
            nginx.verify_serving(live_slot, time.monotonic() + self.cfg.nginx.reload_timeout)
        except Exception as e:  # e.g. a hung live slot: the deploy that replaces it goes on
            atomic_write(active, routed + "\n")
            nginx.emit(Event("warn", f"kept {self.cfg.name}'s standby as {live_slot}'s backup "
                                     f"(without it, {live_slot} did not answer: {e})"))
            return False
        return True

    def restore_backup(self, nginx: Nginx, live_slot: str) -> None:
        """After a deploy that never replaced the standby: the live slot's group with it."""
        active = self.cfg.nginx.active_file
        try:
            if active.read_text().strip() == pool_name(self.cfg, live_slot, alone=True):
                atomic_write(active, pool_name(self.cfg, live_slot) + "\n")
        except OSError as e:
            nginx.emit(Event("warn", f"could not route {live_slot}'s backup again: {e}"))

    def _has_alone(self, upstream_text: str) -> bool:
        """Whether an upstream file defines both groups without backup (a custom template
        from before they existed may not: then the groups with backup stay in use)."""
        return all(re.search(rf"^\s*upstream\s+{pool_name(self.cfg, s, alone=True)}\s*\{{",
                             upstream_text, re.M) for s in ("blue", "green"))

    def split(self, nginx: Nginx, split: Split) -> SwitchResult:
        """The JSON active file; each slot must answer when zdagent asks for its pool."""
        def verify(deadline: float) -> None:
            for slot in (split.candidate, split.stable):
                nginx.verify_serving(slot, deadline,
                                     headers={FORCE_HEADER: pool_name(self.cfg, slot)})

        return self._install(nginx, split.stable,
                             lambda _running, _wanted: active_text(self.cfg.name, split), verify)

    def _install(self, nginx: Nginx, live_slot: str, active_line: Callable[[str, str], str],
                 verify: Callable[[float], None]) -> SwitchResult:
        """Write the upstream file if it changed, then the active file that ``active_line``
        makes from the running and the wanted upstream text; verified, or restored."""
        start = time.monotonic()
        self.preflight()
        active = self.cfg.nginx.active_file
        wanted = nginx.render_upstream(live_slot, None)  # a template error: no write
        prev_active = active.read_text() if active.exists() else None
        prev_upstream = nginx.current_text()
        changed = wanted != prev_upstream
        old: frozenset[int] = frozenset()
        try:
            if changed:  # first use, or new ports (swarm task-ports: new tasks)
                atomic_write(nginx.file, wanted)
                problem = nginx.run_command(self.cfg.nginx.test_command, "nginx -t")
                if problem:
                    raise NginxError(f"nginx -t failed: {problem}", hint=_njs_test_hint(
                        self.cfg, problem))
                # Reload before the active file changes: workers of the old config would
                # route by the new active file to their groups' old ports (gone tasks).
                old = nginx.workers()
                if not nginx.wait_not_accepting(old, nginx.reload(old)):
                    nginx.emit(Event("warn", "old Nginx workers still held their listening "
                                             "sockets after the reload; switching anyway"))
            deadline = time.monotonic() + self.cfg.nginx.reload_timeout
            running = wanted if changed else prev_upstream or ""
            atomic_write(active, active_line(running, wanted))
            verify(deadline)
        except Exception as e:
            restored = self._restore(nginx, prev_active, prev_upstream, reload=changed)
            hint = (f"in njs mode Nginx's workers must be able to read {active} "
                    "(look for 'zdagent: cannot read' in its error log)")
            raise restored_error(e, restored, "the previous routing", hint=hint) from _cause(e)
        return SwitchResult(old_workers=old, seconds=time.monotonic() - start)

    def _restore(self, nginx: Nginx, prev_active: str | None, prev_upstream: str | None, *,
                 reload: bool) -> bool:
        """Put both files back (never raises); False if one could not be put back."""
        active = self.cfg.nginx.active_file
        try:
            if prev_active is None:
                active.unlink(missing_ok=True)
            else:
                atomic_write(active, prev_active)
        except OSError as e:
            nginx.emit(Event("warn", f"could not put back the previous {active}: {e}"))
            return False
        return nginx.restore_upstream(prev_upstream, reload=reload)

    def wait_old_connections(self, nginx: Nginx, ports: tuple[int, ...],
                             timeout: float) -> int:
        # No worker exits in njs mode: wait for Nginx's connections to the old slot.
        return nginx.wait_connections_closed(ports, timeout)


def restored_error(e: Exception, restored: bool, what: str, *, hint: str = "",
                   fallback_hint: str = "") -> ZdError:
    """The switch's error, saying whether the restore worked; zdagent's errors keep their
    class (exit code), anything else becomes an NginxError naming it. ``hint`` is added to
    the error's own hint, ``fallback_hint`` used only if it has none."""
    note = (f"{what} was restored" if restored
            else f"{what} could NOT be put back: check which slot Nginx routes to")
    own = e.hint if isinstance(e, ZdError) else ""
    full_hint = "; ".join(h for h in (own or fallback_hint, hint) if h)
    if not isinstance(e, ZdError):
        return NginxError(f"switch failed: {type(e).__name__}: {e}; {note}", hint=full_hint)
    err = copy.copy(e)  # same class, so the same exit code
    err.message = f"{e.message}; {note}"
    err.args = (err.message,)
    err.hint = full_hint
    return err


def _cause(e: Exception) -> Exception | None:
    """Chain only what zdagent did not explain itself (its messages carry the cause)."""
    return None if isinstance(e, ZdError) else e


def _njs_test_hint(cfg: AppConfig, problem: str) -> str:
    """What to do when ``nginx -t`` refuses the njs upstream file."""
    if "unknown" in problem and "variable" in problem:
        return (f"the installed site block is older than this zdagent: re-render it "
                f"(zdagent nginx render -c {cfg.path} --site > <site file>), then "
                "nginx -t && nginx -s reload (nothing was changed)")
    return "is the njs module loaded (libnginx-mod-http-js)?"


def _site(cfg: AppConfig, template: str) -> str:
    return render_template(
        cfg.nginx.site_template, template, **template_names(cfg),
        active_file=str(cfg.nginx.active_file), upstream_file=str(cfg.nginx.upstream_file),
        listen=cfg.nginx.listen, server_name=cfg.nginx.server_name,
        maintenance_file=str(maintenance_file(cfg)), maintenance_conf=str(maintenance_conf(cfg)),
        verify_path=cfg.nginx.verify_path.split("?", 1)[0],
        access_log=str(cfg.nginx.access_log), log_format=_config.log_format_name(cfg.name),
        own_var=_config.own_variable(cfg.name),
        **site_tls(cfg),
    )


def site_tls(cfg: AppConfig) -> dict[str, object]:
    """The site's HTTPS variables: ``acme_webroot`` once [tls] is enabled (plain HTTP serves
    the challenge), ``https`` once the certificate exists too (the HTTPS server, the
    redirect). Before that Nginx would refuse a config naming missing certificate files."""
    tls = cfg.tls
    if tls is None:
        return {"acme_webroot": None, "https": None}
    port = tls.listen_port
    https = {"listen": tls.listen, "port_suffix": "" if port == 443 else f":{port}",
             "certificate": str(tls.certificate),
             "certificate_key": str(tls.certificate_key)} if tls.ready else None
    return {"acme_webroot": str(tls.webroot), "https": https}


SWITCHERS: dict[str, type[Switcher]] = {s.mode: s for s in (ReloadSwitcher, NjsSwitcher)}


def switcher_for(cfg: AppConfig, ports: SlotPorts | None = None) -> Switcher:
    """The app's switch strategy, from ``nginx.switch_mode`` (validated by config)."""
    return SWITCHERS[cfg.nginx.switch_mode](cfg, ports)
