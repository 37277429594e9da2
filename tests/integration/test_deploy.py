"""Deploys through real Docker and real Nginx: good ones switch, bad ones change nothing."""

from __future__ import annotations

import socket

from tests.traffic import RequestLoop

BUILD_SOURCE_TEMPLATE = """[source.build]
context = "{context}"
tag = "zdtest-build"
"""


def history(app):
    import json

    return json.loads(app.ok("history", "--json").stdout)


def slot_names(docker_client, app):
    return sorted(c.name for c in docker_client.containers.list(
        all=True, filters={"label": f"zdagent.app={app.name}"}))


def test_three_deploys_under_load_drop_no_request(make_app):
    app = make_app()
    app.ok("deploy", "v1")
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=60) as loop:
        for version in ("v2", "v3", "v1"):
            app.ok("deploy", version)
    assert loop.failures == [], loop.failures[:5]
    assert loop.total > 50
    assert set(loop.versions) == {"v1", "v2", "v3"}
    assert app.served_version() == "v1"
    assert [h["outcome"] for h in history(app)] == ["succeeded"] * 4


def test_health_500_candidate_leaves_old_version_serving(make_app, docker_client):
    app = make_app()
    app.config.write_text(app.config.read_text().replace("startup_deadline = 15",
                                                         "startup_deadline = 4"))
    app.ok("deploy", "v1")
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=40) as loop:
        p = app.cli("deploy", "fail")
    assert p.returncode == 1
    assert "not healthy within" in p.stderr and "HTTP 500" in p.stderr
    assert "hint:" in p.stderr and "Traceback" not in p.stderr
    assert loop.failures == [] and set(loop.versions) == {"v1"}
    assert app.served_version() == "v1"
    # the candidate was removed, the live slot untouched
    assert slot_names(docker_client, app) == [f"{app.name}-blue"]
    last = history(app)[0]
    assert (last["outcome"], last["version"]) == ("failed", "fail")
    assert "HTTP 500" in last["error"]


def test_crashing_candidate_fails_fast_with_its_logs(make_app, docker_client):
    app = make_app()
    app.ok("deploy", "v1")
    live = docker_client.containers.get(f"{app.name}-blue")
    # A healthy slot is restarted by Docker if it dies; a candidate never was (see below).
    assert live.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    p = app.cli("deploy", "crash")
    assert p.returncode == 1
    assert "exited with code 3" in p.stderr
    assert "refuses to start (MODE=crash)" in p.stderr  # the container's own last log line
    assert app.served_version() == "v1"
    phases = {ph["name"]: ph for ph in history(app)[0]["phases"]}
    assert phases["probe"]["ok"] is False
    assert phases["probe"]["duration"] < 15  # well before the 15 s startup deadline


def test_build_source_builds_and_a_failed_build_names_its_step(make_app, tmp_path):
    from tests.conftest import make_context

    ctx = make_context(tmp_path / "ctx")
    app = make_app(source=BUILD_SOURCE_TEMPLATE.format(context=ctx))
    p = app.ok("deploy", "b1")
    assert "Step 1/" in p.stderr  # the build log streamed as progress
    assert app.served_version() == "b1"

    dockerfile = ctx / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(
        "CMD [", 'RUN ["/bin/busybox", "false"]\nCMD ['))
    p = app.cli("deploy", "b2")
    assert p.returncode == 1
    assert "build failed at step" in p.stderr and "busybox" in p.stderr
    assert app.served_version() == "b1"
    assert history(app)[0]["outcome"] == "failed"


def test_config_that_fails_nginx_t_is_restored(make_app, tmp_path):
    bad = tmp_path / "bad.j2"
    bad.write_text("upstream {{ upstream }} {\n  server 127.0.0.1:{{ live_port }};\n"
                   "  proxy_pas http://x;\n}\n")
    app = make_app()
    app.ok("deploy", "v1")
    before = (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf").read_text()
    app.config.write_text(app.config.read_text().replace(
        "[nginx]\n", f'[nginx]\nupstream_template = "{bad}"\n'))
    p = app.cli("deploy", "v2")
    assert p.returncode == 1
    assert "nginx -t failed" in p.stderr and "proxy_pas" in p.stderr
    assert "restored" in p.stderr
    after = (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf").read_text()
    assert after == before
    assert app.served_version() == "v1"


def test_reload_rejected_by_the_master_is_detected_and_undone(make_app, tmp_path):
    """nginx -t passes and reload exits 0, but the master cannot bind: not a switch."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    tpl = tmp_path / "bind.j2"
    tpl.write_text("upstream {{ upstream }} {\n  server 127.0.0.1:{{ live_port }};\n}\n"
                   f"server {{\n  listen 127.0.0.1:{port};\n}}\n")
    app = make_app()
    app.ok("deploy", "v1")
    app.config.write_text(app.config.read_text().replace(
        "[nginx]\n", f'[nginx]\nupstream_template = "{tpl}"\n').replace(
        "reload_timeout = 10", "reload_timeout = 3"))
    try:
        p = app.cli("deploy", "v2")
    finally:
        taken.close()
    assert p.returncode == 1
    assert "kept the old workers" in p.stderr
    assert app.served_version() == "v1"
    assert f"bind() to 127.0.0.1:{port} failed" in (app.nginx.prefix / "error.log").read_text()


def test_switch_that_cannot_be_verified_is_rolled_back(make_app):
    """A site that does not route through the zdagent upstream: the switch is not trusted."""
    app = make_app()
    app.ok("deploy", "v1")
    app.config.write_text(app.config.read_text().replace(
        "reload_timeout = 10", "reload_timeout = 2\nverify_path = \"/nowhere\""))
    site = app.nginx.prefix / "sites" / f"{app.name}.conf"
    site.write_text(site.read_text().replace(
        "location / {", "location /nowhere { return 404; }\n    location / {"))
    p = app.cli("deploy", "v2")
    assert p.returncode == 1
    assert "not the green slot" in p.stderr and "previous upstream was restored" in p.stderr
    assert app.served_version() == "v1"
