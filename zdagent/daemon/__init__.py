"""``zdagent daemon`` / ``zdagentd``: one process for every app in the config directory.

``server`` runs the lifecycle (startup, main loop, shutdown, SIGHUP reload) and supervises one
watch task per app; ``routes`` answers the control API; ``queue`` runs each app's operations
one after the other; ``engines`` holds the one Docker client and calls the engine in threads;
``web`` (with ``metrics`` and ``looks``) serves the read-only status page and Prometheus
metrics when ``--http`` is given.
"""

from zdagent.daemon.server import Daemon, main, run

__all__ = ["Daemon", "main", "run"]
