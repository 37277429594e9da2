"""Image retention, `zdagent prune`, `zdagent logs` and `zdagent exec` on real Docker + Nginx."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid

import docker.errors
import httpx
import pytest

from tests.conftest import make_context, remove_container

pytestmark = pytest.mark.integration


def _set(app, section: str, lines: str) -> None:
    """Add keys at the top of a section of the app's config."""
    text = app.config.read_text()
    assert f"[{section}]\n" in text
    app.config.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n", 1))


def _versions(client, app) -> set[str]:
    return {i.labels.get("zdagent.version")
            for i in client.images.list(filters={"label": f"zdagent.app={app.name}"})}


def _remove_images(client, app) -> None:
    for i in client.images.list(filters={"label": f"zdagent.app={app.name}"}):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(i.id, force=True)


def test_retention_keeps_live_standby_newest_and_used_images(make_app, docker_client,
                                                              tmp_path):
    ctx = make_context(tmp_path / "ctx")
    tag = f"zdtest-ret-{uuid.uuid4().hex[:6]}"
    app = make_app(source=f'[source.build]\ncontext = "{ctx}"\ntag = "{tag}"')
    _set(app, "app", "retain = 3")
    holder = None
    try:
        for n in range(1, 9):
            app.ok("deploy", f"r{n}", "--local")
            assert app.served_version() == f"r{n}"
            if n == 2:  # a stopped container of r2's image: r2 must survive
                holder = docker_client.containers.create(
                    f"{tag}:r2", command=["/bin/busybox", "true"],
                    labels={"zdagent.app": app.name, "zdtest.holder": "1"})
        # live r8, standby r7, the newest other r6, and r2 (used by a stopped container)
        assert _versions(docker_client, app) == {"r2", "r6", "r7", "r8"}
        status = json.loads(app.ok("status", "--json", "--local").stdout)
        assert {status["slots"][s]["version"] for s in ("blue", "green")} == {"r7", "r8"}

        holder.remove()
        holder = None
        dry = json.loads(app.ok("prune", "--dry-run", "--json").stdout)
        assert dry["dry_run"] is True
        assert [c["versions"] for c in dry["remove"]] == [["r2"]]
        assert dry["bytes_freed"] > 0
        assert _versions(docker_client, app) == {"r2", "r6", "r7", "r8"}  # nothing changed
        real = json.loads(app.ok("prune", "--json").stdout)
        assert real["remove"] == dry["remove"]
        assert _versions(docker_client, app) == {"r6", "r7", "r8"}
        assert json.loads(app.ok("prune", "--dry-run", "--json").stdout)["remove"] == []

        p = app.cli("rollback", "--to", "r3", "--local")
        assert p.returncode == 1, p.stderr
        assert "pruned" in p.stderr and "zdagent deploy r3" in p.stderr
        assert app.served_version() == "r8"
    finally:
        if holder is not None:
            remove_container(docker_client, holder.id)
        for cid in [c.id for c in docker_client.containers.list(
                all=True, filters={"label": f"zdagent.app={app.name}"})]:
            remove_container(docker_client, cid)
        _remove_images(docker_client, app)


@pytest.fixture
def live_app(make_app, tmp_path):
    """An app serving zdtest:v1, with an env value and an env_file secret."""
    app = make_app()
    env_file = tmp_path / "secrets.env"
    env_file.write_text("SECRET_TOKEN=s3cr3t-value\n")
    env_file.chmod(0o600)
    _set(app, "container", f'env = {{ GREETING = "hi" }}\nenv_file = "{env_file}"')
    app.ok("deploy", "v1", "--local")
    return app


def _log_line(app, marker: str) -> None:
    r = httpx.get(f"{app.url}/cgi-bin/log?{marker}", timeout=10)
    assert r.status_code == 200 and marker in r.text


