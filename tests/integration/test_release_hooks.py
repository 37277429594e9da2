"""The release command, smoke checks and host hooks on real Docker + Nginx."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import docker.errors
import pytest

from tests.integration import test_daemon
from tests.traffic import RequestLoop
from zdagent.config import load_config
from zdagent.daemon.engines import WATCHDOG_PERFORMER
from zdagent.deploy import Engine
from zdagent.events import discard

pytestmark = pytest.mark.integration
daemon_factory = test_daemon.daemon_factory  # the fixture, shared

# Runs in the image (busybox): v2's migration fails, v3's hangs; the others succeed.
RELEASE = """
[hooks]
release = ["/bin/busybox", "sh", "-c", '''
echo "migrating to $ZDAGENT_VERSION in $ZDAGENT_SLOT (deploy $ZDAGENT_DEPLOY_ID) $APP_MODE"
case "$ZDAGENT_VERSION" in
  v2) echo "ERROR: column orders.total already exists" >&2; exit 3 ;;
  v3) echo "waiting for a lock"; exec /bin/busybox sleep 60 ;;
esac
echo "migrated"''']
release_timeout = 3
"""


def _containers(client, app) -> dict[str, str]:
    """name -> version label of every container of the app (slots and one-offs)."""
    return {c.name: c.labels.get("zdagent.version", "")
            for c in client.containers.list(all=True,
                                            filters={"label": f"zdagent.app={app.name}"})}


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _history(app) -> list[dict]:
    return json.loads(app.ok("history", "--json", "--local").stdout)


def test_release_runs_in_the_candidate_image_and_a_failing_one_leaves_v1_serving(
        make_app, docker_client):
    app = make_app(extra=RELEASE)
    text = app.config.read_text().replace("[container]\n",
                                          '[container]\nenv = { APP_MODE = "prod-env" }\n', 1)
    app.config.write_text(text)

    p = app.ok("deploy", "v1", "--local")
    # streamed as it ran, with the app's env and the candidate's version
    assert "migrating to v1 in release (deploy 1) prod-env" in p.stderr
    assert "migrated" in p.stderr
    assert app.served_version() == "v1"
    before = _containers(docker_client, app)
    assert set(before.values()) == {"v1"} and len(before) == 1  # the one-off is gone

    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=90) as loop:
        wait_for(lambda: loop.total >= 20)  # load before, during and after the deploy
        p = app.cli("deploy", "v2", "--local")
        after = loop.total
        wait_for(lambda: loop.total >= after + 20)
    assert p.returncode == 1, p.stderr
    assert "release command /bin/busybox failed with exit code 3" in p.stderr
    assert 'case "$ZDAGENT_VERSION"' not in p.stderr  # its arguments are never printed ...
    assert "column orders.total already exists" in p.stderr  # ... its output's tail is
    assert "hint:" in p.stderr
    assert loop.failures == [], loop.failures[:5]
    assert set(loop.versions) == {"v1"}
    assert _containers(docker_client, app) == before  # no candidate, no one-off left
    rec = _history(app)[0]
    assert (rec["version"], rec["outcome"]) == ("v2", "failed")
    assert "column orders.total already exists" in rec["error"]  # the output's tail
    assert [ph["name"] for ph in rec["phases"]] == ["source", "release"]
    assert rec["phases"][-1]["ok"] is False

    p = app.cli("deploy", "v3", "--local")
    assert p.returncode == 1, p.stderr
    assert "did not finish within 3s (hooks.release_timeout): killed" in p.stderr
    assert "waiting for a lock" in p.stderr
    assert app.served_version() == "v1"
    assert _containers(docker_client, app) == before


HOOKS = """
[hooks]
pre_deploy = ["{hook}"]
post_switch = ["{hook}"]
post_deploy = ["{hook}", "an arg"]
post_rollback = ["{hook}"]
post_revert = ["{hook}"]
timeout = 20

[[smoke]]
path = "/cgi-bin/health"
contains = "ok"

