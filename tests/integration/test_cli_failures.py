"""Bad input and a broken environment: one clear line, the documented exit code, no change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from zdagent.store import Store


def containers(docker_client, app):
    return docker_client.containers.list(all=True, filters={"label": f"zdagent.app={app.name}"})


def test_bad_config_exits_2_naming_file_and_key_and_touches_nothing(make_app, docker_client):
    app = make_app()
    app.config.write_text(app.config.read_text().replace("passes = 2", "passes = -1"))
    for args in (("config", "check"), ("deploy", "v1"), ("status",)):
        p = app.cli(*args)
        assert p.returncode == 2, p.stderr
        assert f"{app.config}: health.passes: must be between 1 and 100" in p.stderr
        assert "Traceback" not in p.stderr
    assert containers(docker_client, app) == []
    assert not (app.config.parent / "state").exists()


def test_config_check_ok_and_bad_version(make_app):
    app = make_app()
    assert "ok" in app.ok("config", "check").stderr
    p = app.cli("deploy", "v1;rm -rf /")
    assert p.returncode == 2 and "invalid version" in p.stderr


def test_docker_unreachable_exits_3(make_app):
    app = make_app()
    app.env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    for args in (("deploy", "v1"), ("status",), ("rollback",)):
        p = app.cli(*args)
        assert p.returncode == 3, p.stderr
        assert "cannot reach the Docker engine" in p.stderr and "hint:" in p.stderr
        assert "(runbook: zdagent runbook docker-unreachable)" in p.stderr
        assert "Traceback" not in p.stderr


def test_nginx_not_running_exits_3_before_any_change(make_app, docker_client):
    app = make_app(start_nginx=False)
    p = app.cli("deploy", "v1")
    assert p.returncode == 3
    assert "nginx is not running" in p.stderr
    assert "(runbook: zdagent runbook nginx-down)" in p.stderr
    assert containers(docker_client, app) == []


def test_no_wait_fails_while_another_deploy_holds_the_lock_and_slow_health_fails(make_app):
    app = make_app()
    app.ok("deploy", "v1")
    env = {**os.environ, "ZDAGENT_CONFIG": str(app.config)}
    slow = subprocess.Popen([sys.executable, "-m", "zdagent", "deploy", "slow"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = app.config.parent / "state" / f"{app.name}.lock"
        deadline = time.monotonic() + 20
        while not (lock.exists() and lock.read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p = app.cli("deploy", "v2", "--no-wait")
        assert p.returncode == 1
        assert f"{app.name} is busy: deploy slow by" in p.stderr
        assert "(runbook: zdagent runbook lock-held)" in p.stderr
    finally:
        slow.wait(60)
    # the slow image answers its health check after 3 s; probes time out after 2 s
    assert slow.returncode == 1
    assert "no answer within 2s" in slow.stderr.read()
    assert app.served_version() == "v1"


def test_kill_9_during_probe_is_recovered_by_the_next_command(make_app, docker_client):
    """A deploy process killed mid-probe: the live slot never notices; the next run repairs."""
    app = make_app()
    app.ok("deploy", "v1")
    env = {**os.environ, "ZDAGENT_CONFIG": str(app.config)}
    proc = subprocess.Popen([sys.executable, "-m", "zdagent", "deploy", "slow"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while "waiting for green to become healthy" not in _peek_state(app):
        assert time.monotonic() < deadline, "the deploy never reached the probe phase"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert app.served_version() == "v1"
    names = [c.name for c in containers(docker_client, app)]
    assert f"{app.name}-green" in names  # the orphan candidate is still there

    st = json.loads(app.ok("status", "--json").stdout)
    assert st["store"]["phase"] == "probe"
    assert any("interrupted in phase 'probe'" in d for d in st["drift"])

    p = app.ok("rollback", "--to", "v1")  # any mutating command reconciles first
    assert "recovered: deploy #2 was interrupted in phase 'probe'" in p.stderr
    rows = json.loads(app.ok("history", "--json").stdout)
    by_id = {r["id"]: r for r in rows}
    assert by_id[2]["outcome"] == "interrupted"
    assert "removed the orphan candidate in green" in by_id[2]["error"]
    assert app.served_version() == "v1"


def _peek_state(app) -> str:
    """The phase message of the running deploy, read from the store like any reader would."""
    state_dir = app.config.parent / "state"
    if not (state_dir / "zdagent.db").exists():
        return ""
    store = Store(state_dir)
    try:
        st = store.state(app.name)
        return "waiting for green to become healthy" if st.phase == "probe" else st.phase
    finally:
        store.close()
