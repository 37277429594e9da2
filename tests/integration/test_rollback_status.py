"""Rollback (running standby, stopped standby, --to), status and history against reality."""

from __future__ import annotations

import json

from tests.traffic import RequestLoop


def status(app) -> dict:
    return json.loads(app.ok("status", "--json").stdout)


def test_rollback_to_running_standby_under_load(make_app):
    app = make_app()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=30) as loop:
        p = app.ok("rollback")
    assert "checking the running standby blue" in p.stderr
    assert loop.failures == []
    assert app.served_version() == "v1"
    st = status(app)
    assert st["live_slot"] == "blue" and st["routing"]["confirmed"]
    assert st["slots"]["green"]["state"] == "running"  # the rolled-back-from slot stays warm
    last = json.loads(app.ok("history", "--json").stdout)[0]
    assert (last["kind"], last["version"], last["outcome"]) == ("rollback", "v1", "succeeded")


def test_rollback_to_stopped_standby_starts_and_probes_it(make_app, docker_client):
    app = make_app()
    app.config.write_text(app.config.read_text().replace(
        "drain_seconds = 5", 'drain_seconds = 5\nafter_switch = "stop"'))
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    assert docker_client.containers.get(f"{app.name}-blue").status == "exited"
    # with after_switch = "stop" the stopped standby is not listed as a backup server
    upstream = (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf").read_text()
    assert "backup;" not in upstream
    p = app.ok("rollback")
    assert "waiting for blue to become healthy" in p.stderr
    assert app.served_version() == "v1"
    assert docker_client.containers.get(f"{app.name}-green").status == "exited"


def test_rollback_without_standby_container_fails_cleanly(make_app, docker_client):
    app = make_app()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    docker_client.containers.get(f"{app.name}-blue").remove(force=True)
    p = app.cli("rollback")
    assert p.returncode == 1
    assert "standby slot blue has no container" in p.stderr and "rollback --to" in p.stderr
    assert app.served_version() == "v2"


def test_rollback_to_a_version_from_history(make_app):
    app = make_app()
    for v in ("v1", "v2", "v3"):
        app.ok("deploy", v)
    p = app.ok("rollback", "--to", "v1")
    assert "rolled back to v1" in p.stderr
    assert app.served_version() == "v1"
    p = app.cli("rollback", "--to", "v9")
    assert p.returncode == 1 and "no deployable image of version 'v9'" in p.stderr
    assert app.served_version() == "v1"


def test_status_reports_a_live_container_removed_by_hand(make_app, docker_client):
    app = make_app()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    st = status(app)
    assert st["ok"] and st["drift"] == []
    assert st["slots"]["green"]["version"] == "v2" and st["slots"]["green"]["health"] == \
        "healthy"
    assert st["last_deploy"]["version"] == "v2"

    docker_client.containers.get(f"{app.name}-green").remove(force=True)
    st = status(app)
    assert not st["ok"]
    assert any("container " + f"{app.name}-green is missing" in d for d in st["drift"])
    text = app.ok("status").stdout
    assert "missing (removed by hand?)" in text


def test_status_reports_an_upstream_edited_by_hand(make_app):
    app = make_app()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    upstream = app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf"
    upstream.write_text(upstream.read_text().replace(
        f"127.0.0.1:{app.green_port} max_fails", f"127.0.0.1:{app.blue_port} max_fails"))
    st = status(app)
    assert any("edited by hand" in d for d in st["drift"])
    assert any("Nginx answers from green" in d for d in st["drift"])


def test_history_lists_every_outcome(make_app):
    app = make_app()
    app.ok("deploy", "v1")
    app.cli("deploy", "crash")
    app.ok("deploy", "v2")
    rows = json.loads(app.ok("history", "--json").stdout)
    assert [(r["version"], r["outcome"]) for r in rows] == [
        ("v2", "succeeded"), ("crash", "failed"), ("v1", "succeeded")]
    assert [p["name"] for p in rows[0]["phases"]] == ["source", "start", "probe", "switch",
                                                      "drain"]
    table = app.ok("history").stdout
    assert "crash" in table and "failed" in table
    assert len(json.loads(app.ok("history", "--json", "--limit", "1").stdout)) == 1
