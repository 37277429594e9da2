"""Canary deploys through the daemon on real Docker + Nginx: shares per step, promotion,
abort (by hand, by analysis, by a dead daemon) always back to 100 % stable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import httpx

from benchmarks.harness import NJS_MODULE
from tests.conftest import require
from tests.integration import test_daemon
from tests.integration.test_daemon import history, wait_for
from tests.integration.test_njs_switch import master_workers
from zdagent.nginx.split import parse_active
from zdagent.runbook import link

NJS = 'switch_mode = "njs"\n'
daemon_factory = test_daemon.daemon_factory  # the fixture: a daemon per test, stopped after


def canary_cfg(steps: str, seconds: float, sticky: bool = False) -> str:
    return (f"\n[canary]\nsteps = {steps}\nstep_seconds = {seconds}\n"
            f"sticky = {'true' if sticky else 'false'}\n")


def njs_app(make_app, extra: str):
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    return make_app(extra=NJS + extra)


def start_canary(app, version: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zdagent", "deploy", version, "--canary"],
                            env={**os.environ, **app.env, "ZDAGENT_CONFIG": str(app.config),
                                 "NO_COLOR": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def canary_state(app) -> dict | None:
    return json.loads(app.ok("status", "--json").stdout).get("canary")


def at_step(app, step: int):
    c = canary_state(app)
    return c if c and c.get("step") == step and c.get("routed") else None


def routing_file(app) -> str:
    suffix = ".upstream.conf.active" if "njs" in app.config.read_text() else ".upstream.conf"
    return (app.nginx.prefix / "zdagent" / f"{app.name}{suffix}").read_text()


def sample(app, n: int) -> dict[str, Counter]:
    """``n`` requests through Nginx, each counted under the routing file it was sent under
    (a request whose file changed meanwhile is not counted): {file text: versions}."""
    out: dict[str, Counter] = {}
    with httpx.Client(headers={"Connection": "close"}, timeout=10) as client:
        for _ in range(n):
            before = routing_file(app)
            r = client.get(app.url + "/cgi-bin/version")
            if routing_file(app) == before and r.status_code == 200:
                out.setdefault(before, Counter())[r.text.split()[0]] += 1
    return out


def share(counts: dict[str, Counter], marker: str, version: str) -> tuple[float, int]:
    got = Counter()
    for text, c in counts.items():
        if marker in text:
            got += c
    total = sum(got.values())
    return (got[version] / total if total else -1.0), total


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_njs_canary_advances_step_by_step_and_promotes(make_app, daemon_factory):
    app = njs_app(make_app, canary_cfg("[20, 50, 100]", 6))
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    workers = master_workers(app)  # the canary itself reloads nothing in njs mode
    proc = start_canary(app, "v2")
    wait_for(lambda: at_step(app, 1), 60, "step 1")
    first = sample(app, 120)
    wait_for(lambda: at_step(app, 2), 60, "step 2")
    second = sample(app, 120)
    code, err = finish(proc)
    assert code == 0, err
    s1, n1 = share(first, '"percent": 20', "v2")
    s2, n2 = share(second, '"percent": 50', "v2")
    assert n1 >= 40 and 0.05 <= s1 <= 0.4, (s1, n1, first)
    assert n2 >= 40 and 0.3 <= s2 <= 0.7, (s2, n2, second)
    assert "step 1: 20% to green" in err and "step 2: 50% to green" in err
    assert {app.served_version() for _ in range(20)} == {"v2"}  # promoted: all on v2
    rec = history(app)[0]
    assert rec["kind"] == "canary" and rec["outcome"] == "succeeded", rec
    assert [p["name"] for p in rec["phases"]].count("canary") == 2
    st = json.loads(app.ok("status", "--json").stdout)
    assert st["canary"] is None and st["live_slot"] == "green" and st["drift"] == []
    assert st["standby"]["slot"] == "blue" and st["standby"]["warm"]
    assert master_workers(app) == workers
    assert d.proc.poll() is None


def test_abort_puts_all_traffic_back_on_stable_and_records_it(make_app, daemon_factory,
                                                               docker_client):
    app = njs_app(make_app, canary_cfg("[30, 100]", 300, sticky=True))
    daemon_factory([app]).start()
    app.ok("deploy", "v1")
    proc = start_canary(app, "v2")
    c = wait_for(lambda: at_step(app, 1), 60, "step 1")
    assert c["shares"] == {"blue": 70, "green": 30}
    assert "canary: v2 in green, step 1/2 (30%)" in app.ok("status").stdout
    # Sticky: a client with the cookie stays on its version; clients without one are split.
    fresh = Counter(app.served_version() for _ in range(40))
    assert set(fresh) == {"v1", "v2"}, fresh
    for _ in range(2):
        with httpx.Client(timeout=10) as browser:
            first = browser.get(app.url + "/cgi-bin/version")
            cookie = first.headers["set-cookie"]
            assert cookie.startswith(f"zdagent_{app.name.replace('-', '_')}_v=1.zdagent__")
            pinned = {"Cookie": cookie.split(";")[0]}  # what a browser sends back
            again = [browser.get(app.url + "/cgi-bin/version", headers=pinned)
                     for _ in range(10)]
            assert {r.text.split()[0] for r in again} == {first.text.split()[0]}
            assert all("set-cookie" not in r.headers for r in again)  # already pinned
    p = app.cli("abort")
    assert p.returncode == 0, p.stderr
    code, err = finish(proc)
    assert code == 1 and "canary aborted by" in err and link("canary-aborted") in err
    assert {app.served_version() for _ in range(20)} == {"v1"}
    assert parse_active(app.name, routing_file(app)) == ("blue", None)  # no split
    rec = history(app)[0]
    assert rec["kind"] == "canary" and rec["outcome"] == "failed" and "aborted" in rec["error"]
    states = {c.name: c.status for c in docker_client.containers.list(
        all=True, filters={"label": f"zdagent.app={app.name}"})}
    assert states == {f"{app.name}-blue": "running", f"{app.name}-green": "exited"}, states
    logs = app.cli("logs", "--slot", "standby", "--tail", "5")  # the runbook's next step
    assert logs.returncode == 0 and "sample app v2" in logs.stdout + logs.stderr, logs
    p = app.cli("abort")
    assert p.returncode == 1 and "no canary" in p.stderr


def test_bad_canary_fails_its_first_step_by_traffic_analysis(make_app, daemon_factory,
                                                             docker_client):
    """The candidate answers 503 on real paths while /health stays 200: the first step's
    figures (from the daemon's access-log windows) fail it and all traffic goes back -
    checked during the step, so a 300 s step ends within the test's deadline."""
    app = njs_app(make_app, canary_cfg("[30, 100]", 300)
                  + "\n[analysis]\nmin_requests = 10\nmax_error_rate = 0.2\n")
    daemon_factory([app]).start()
    app.ok("deploy", "v1")
    proc = start_canary(app, "v2")
    wait_for(lambda: at_step(app, 1), 60, "step 1")
    green = docker_client.containers.get(f"{app.name}-green")
    green.exec_run(["/bin/busybox", "sh", "-c", "echo 100 > /tmp/error_percent"])
    counts = Counter()
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        counts[app.get().status_code] += 1
    assert proc.poll() is not None, "the failing step was not cut short"
    code, err = finish(proc)
    assert code == 1 and "canary failed at step 1 (30% to green)" in err, err
    assert counts[503] > 0  # the candidate's errors were real
    assert {app.served_version() for _ in range(20)} == {"v1"}
    rec = history(app)[0]
    assert rec["outcome"] == "failed" and "5xx" in rec["error"]


def test_kill_9_mid_canary_restart_goes_back_to_stable(make_app, daemon_factory,
                                                      docker_client):
    app = njs_app(make_app, canary_cfg("[50, 100]", 300))
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    proc = start_canary(app, "v2")
    wait_for(lambda: at_step(app, 1), 60, "step 1")
    d.kill9()
    finish(proc, 30)
    assert '"percent": 50' in routing_file(app)  # the split was left without an owner
    d.start()  # recovery runs before the daemon answers
    assert parse_active(app.name, routing_file(app)) == ("blue", None)
    assert {app.served_version() for _ in range(20)} == {"v1"}
    rec = history(app)[0]
    assert rec["kind"] == "canary" and rec["outcome"] == "interrupted", rec
    assert "re-pointed Nginx at blue" in rec["error"]
    st = json.loads(app.ok("status", "--json").stdout)
    assert st["canary"] is None and st["drift"] == [] and st["store"]["phase"] == "idle"
    assert f"{app.name}-green" not in {c.name for c in docker_client.containers.list(
        all=True, filters={"label": f"zdagent.app={app.name}"})}


def test_sigterm_mid_canary_aborts_it_before_the_daemon_exits(make_app, daemon_factory):
    app = njs_app(make_app, canary_cfg("[50, 100]", 300))
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    proc = start_canary(app, "v2")
    wait_for(lambda: at_step(app, 1), 60, "step 1")
    d.proc.terminate()
    assert d.proc.wait(60) == 0
    code, err = finish(proc, 30)
    assert code == 1 and "canary aborted by the daemon (stopping)" in err, err
    assert parse_active(app.name, routing_file(app)) == ("blue", None)
    assert history(app)[0]["outcome"] == "failed"


def test_reload_mode_canary_splits_by_weights_and_promote_ends_it(make_app, daemon_factory):
    app = make_app(extra=canary_cfg("[25, 50, 100]", 300))
    daemon_factory([app]).start()
    app.ok("deploy", "v1")
    proc = start_canary(app, "v2")
    wait_for(lambda: at_step(app, 1), 60, "step 1")
    text = routing_file(app)
    assert "weight=3" in text and "weight=1" in text and "canary=green percent=25" in text
    counts = sample(app, 120)
    p = app.cli("promote")
    assert p.returncode == 0, p.stderr
    code, err = finish(proc)
    assert code == 0 and "promoted by" in err, err
    assert history(app)[0]["outcome"] == "succeeded"
    s, n = share(counts, "percent=25", "v2")
    assert n >= 40 and 0.1 <= s <= 0.4, (s, n)
    assert {app.served_version() for _ in range(10)} == {"v2"}
    assert "canary=" not in routing_file(app)


def test_canary_refuses_without_the_daemon(make_app):
    app = make_app()
    p = app.cli("deploy", "v2", "--canary")
    assert p.returncode == 3 and "daemon must own it" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("hint:") == 1