def test_logs_tail_shows_the_live_slot(live_app):
    marker = f"tail-{uuid.uuid4().hex[:8]}"
    _log_line(live_app, marker)
    out = live_app.ok("logs", "--tail", "5").stdout
    assert f"app log: {marker}" in out
    assert len(out.splitlines()) <= 5
    everything = live_app.ok("logs", "--slot", "live").stdout
    assert "sample app v1 starting on :8080" in everything
    p = live_app.cli("logs", "--slot", "standby")  # one deploy: no standby yet
    assert p.returncode == 1 and "has no container" in p.stderr and "hint:" in p.stderr
    p = live_app.cli("logs", "--since", "soon")
    assert p.returncode == 2 and "hint:" in p.stderr


def test_logs_follow_streams_new_lines(live_app):
    env = {**os.environ, "ZDAGENT_CONFIG": str(live_app.config)}
    proc = subprocess.Popen([sys.executable, "-m", "zdagent", "logs", "-f"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"logs -f ended: {proc.stderr.read()}"
            if text in line:
                return
        pytest.fail(f"{text!r} did not appear within 30s")

    try:
        wait_for("starting on :8080")  # attached: the history came through
        marker = f"follow-{uuid.uuid4().hex[:8]}"
        _log_line(live_app, marker)
        wait_for(f"app log: {marker}")
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_exec_passes_exit_code_env_and_leaves_nothing(live_app, docker_client):
    script = ('echo "v=$ZDAGENT_VERSION g=$GREETING"; '
              'test "$SECRET_TOKEN" = s3cr3t-value && echo secret-ok; exit 7')
    p = live_app.cli("exec", "--", "/bin/busybox", "sh", "-c", script)
    assert p.returncode == 7, p.stderr
    assert "v=v1 g=hi" in p.stdout and "secret-ok" in p.stdout
    assert "s3cr3t-value" not in p.stdout + p.stderr
    left = docker_client.containers.list(
        all=True, filters={"label": ["zdagent.oneoff=1", f"zdagent.app={live_app.name}"]})
    assert left == []
    # the slots are untouched and still found as slots
    status = json.loads(live_app.ok("status", "--json", "--local").stdout)
    assert status["live_slot"] in ("blue", "green") and status["drift"] == []
    ok = live_app.cli("exec", "--", "/bin/busybox", "true")
    assert ok.returncode == 0, ok.stderr


def test_gate_refuses_logs_and_exec_unless_scoped(live_app, tmp_path):
    apps = tmp_path / "apps"
    apps.mkdir()
    shutil.copy(live_app.config, apps / f"{live_app.name}.toml")

    def gate(command: str, *scope: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SSH_ORIGINAL_COMMAND": command,
               "ZDAGENT_GATE_LOG": str(tmp_path / "gate.log")}
        return subprocess.run([sys.executable, "-m", "zdagent", "ssh-gate", "--config-dir",
                               str(apps), *scope], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    for cmd in (f"logs {live_app.name}", f"exec {live_app.name} /bin/busybox true"):
        p = gate(cmd)
        assert p.returncode == 2 and "may not run" in p.stderr, p.stderr
    p = gate(f"logs {live_app.name} --tail 50", "--verbs", "status,logs,exec")
    assert p.returncode == 0, p.stderr
    assert "starting on :8080" in p.stdout
    p = gate(f"exec {live_app.name} /bin/busybox sh -c exit", "--verbs", "exec")
    assert p.returncode == 0, p.stderr


def test_exec_tty_gives_an_interactive_console(live_app, docker_client):
    """A local terminal (a pty here) drives a shell in the one-off container."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "ZDAGENT_CONFIG": str(live_app.config)}
    proc = subprocess.Popen([sys.executable, "-m", "zdagent", "exec", "--tty", "--",
                             "/bin/busybox", "sh"], env=env, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        os.write(master, b"echo tty-$((6*7)); exit 3\n")
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            import select

            if select.select([master], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(master, 4096)
        assert proc.poll() is not None, f"exec --tty still runs after 20s; it showed {seen!r}"
        assert proc.wait(timeout=10) == 3, seen
        assert b"tty-42" in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    left = docker_client.containers.list(
        all=True, filters={"label": ["zdagent.oneoff=1", f"zdagent.app={live_app.name}"]})
    assert left == []
