"""Which slot answered a request, by the port in ``$upstream_addr``.

The slot ports are fixed. Swarm task-ports apps route to each task's own port, which Docker
picks and Swarm changes when it replaces a task, so the map also holds every port the
upstream file has listed (its ``# zdagent: task ports`` line), re-read when the file changes.
Ports that left the file stay: a line read late may name a task that is gone, and Docker
hands a port out again only after cycling through its whole range.
"""

from __future__ import annotations

from zdagent.config import AppConfig
from zdagent.nginx import task_ports_in

MAX_PORTS = 4096  # beyond this many remembered task ports, keep only the file's current ones


class SlotOfPort:
    """The port → slot map for one app's traffic, cheap to ask every tick (one stat)."""

    def __init__(self, cfg: AppConfig) -> None:
        self.fixed = {cfg.slots.blue_port: "blue", cfg.slots.green_port: "green"}
        self.path = cfg.nginx.upstream_file if cfg.swarm.task_ports else None
        self.ports = dict(self.fixed)
        self._key: tuple[int, int, int] | None = None

    def get(self) -> dict[int, str]:
        if self.path is None:
            return self.ports
        try:
            st = self.path.stat()
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key != self._key:
                self._learn(task_ports_in(self.path.read_text()))
                self._key = key
        except OSError:
            pass  # no file yet (nothing deployed), or it is being replaced: the last map
        return self.ports

    def _learn(self, found: dict[int, str]) -> None:
        if len(self.ports) + len(found) > MAX_PORTS:
            self.ports = dict(self.fixed)
        self.ports.update(found)