[[smoke]]
name = "version page"
path = "/cgi-bin/version"
host = "shop.example.test"
max_latency = 5
"""

# Writes its environment to <dir>/<hook>.<version>.env; fails when <dir>/fail-<hook> exists.
HOOK_SCRIPT = """#!/bin/sh
env > "{dir}/$ZDAGENT_HOOK.$ZDAGENT_VERSION.env"
echo "hook $ZDAGENT_HOOK for $ZDAGENT_VERSION: $*"
if [ -e "{dir}/fail-$ZDAGENT_HOOK" ]; then echo "hook $ZDAGENT_HOOK refuses" >&2; exit 4; fi
"""


def _env(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_smoke_checks_and_host_hooks(make_app, docker_client, tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    hook = hooks_dir / "hook.sh"
    hook.write_text(HOOK_SCRIPT.format(dir=hooks_dir))
    hook.chmod(0o755)
    app = make_app(extra=HOOKS.format(hook=hook))
    app.env["ZDT_CALLER_SECRET"] = "never-in-a-hook"

    # 1. every hook of a deploy gets its env; the smoke checks pass and are recorded
    p = app.ok("deploy", "v1", "--local")
    assert 'smoke check "GET /cgi-bin/health": HTTP 200' in p.stderr
    assert 'smoke check "version page": HTTP 200' in p.stderr
    assert "hook post_deploy for v1: an arg" in p.stderr
    env = _env(hooks_dir / "post_deploy.v1.env")
    assert {k: v for k, v in env.items() if k.startswith("ZDAGENT_")} == {
        "ZDAGENT_HOOK": "post_deploy", "ZDAGENT_APP": app.name, "ZDAGENT_VERSION": "v1",
        "ZDAGENT_PREVIOUS_VERSION": "", "ZDAGENT_SLOT": "blue", "ZDAGENT_DEPLOY_ID": "1",
        "ZDAGENT_PERFORMER": env["ZDAGENT_PERFORMER"], "ZDAGENT_REASON": ""}
    assert env["ZDAGENT_PERFORMER"]
    assert "ZDT_CALLER_SECRET" not in env
    assert {f.name for f in hooks_dir.glob("*.env")} == {
        "pre_deploy.v1.env", "post_switch.v1.env", "post_deploy.v1.env"}
    rec = _history(app)[0]
    assert [ph["name"] for ph in rec["phases"]] == [
        "pre_deploy", "source", "start", "probe", "smoke", "switch", "drain"]

    # 2. a failing pre_deploy aborts with nothing changed
    (hooks_dir / "fail-pre_deploy").touch()
    upstream = (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf").read_text()
    before = _containers(docker_client, app)
    p = app.cli("deploy", "v2", "--local")
    assert p.returncode == 1, p.stderr
    assert "pre_deploy hook" in p.stderr and "failed with exit code 4" in p.stderr
    assert "hook pre_deploy refuses" in p.stderr
    assert _containers(docker_client, app) == before
    assert (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf").read_text() == upstream
    assert app.served_version() == "v1"
    assert [(ph["name"], ph["ok"]) for ph in _history(app)[0]["phases"]] == [
        ("pre_deploy", False)]
    (hooks_dir / "fail-pre_deploy").unlink()

    # 3. a failing post_deploy: the deploy still succeeded, and history says what failed
    (hooks_dir / "fail-post_deploy").touch()
    p = app.cli("deploy", "v2", "--local")
    assert p.returncode == 0, p.stderr
    assert "hook post_deploy refuses" in p.stderr and "(the deploy itself succeeded)" in p.stderr
    assert app.served_version() == "v2"
    rec = _history(app)[0]
    assert (rec["version"], rec["outcome"], rec["error"]) == ("v2", "succeeded", None)
    assert "post_deploy hook" in rec["notes"] and "exit code 4" in rec["notes"]
    switch_env = _env(hooks_dir / "post_switch.v2.env")
    assert (switch_env["ZDAGENT_PREVIOUS_VERSION"], switch_env["ZDAGENT_SLOT"]) == ("v1", "green")
    (hooks_dir / "fail-post_deploy").unlink()
    assert "note: post_deploy hook" in app.ok("history", "--local").stdout

    # 4. post_rollback after a rollback; post_revert (with the reason) after the watchdog's
    #    revert, which is the same engine call the daemon makes
    app.ok("rollback", "--local")
    env = _env(hooks_dir / "post_rollback.v1.env")
    assert (env["ZDAGENT_PREVIOUS_VERSION"], env["ZDAGENT_SLOT"]) == ("v2", "blue")
    with Engine(load_config(app.config), discard, performer=WATCHDOG_PERFORMER) as engine:
        engine.auto_revert("3 failed probes", expected_live="blue")
    env = _env(hooks_dir / "post_revert.v2.env")
    assert (env["ZDAGENT_REASON"], env["ZDAGENT_PERFORMER"]) == ("3 failed probes",
                                                                  WATCHDOG_PERFORMER)
    assert app.served_version() == "v2"

    # 5. a failing smoke check names itself; the candidate is removed, v2 keeps serving
    app.config.write_text(app.config.read_text() + """
