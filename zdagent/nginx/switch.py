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

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from zdagent.config import AppConfig
from zdagent.errors import NginxError
from zdagent.events import Event
from zdagent.nginx import (
    NJS_KEEPALIVE_S,
    SwitchResult,
    atomic_write,
    live_port_in,
    pool_name,
    render_template,
    template_names,
    templates_dir,
)

if TYPE_CHECKING:
    from zdagent.nginx import Nginx


class Switcher(ABC):
    """One switch strategy for one app; pure where it can be (rendering, routing)."""

    mode: ClassVar[str]

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def render_upstream(self, live_slot: str | None, standby_slot: str | None) -> str:
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

    def wait_old_connections(self, nginx: Nginx, port: int, timeout: float) -> int:
        """After the switch: wait until nothing is in flight to the old slot on ``port``;
        return how many connections were still open when ``timeout`` ran out."""
        return 0


class ReloadSwitcher(Switcher):
    """Rewrite the upstream file, ``nginx -t``, verified reload (plain Nginx)."""

    mode = "reload"

    def render_upstream(self, live_slot: str | None, standby_slot: str | None) -> str:
        cfg = self.cfg
        return render_template(
            cfg.nginx.upstream_template, "upstream.conf.j2", **template_names(cfg),
            live_slot=live_slot, live_port=cfg.slot_port(live_slot) if live_slot else None,
            placeholder_port=cfg.slots.blue_port,
            standby_slot=standby_slot,
            standby_port=cfg.slot_port(standby_slot) if standby_slot else None,
        )

    def render_site(self) -> str:
        return _site(self.cfg, "site.conf.j2")

    def routed_slot(self) -> str | None:
        try:
            port = live_port_in(self.cfg.nginx.upstream_file.read_text())
        except OSError:
            return None
        return self.cfg.slot_for_port(port) if port else None

    def switch(self, nginx: Nginx, live_slot: str, standby_slot: str | None) -> SwitchResult:
        start = time.monotonic()
        previous = nginx.current_text()
        atomic_write(nginx.file, nginx.render_upstream(live_slot, standby_slot))
        problem = nginx.run_command(self.cfg.nginx.test_command, "nginx -t")
        if problem:
            nginx.restore_upstream(previous, reload=False)
            raise NginxError(
                f"nginx -t failed: {problem}",
                hint=f"the previous {nginx.file.name} was restored and the live slot kept "
                "serving; fix the template (nginx.upstream_template)",
            )
        old = nginx.workers()
        try:
            nginx.reload_verified(live_slot, old)
        except NginxError as e:
            nginx.restore_upstream(previous, reload=True)
            raise NginxError(
                f"{e.message}; the previous upstream was restored",
                hint=e.hint or "check Nginx's error log",
            ) from None
        return SwitchResult(old_workers=old, seconds=time.monotonic() - start)


class NjsSwitcher(Switcher):
    """Rename a one-line active file into place; njs reads it per request (no reload)."""

    mode = "njs"

    def render_upstream(self, live_slot: str | None, standby_slot: str | None) -> str:
        cfg = self.cfg  # both slots' groups: independent of the live slot
        return render_template(
            cfg.nginx.upstream_template, "upstream_njs.conf.j2", **template_names(cfg),
            blue_port=cfg.slots.blue_port, green_port=cfg.slots.green_port,
            js_dir=str(templates_dir()), active_file=str(cfg.nginx.active_file),
            keepalive_timeout=NJS_KEEPALIVE_S,
        )

    def render_site(self) -> str:
        return _site(self.cfg, "site_njs.conf.j2")

    def routed_slot(self) -> str | None:
        try:
            name = self.cfg.nginx.active_file.read_text().strip()
        except OSError:
            return None
        return next((s for s in ("blue", "green") if name == pool_name(self.cfg, s)), None)

    def switch(self, nginx: Nginx, live_slot: str, standby_slot: str | None) -> SwitchResult:
        """Reload only when the upstream file itself must change (first use, new ports)."""
        start = time.monotonic()
        active = self.cfg.nginx.active_file
        prev_active = active.read_text() if active.exists() else None
        prev_upstream = nginx.current_text()
        atomic_write(active, pool_name(self.cfg, live_slot) + "\n")
        wanted = nginx.render_upstream(live_slot, None)
        old: frozenset[int] = frozenset()
        try:
            if wanted != prev_upstream:
                atomic_write(nginx.file, wanted)
                problem = nginx.run_command(self.cfg.nginx.test_command, "nginx -t")
                if problem:
                    raise NginxError(f"nginx -t failed: {problem}",
                                     hint="is the njs module loaded (libnginx-mod-http-js)?")
                old = nginx.workers()
                nginx.reload_verified(live_slot, old)
            else:
                nginx.verify_serving(live_slot, time.monotonic() + self.cfg.nginx.reload_timeout)
        except NginxError as e:
            self._restore(nginx, prev_active, prev_upstream, reload=wanted != prev_upstream)
            raise NginxError(
                f"{e.message}; the previous routing was restored",
                hint=f"{e.hint}; in njs mode Nginx's workers must be able to read "
                     f"{active} (look for 'zdagent: cannot read' in its error log)") from None
        return SwitchResult(old_workers=old, seconds=time.monotonic() - start)

    def _restore(self, nginx: Nginx, prev_active: str | None, prev_upstream: str | None, *,
                 reload: bool) -> None:
        active = self.cfg.nginx.active_file
        if prev_active is None:
            active.unlink(missing_ok=True)
        else:
            atomic_write(active, prev_active)
        if reload:
            nginx.restore_upstream(prev_upstream, reload=True)
        else:
            nginx.emit(Event("warn", "restored the previous active slot"))

    def wait_old_connections(self, nginx: Nginx, port: int, timeout: float) -> int:
        # No worker exits in njs mode: wait for Nginx's connections to the old slot.
        return nginx.wait_connections_closed(port, timeout)


def _site(cfg: AppConfig, template: str) -> str:
    return render_template(
        cfg.nginx.site_template, template, **template_names(cfg),
        active_file=str(cfg.nginx.active_file), upstream_file=str(cfg.nginx.upstream_file),
        listen=cfg.nginx.listen, server_name=cfg.nginx.server_name,
    )


SWITCHERS: dict[str, type[Switcher]] = {s.mode: s for s in (ReloadSwitcher, NjsSwitcher)}


def switcher_for(cfg: AppConfig) -> Switcher:
    """The app's switch strategy, from ``nginx.switch_mode`` (validated by config)."""
    return SWITCHERS[cfg.nginx.switch_mode](cfg)
