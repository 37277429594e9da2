"""switch_mode = "njs": traffic moves without a reload, so even raw keep-alive loses nothing."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from benchmarks.harness import NJS_MODULE
from tests.conftest import require
from tests.integration.test_daemon import wait_for
from tests.traffic import RequestLoop
from zdagent.config import pool_name

NJS = 'switch_mode = "njs"\n'


@pytest.fixture
def njs_app(make_app):
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    return make_app(extra=NJS)


class RawKeepAlive(threading.Thread):
    """One persistent connection, never retried: every closed connection is a failure."""

    def __init__(self, port: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.port, self.seconds = port, seconds
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn.request("GET", "/cgi-bin/version")
                r = conn.getresponse()
                body = r.read().decode()
                if r.status != 200:
                    self.failures.append(f"HTTP {r.status}")
                else:
                    self.versions.append(body.split()[0])
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(type(e).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            time.sleep(0.005)
        conn.close()


def master_workers(app) -> set[int]:
    pid = int(app.nginx.pid_file.read_text())
    return {p.pid for p in psutil.Process(pid).children()}


def test_switches_without_reload_and_raw_keep_alive_loses_nothing(njs_app):
    app = njs_app
    app.ok("deploy", "v1")  # installs the two-pool upstream: the one reload
    workers = master_workers(app)
    raw = RawKeepAlive(app.port, seconds=90)
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=90) as close_loop:
        raw.start()
        for version in ("v2", "v3", "v1"):
            app.ok("deploy", version)
        p = app.ok("rollback")
        time.sleep(0.5)
        raw.stop.set()
        raw.join(30)
    assert master_workers(app) == workers  # no reload happened: the same workers served all
    assert raw.failures == [] and close_loop.failures == [], (raw.failures, close_loop.failures)
    # the single keep-alive connection saw each switch once, in order
    seen = [v for i, v in enumerate(raw.versions) if i == 0 or raw.versions[i - 1] != v]
    assert seen == ["v1", "v2", "v3", "v1", "v3"]
    assert "rolled back to v3" in p.stderr
    active = (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf.active").read_text()
    assert active.strip() == pool_name(app.name, "blue")  # v1 blue, v2 green, v3 blue, v1 green,
    # back: blue
    st = json.loads(app.ok("status", "--json").stdout)
    assert st["live_slot"] == "blue" and st["routing"]["confirmed"] and st["drift"] == []


def test_njs_mode_drains_before_stopping_and_failed_candidates_change_nothing(njs_app,
                                                                              docker_client):
    app = njs_app
    app.config.write_text(app.config.read_text().replace(
        "drain_seconds = 5", 'drain_seconds = 15\nafter_switch = "stop"'))
    app.ok("deploy", "v1")
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=app.get("/cgi-bin/slow?4")))
    t.start()
    time.sleep(0.5)
    app.ok("deploy", "v2")
    t.join(30)
    assert box["r"].status_code == 200 and box["r"].text.startswith("slow v1")
    assert docker_client.containers.get(f"{app.name}-blue").status == "exited"
    p = app.cli("deploy", "fail")
    assert p.returncode == 1 and app.served_version() == "v2"


def test_a_candidate_is_no_backup_before_it_is_verified(njs_app, docker_client):
    """While a deploy starts its candidate in the standby's slot, the live slot has no backup:
    a request the live slot cannot take is never answered by the unverified candidate."""
    app = njs_app
    cfg_text = app.config.read_text()
    app.config.write_text(cfg_text.replace("startup_deadline = 15", "startup_deadline = 8"))
    active = app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf.active"
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")  # green serves v2; blue (v1) is the standby and green's backup
    assert active.read_text().strip() == pool_name(app.name, "green")

    result: list = []
    deploy = threading.Thread(target=lambda: result.append(app.cli("deploy", "fail")))
    deploy.start()
    try:
        def candidate_answers() -> bool:
            try:
                r = httpx.get(f"http://127.0.0.1:{app.blue_port}/cgi-bin/version", timeout=2)
            except httpx.HTTPError:
                return False
            return r.text.startswith("fail")

        wait_for(candidate_answers, 60, "the candidate (health 500) to answer in blue")
        assert active.read_text().strip() == pool_name(app.name, "green", alone=True)
        docker_client.containers.get(f"{app.name}-green").kill()  # the live slot fails
        answers = [app.get() for _ in range(10)]
        assert [r.text for r in answers if r.status_code == 200] == [], \
            "a request reached the unverified candidate"
        assert {r.status_code for r in answers} == {502}
    finally:
        deploy.join(60)
    assert result and result[0].returncode == 1, result
    # the standby was replaced and the candidate removed: still nobody's backup
    assert active.read_text().strip() == pool_name(app.name, "green", alone=True)


def test_a_deploy_refused_before_the_standby_changed_keeps_it_as_the_backup(njs_app, tmp_path):
    """A bad env file stops the deploy before the standby's container is touched: the live
    slot gets its backup (the intact standby) back."""
    import os

    from tests.integration.test_env_file import with_env_file

    app = njs_app
    env_file = tmp_path / "web.env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("ZDT_SECRET=first\n")
    with_env_file(app, env_file)
    active = app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf.active"
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    assert active.read_text().strip() == pool_name(app.name, "green")
    env_file.write_bytes(b"ZDT_SECRET=\xff\xfe\n")  # not UTF-8: refused when blue is created
    p = app.cli("deploy", "v3")
    assert p.returncode == 2 and "container.env_file" in p.stderr, p.stderr
    assert "kept the standby in the blue slot" in p.stderr
    assert active.read_text().strip() == pool_name(app.name, "green")  # blue is its backup
    assert app.served_version() == "v2"


@pytest.mark.parametrize("mode", ["njs", "reload"])
def test_the_longest_app_name_passes_nginx_t(nginx_server, tmp_path, mode):
    """Nginx refuses variable names over 46 characters ("could not build variables_hash");
    a 40-character app name (the most app.name allows) gets variables that fit, and the
    real Nginx accepts its site and upstream files in both switch modes."""
    if mode == "njs":
        require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    from benchmarks.harness import app_config, free_port
    from tests.conftest import IMAGE_REPO
    from zdagent.config import load_config
    from zdagent.nginx import render_site, render_upstream

    name = "zdtest-" + "n" * 33
    assert len(name) == 40
    path = tmp_path / f"{name}.toml"
    path.write_text(app_config(name, tmp_path / "state", nginx_server, free_port(), free_port(),
                               f'[source]\nimage = "{IMAGE_REPO}"\npull = "never"',
                               NJS if mode == "njs" else ""))
    cfg = load_config(path)
    (nginx_server.prefix / "sites" / f"{name}.conf").write_text(render_site(cfg))
    cfg.nginx.upstream_file.write_text(render_upstream(cfg, None, None))
    p = subprocess.run(nginx_server.argv("-t"), capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
