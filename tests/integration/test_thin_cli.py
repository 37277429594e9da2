"""The CLI as a thin client of a running daemon: no engine, Docker SDK, httpx, Typer or Rich.

Each command runs under ``python -X importtime`` so the test sees every module the process
imported; the daemon is a real ``zdagent daemon`` over a config dir holding the test app.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from zdagent.client import DaemonClient

HEAVY = ("docker", "httpx", "typer", "rich", "click", "jinja2", "asyncio", "zdagent.cli",
         "zdagent.deploy", "zdagent.slots", "zdagent.nginx", "zdagent.config", "zdagent.api",
         "zdagent.probe", "zdagent.store")


class Daemon:
    """`zdagent daemon` over a private config dir holding copies of the given apps' configs."""

    def __init__(self, *apps) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="zdthin-"))
        self.config_dir = self.dir / "apps"
        self.config_dir.mkdir()
        self.socket = self.dir / "zd.sock"
        for app in apps:
            shutil.copy(app.config, self.config_dir / f"{app.name}.toml")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zdagent", "daemon", "--config-dir", str(self.config_dir),
             "--socket", str(self.socket)],
            stdout=subprocess.DEVNULL, stderr=(self.dir / "daemon.log").open("w"))
        deadline = time.monotonic() + 30
        while True:
            try:
                DaemonClient(str(self.socket), timeout=2).get("/v1/status")
                return
            except (OSError, ValueError):
                assert self.proc.poll() is None, (self.dir / "daemon.log").read_text()
                assert time.monotonic() < deadline, "the daemon did not come up"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon():
    made: list[Daemon] = []

    def start(*apps) -> Daemon:
        made.append(Daemon(*apps))
        return made[-1]

    yield start
    for d in made:
        d.stop()


def traced(app, *args: str, env: dict[str, str] | None = None
           ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m zdagent ARGS``; the result and every imported module."""
    full_env = {**os.environ, "ZDAGENT_CONFIG": str(app.config), "NO_COLOR": "1",
                **app.env, **(env or {})}
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "zdagent", *args],
                       capture_output=True, text=True, timeout=180, env=full_env, check=False)
    modules = {line.split("|")[-1].strip() for line in p.stderr.splitlines()
               if line.startswith("import time:")}
    assert "zdagent.thin" in modules, p.stderr[-2000:]
    p.stderr = "\n".join(line for line in p.stderr.splitlines()
                         if not line.startswith("import time:"))
    return p, modules


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_status_deploy_rollback_through_the_daemon_import_nothing_heavy(make_app, daemon):
    app = make_app()
    app.ok("deploy", "v1")
    d = daemon(app)
    app.env["ZDAGENT_SOCKET"] = str(d.socket)

    # The test's config is a copy at another path: the thin client finds the app by name.
    p, modules = traced(app, "deploy", "v2")
    assert p.returncode == 0, p.stderr
    assert "deployed v2 on the green slot" in p.stderr and "▸" in p.stderr
    assert heavy(modules) == set(), heavy(modules)
    assert app.served_version() == "v2"

    # The daemon's own file: found by path, without reading it.
    p, modules = traced(app, "rollback", env={"ZDAGENT_CONFIG": str(d.config_dir /
                                                                    f"{app.name}.toml")})
    assert p.returncode == 0, p.stderr
    assert "rolled back to v1 on the blue slot" in p.stderr
    assert heavy(modules) == set() and "tomllib" not in modules, heavy(modules)
    assert app.served_version() == "v1"

    p, modules = traced(app, "status", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["live_slot"] == "blue" and data["daemon"]["pid"] == d.proc.pid
    assert heavy(modules) == set(), heavy(modules)

    p, modules = traced(app, "status")
    assert p.returncode == 0, p.stderr
    assert "blue (live)" in p.stdout and "nginx routes to: blue (confirmed live" in p.stdout
    assert "daemon: up since" in p.stdout
    assert heavy(modules) == set(), heavy(modules)


def test_daemon_errors_keep_their_exit_codes_on_the_thin_path(make_app, daemon):
    app = make_app()
    d = daemon(app)
    app.env["ZDAGENT_SOCKET"] = str(d.socket)

    p, modules = traced(app, "deploy", "Bad!Version")  # refused by the daemon: usage, 2
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: invalid version") and "Traceback" not in p.stderr
    assert heavy(modules) == set(), heavy(modules)

    p, _ = traced(app, "rollback")  # nothing deployed yet: the operation fails, 1
    assert p.returncode == 1, p.stderr
    assert "error: nothing is deployed yet" in p.stderr and "hint: deploy a version" in p.stderr


def test_other_command_lines_go_to_the_full_cli(make_app, daemon):
    app = make_app()
    app.ok("deploy", "v1")
    d = daemon(app)
    app.env["ZDAGENT_SOCKET"] = str(d.socket)

    p, modules = traced(app, "status", "--local", "--json")  # an option the thin path leaves
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["daemon"] is None
    assert "zdagent.cli" in modules

    p, modules = traced(app, "rollback", "--help")
    assert p.returncode == 0 and "Switch traffic back to the standby" in p.stdout
    assert "zdagent.cli" in modules

    # A config the daemon does not manage: run in this process, as before.
    other = make_app()
    p = other.cli("status", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["daemon"] is None


def test_the_full_cli_reaches_the_daemon_without_the_engine_too(make_app, daemon):
    """The full CLI (what ssh-gate runs in-process) uses the same stdlib client."""
    app = make_app()
    app.ok("deploy", "v1")
    d = daemon(app)
    app.env["ZDAGENT_SOCKET"] = str(d.socket)
    app.ok("deploy", "v2")
    env = {**os.environ, "ZDAGENT_CONFIG": str(app.config), "NO_COLOR": "1", **app.env}
    p = subprocess.run([sys.executable, "-X", "importtime", "-c",
                        "import sys; from zdagent.cli import main; sys.argv[0] = 'zdagent'; "
                        "main()", "rollback", "--json"],
                       capture_output=True, text=True, timeout=180, env=env, check=False)
    modules = {line.split("|")[-1].strip() for line in p.stderr.splitlines()
               if line.startswith("import time:")}
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["slot"] == "blue" and app.served_version() == "v1"
    assert "zdagent.cli" in modules and "zdagent.thin" not in modules
    assert not engine_modules(modules), engine_modules(modules)

    p = subprocess.run([sys.executable, "-X", "importtime", "-c",
                        "import sys; from zdagent.cli import main; sys.argv[0] = 'zdagent'; "
                        "main()", "status"],
                       capture_output=True, text=True, timeout=180, env=env, check=False)
    modules = {line.split("|")[-1].strip() for line in p.stderr.splitlines()
               if line.startswith("import time:")}
    assert p.returncode == 0, p.stderr[-2000:]
    assert "blue (live)" in p.stdout
    assert not engine_modules(modules), engine_modules(modules)


def engine_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in ("docker", "httpx")
            or m in ("zdagent.deploy", "zdagent.slots", "zdagent.nginx", "zdagent.status")}