[[smoke]]
name = "orders API"
path = "/api/orders"
""")
    p = app.cli("deploy", "v3", "--local")
    assert p.returncode == 1, p.stderr
    assert 'smoke check "orders API" failed: status 404, expected 200' in p.stderr
    assert app.served_version() == "v2"
    assert "v3" not in _containers(docker_client, app).values()
    assert not (hooks_dir / "post_switch.v3.env").exists()


def test_kill_9_during_the_release_then_recovery_removes_its_container(make_app,
                                                                        docker_client):
    app = make_app(extra=RELEASE.replace("release_timeout = 3", "release_timeout = 120"))
    app.ok("deploy", "v1", "--local")
    before = _containers(docker_client, app)
    child = subprocess.Popen([sys.executable, "-m", "zdagent", "deploy", "v3", "--local"],
                             env={**os.environ, "ZDAGENT_CONFIG": str(app.config)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    release = {"label": [f"zdagent.app={app.name}", "zdagent.release"], "status": "running"}
    try:  # v3's release hangs: kill -9 while its container runs
        wait_for(lambda: docker_client.containers.list(filters=release)
                 or child.poll() is not None, 120)
        assert child.poll() is None, "the deploy ended before its release ran"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert docker_client.containers.list(filters=release)  # left behind by the kill

    with Engine(load_config(app.config), discard) as engine:
        notes = engine.recover()
    assert "interrupted in phase 'release'" in notes[0]
    assert "removed the interrupted release command's container" in notes
    assert _containers(docker_client, app) == before
    assert app.served_version() == "v1"
    assert _history(app)[0]["outcome"] == "interrupted"


def test_through_the_daemon_release_output_streams_and_hooks_run(make_app, daemon_factory,
                                                                 tmp_path):
    """The same engine runs under the daemon: the release's output streams to the thin CLI,
    the host hook runs in the daemon with the API caller as performer."""
    hook = tmp_path / "post_deploy.sh"
    hook.write_text(f'#!/bin/sh\nenv > "{tmp_path}/post_deploy.$ZDAGENT_VERSION.env"\n')
    hook.chmod(0o755)
    app = make_app(extra=RELEASE + f'post_deploy = ["{hook}"]\n')
    daemon_factory([app]).start()
    p = app.ok("deploy", "v1")
    assert "migrating to v1 in release" in p.stderr and "migrated" in p.stderr
    env = _env(tmp_path / "post_deploy.v1.env")
    assert env["ZDAGENT_VERSION"] == "v1" and env["ZDAGENT_PERFORMER"] == \
        _history(app)[0]["user"]
    p = app.cli("deploy", "v2")
    assert p.returncode == 1, p.stderr
    assert "failed with exit code 3" in p.stderr and "orders.total" in p.stderr
    assert app.served_version() == "v1"
    assert not (tmp_path / "post_deploy.v2.env").exists()


def test_a_release_writes_to_a_shared_volume_before_the_switch(make_app, docker_client):
    """The release and the slots share ``container.volumes``; the candidate's smoke check
    (before the switch) must already find what this version's release wrote."""
    app = make_app(extra="""
[hooks]
release = ["/bin/busybox", "sh", "-c", 'echo "schema $ZDAGENT_VERSION" > /www/data/schema.txt']

[[smoke]]
name = "schema"
path = "/data/schema.txt"
contains = "schema v1"
""")
    volume = f"{app.name}-data"
    app.config.write_text(app.config.read_text().replace(
        "[container]\n", f'[container]\nvolumes = ["{volume}:/www/data"]\n', 1))
    try:
        app.ok("deploy", "v1", "--local")
        app.config.write_text(app.config.read_text().replace('"schema v1"', '"schema v2"'))
        p = app.ok("deploy", "v2", "--local")
        assert 'smoke check "schema": HTTP 200' in p.stderr
        assert app.get("/data/schema.txt").text == "schema v2\n"
        phases = [ph["name"] for ph in _history(app)[0]["phases"]]
        assert phases.index("release") < phases.index("smoke") < phases.index("switch")
    finally:
        for c in docker_client.containers.list(all=True,
                                               filters={"label": f"zdagent.app={app.name}"}):
            c.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(volume).remove(force=True)


def test_ctrl_c_during_a_hook_or_the_release_leaves_nothing_running(make_app, docker_client,
                                                                     tmp_path):
    """SIGINT (Ctrl-C) to a --local deploy: the hanging pre_deploy hook (its own session,
    so the terminal's SIGINT never reaches it) and the hanging release container are gone,
    v1 still serves and the record says failed."""
    pid_file = tmp_path / "pre_deploy.pid"
    hook = tmp_path / "pre_deploy.sh"
    hook.write_text(f'#!/bin/sh\nif [ "$ZDAGENT_VERSION" = v2 ]; then echo $$ > {pid_file}; '
                    'exec sleep 120; fi\n')
    hook.chmod(0o755)
    app = make_app(extra=RELEASE.replace("release_timeout = 3", "release_timeout = 120")
                   + f'pre_deploy = ["{hook}"]\ntimeout = 120\n')
    app.ok("deploy", "v1", "--local")
    before = _containers(docker_client, app)
    release = {"label": [f"zdagent.app={app.name}", "zdagent.release"], "status": "running"}

    def interrupted(version: str, started) -> None:
        child = subprocess.Popen([sys.executable, "-m", "zdagent", "deploy", version,
                                  "--local"],
                                 env={**os.environ, "ZDAGENT_CONFIG": str(app.config)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: started() or child.poll() is not None, 120)
            assert child.poll() is None, f"the {version} deploy ended before it hung"
            child.send_signal(signal.SIGINT)
            child.wait(60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(30)
        assert app.served_version() == "v1"
        assert _containers(docker_client, app) == before
        assert _history(app)[0]["outcome"] == "failed"

    interrupted("v2", pid_file.exists)
    pid = int(pid_file.read_text())
    try:
        wait_for(lambda: not _alive(pid), 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    interrupted("v3", lambda: bool(docker_client.containers.list(filters=release)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not yet reaped counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
