"""The daemon: watchdog reverts, crash recovery, queueing, sd_notify, socket permissions,
hostile API clients while a real deploy runs, Docker down, bad app files, SIGHUP reloads and
supervised watch tasks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.traffic import RequestLoop
from zdagent.events import discard
from zdagent.lock import app_lock
from zdagent.store import Store

FAST_WATCHDOG = """
[watchdog]
interval = 0.3
failures = 3
cooldown = 60
"""


class DaemonProc:
    """`zdagent daemon` as a subprocess over a config dir of test apps."""

    def __init__(self, apps, env: dict[str, str] | None = None,
                 group: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="zdd-"))
        os.chmod(self.dir, 0o755)  # other users may reach the socket; its own mode decides
        self.config_dir = self.dir / "apps"
        self.config_dir.mkdir()
        self.socket = self.dir / "zd.sock"
        self.log = self.dir / "daemon.log"
        for app in apps:
            shutil.copy(app.config, self.config_dir / f"{app.name}.toml")
            app.env["ZDAGENT_SOCKET"] = str(self.socket)
        self.env = {**os.environ, **(env or {})}
        self.group = group
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProc:
        argv = [sys.executable, "-m", "zdagent", "daemon", "--config-dir", str(self.config_dir),
                "--socket", str(self.socket)]
        if self.group:
            argv += ["--socket-group", self.group]
        self.proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("a"))
        deadline = time.monotonic() + 30
        while not self.answers():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the daemon did not come up"
            time.sleep(0.1)
        return self

    def answers(self) -> bool:
        from zdagent.client import DaemonClient

        try:
            DaemonClient(str(self.socket), timeout=2).get("/v1/status")
            return True
        except (OSError, ValueError):
            return False

    def status(self) -> dict:
        from zdagent.client import DaemonClient

        return DaemonClient(str(self.socket), timeout=10).get("/v1/status")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon_factory():
    made: list[DaemonProc] = []

    def factory(apps, **kw) -> DaemonProc:
        d = DaemonProc(apps, **kw)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.stop()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def live_in_file(app) -> str:
    text = (app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf").read_text()
    return "blue" if f"127.0.0.1:{app.blue_port} max_fails" in text else "green"


def history(app) -> list[dict]:
    return json.loads(app.ok("history", "--json").stdout)


def reverted(app) -> bool:
    """The watchdog's switch is complete (verified and recorded), not just written."""
    return any(h["kind"] == "auto-revert" and h["outcome"] == "succeeded" for h in history(app))


def watched_app(make_app, daemon_factory, extra: str = ""):
    app = make_app(extra=FAST_WATCHDOG + extra)
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    assert live_in_file(app) == "green"
    return app, d


def test_stopped_live_container_is_replaced_by_the_standby(make_app, daemon_factory,
                                                          docker_client):
    app, _d = watched_app(make_app, daemon_factory)
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=30) as loop:
        t0 = time.monotonic()
        docker_client.containers.get(f"{app.name}-green").stop(timeout=1)
        wait_for(lambda: live_in_file(app) == "blue", 15, "the revert")
        took = time.monotonic() - t0
        wait_for(lambda: reverted(app), 20, "the recorded revert")
    assert loop.failures == []  # the backup server covered the gap; the revert made it stick
    assert took < 0.3 * 3 + 5
    rev = history(app)[0]
    assert rev["kind"] == "auto-revert" and rev["outcome"] == "succeeded"
    assert "green failed 3 probes in a row" in rev["reason"]
    st = json.loads(app.ok("status", "--json").stdout)
    assert st["watchdog"]["status"] == "reverted" and st["live_slot"] == "blue"


def test_live_slot_answering_500_is_reverted(make_app, daemon_factory, docker_client):
    app, _d = watched_app(make_app, daemon_factory)
    docker_client.containers.get(f"{app.name}-green").exec_run(
        ["/bin/busybox", "touch", "/tmp/unhealthy"])
    wait_for(lambda: reverted(app), 20, "the revert")
    assert live_in_file(app) == "blue"
    assert app.served_version() == "v1"
    assert "HTTP 500" in history(app)[0]["reason"]


def test_unhealthy_standby_means_degraded_and_a_restart_not_a_revert(make_app, daemon_factory,
                                                                     docker_client):
    app, d = watched_app(make_app, daemon_factory)
    green = docker_client.containers.get(f"{app.name}-green")
    started = green.attrs["State"]["StartedAt"]
    for slot in ("blue", "green"):
        docker_client.containers.get(f"{app.name}-{slot}").exec_run(
            ["/bin/busybox", "touch", "/tmp/unhealthy"])
    wait_for(lambda: d.status()["apps"][app.name]["status"] == "degraded", 15, "degraded")
    wait_for(lambda: any(h["kind"] == "restart" for h in history(app)), 15, "the restart")
    assert live_in_file(app) == "green"  # never reverted to an unhealthy standby
    green.reload()
    assert green.attrs["State"]["StartedAt"] != started  # the live container was restarted
    assert not any(h["kind"] == "auto-revert" for h in history(app))
    assert "standby is not healthy" in d.status()["apps"][app.name]["last_reason"]


def test_flapping_is_reverted_once_not_back_and_forth(make_app, daemon_factory, docker_client):
    app, d = watched_app(make_app, daemon_factory)
    green = docker_client.containers.get(f"{app.name}-green")
    blue = docker_client.containers.get(f"{app.name}-blue")
    green.exec_run(["/bin/busybox", "touch", "/tmp/unhealthy"])
    wait_for(lambda: reverted(app), 20, "the first revert")
    green.exec_run(["/bin/busybox", "rm", "-f", "/tmp/unhealthy"])  # green recovers
    blue.exec_run(["/bin/busybox", "touch", "/tmp/unhealthy"])  # and blue fails, in cooldown
    wait_for(lambda: d.status()["apps"][app.name]["status"] == "degraded", 15, "degraded")
    seen = d.status()["apps"][app.name]["checks"]  # a few more probe rounds: still no revert
    wait_for(lambda: d.status()["apps"][app.name]["checks"] >= seen + 5, 30, "5 more rounds")
    assert live_in_file(app) == "blue"
    assert sum(h["kind"] == "auto-revert" for h in history(app)) == 1
    assert "cooldown" in d.status()["apps"][app.name]["last_reason"]


def _phase(app) -> str:
    db = app.config.parent / "state"
    store = Store(db)
    try:
        return store.state(app.name).phase
    finally:
        store.close()


def _proxied_to(port: int) -> bool:
    """Nginx holds an open connection to 127.0.0.1:``port`` (a request is in flight)."""
    import psutil

    return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
               for c in psutil.net_connections(kind="tcp"))


@pytest.mark.parametrize("phase", ["probe", "switch", "drain"])
def test_kill_9_during_a_deploy_then_restart_recovers(make_app, daemon_factory, docker_client,
                                                       phase):
    extra = ""
    image = "v2"
    if phase == "probe":
        image = "slow"  # its health answers after 3 s, past the 2 s probe timeout
    app = make_app()
    if phase == "switch":
        slow_reload = ["bash", "-c", f"sleep 3 && exec {' '.join(app.nginx.argv('-s', 'reload'))}"]
        text = app.config.read_text().splitlines()
        text = [f"reload_command = {json.dumps(slow_reload)}" if ln.startswith("reload_command")
                else ln for ln in text]
        app.config.write_text("\n".join(text) + "\n")
    if phase == "drain":
        extra = 'after_switch = "stop"\n'
        app.config.write_text(app.config.read_text().replace(
            "drain_seconds = 5", "drain_seconds = 30\n" + extra))
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    holder = None
    if phase == "drain":  # an in-flight request keeps the old worker (and the drain) busy
        holder = threading.Thread(target=lambda: app.get("/cgi-bin/slow?20"), daemon=True)
        holder.start()
        wait_for(lambda: _proxied_to(app.blue_port), 30, "the slow request to reach blue")
    client = subprocess.Popen([sys.executable, "-m", "zdagent", "deploy", image],
                              env={**os.environ, **app.env, "ZDAGENT_CONFIG": str(app.config)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _phase(app) == phase, 30, f"phase {phase}")
    if phase == "switch":  # killed once the new upstream is written, while the reload waits
        from zdagent.config import load_config
        from zdagent.nginx import routed_slot

        cfg = load_config(app.config)
        wait_for(lambda: routed_slot(cfg) == "green", 30, "the new upstream file")
    d.kill9()
    client.wait(30)
    d.start()  # reconciles before it answers
    assert _phase(app) == "idle"
    rows = history(app)
    assert rows[0]["outcome"] == "interrupted"
    names = {c.name: c.status for c in docker_client.containers.list(
        all=True, filters={"label": f"zdagent.app={app.name}"})}
    want = "v1" if phase == "probe" else "v2"
    assert app.served_version() == want
    if phase == "probe":
        assert f"{app.name}-green" not in names  # no orphan candidate
        assert "removed the orphan candidate in green" in rows[0]["error"]
    st = json.loads(app.ok("status", "--json").stdout)
    assert st["drift"] == [] and st["routing"]["confirmed"]


def test_deploys_queue_per_app_and_apps_run_in_parallel(make_app, daemon_factory):
    a, b = make_app(), make_app()
    d = daemon_factory([a, b]).start()
    a.ok("deploy", "v1")
    b.ok("deploy", "v1")

    def run(app, version, out):
        out[version + app.name] = app.cli("deploy", version)

    def apps_busy() -> tuple[bool, int]:
        st = d.status()["apps"]
        return st[a.name]["busy"], st[a.name]["queued"]

    results: dict = {}
    threads = [threading.Thread(target=run, args=(a, "v2", results)),
               threading.Thread(target=run, args=(a, "v3", results)),
               threading.Thread(target=run, args=(b, "v2", results))]
    # Order by state, never by a sleep: while the test holds a's deploy lock, a's v2 waits for
    # it inside the daemon, v3 queues behind v2, and b's deploy runs to the end regardless.
    with app_lock(a.config.parent / "state", a.name, "the test holds it", discard):
        threads[0].start()
        wait_for(lambda: apps_busy()[0], 60, "a's v2 to be taken")
        threads[1].start()
        wait_for(lambda: apps_busy()[1] == 1, 60, "a's v3 to queue")
        threads[2].start()
        threads[2].join(120)
        assert results["v2" + b.name].returncode == 0, results["v2" + b.name].stderr
        assert apps_busy()[0] and apps_busy()[1] == 1  # a's deploys still wait meanwhile
    for t in threads:
        t.join(120)
    assert all(p.returncode == 0 for p in results.values()), {
        k: p.stderr[-500:] for k, p in results.items()}
    assert "queued: another operation" in results["v3" + a.name].stderr
    ha = history(a)
    assert [h["version"] for h in ha[:2]] == ["v3", "v2"]  # in arrival order
    assert ha[1]["finished_at"] <= ha[0]["started_at"]  # one after the other
    assert a.served_version() == "v3" and b.served_version() == "v2"
    assert d.status()["apps"][a.name]["queued"] == 0


def test_sigterm_lets_the_running_deploy_finish(make_app, daemon_factory):
    app = make_app()
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    client = subprocess.Popen([sys.executable, "-m", "zdagent", "deploy", "v2"],
                              env={**os.environ, **app.env, "ZDAGENT_CONFIG": str(app.config)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _phase(app) in ("start", "probe"), 30, "the deploy to start")
    d.proc.terminate()
    assert d.proc.wait(60) == 0
    assert client.wait(60) == 0, client.stderr.read()
    assert app.served_version() == "v2"
    assert _phase(app) == "idle"
    assert "stopped" in d.log.read_text()


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_ready_status_watchdog(make_app, daemon_factory, abstract):
    app = make_app()
    name = f"zdn-{uuid.uuid4().hex[:8]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        sock.bind("\0" + name)
        notify = "@" + name
    else:
        path = f"/tmp/{name}.sock"  # AF_UNIX paths are short: not under pytest's tmp_path
        sock.bind(path)
        notify = path
    sock.settimeout(1)
    try:
        d = daemon_factory([app], env={"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "1000000"})
        d.start()
        seen: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not ("WATCHDOG=1" in seen and
                                                   any(s.startswith("READY=1") for s in seen)):
            with contextlib.suppress(TimeoutError):
                seen.append(sock.recv(4096).decode())
        joined = "\n".join(seen)
        assert "READY=1" in joined and "STATUS=1 app, all healthy" in joined
        assert "WATCHDOG=1" in joined
    finally:
        sock.close()
        if not abstract:
            os.unlink(path)


PROBE_AS_USER = """
import errno, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(errno.errorcode[e.errno])
    sys.exit(1)
s.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: zdagent\\r\\n\\r\\n")
print(s.recv(65536).decode())
"""


def test_control_socket_refuses_users_without_permission(make_app, daemon_factory):
    """0660 and group-owned: a user outside the group gets EACCES; a member gets answers."""
    system_python = Path("/usr/bin/python3")  # readable by other users, unlike root's pyenv
    if not shutil.which("runuser") or not system_python.exists():
        pytest.fail("runuser and /usr/bin/python3 are needed for the permission test")
    app = make_app()
    d = daemon_factory([app], group="nogroup").start()
    assert d.socket.stat().st_mode & 0o777 == 0o660

    def as_user(user: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", user, "--", str(system_python), "-c",
                               PROBE_AS_USER, str(d.socket)], capture_output=True, text=True,
                              timeout=30, check=False)

    denied = as_user("daemon")  # not in the socket's group
    assert denied.returncode == 1 and denied.stdout.strip() == "EACCES", denied
    allowed = as_user("nobody")  # primary group nogroup owns the socket
    assert allowed.returncode == 0 and app.name in allowed.stdout, allowed


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is needed (apt-get install systemd)")
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "zdagent.service").read_text()
    exe = shutil.which("zdagentd")
    assert exe, "zdagentd must be installed (pip install -e .)"
    (tmp_path / "zdagent.service").write_text(
        unit.replace("/usr/local/bin/", str(Path(exe).parent) + "/"))
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "zdagent.service")],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 0 and p.stderr.strip() == "" and p.stdout.strip() == "", p.stderr
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes",
                "ProtectSystem=strict"):
        assert key in unit


# --- the API under hostile clients; Docker down; the app directory; supervised tasks ---

def raw(sock_path, data: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send ``data``, read the whole answer: (HTTP status, body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def post(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: zdagent\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode() + data


def cli_proc(app, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zdagent", *args],
                            env={**os.environ, **app.env, "ZDAGENT_CONFIG": str(app.config),
                                 "NO_COLOR": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hostile_batch(d, base: str) -> None:
    """Garbage, oversize and malformed requests: each gets its error answer."""
    assert raw(d.socket, b"\x16\x03\x01 garbage\r\n\r\n")[0] == 400
    assert raw(d.socket, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: z\r\n\r\n")[0] == 431
    assert raw(d.socket, f"POST {base}/deploy HTTP/1.1\r\nHost: z\r\nContent-Length: "
                          "10000000\r\n\r\n".encode())[0] == 413
    assert raw(d.socket, f"POST {base}/deploy HTTP/1.1\r\nHost: z\r\nContent-Length: "
                          "-1\r\n\r\n".encode())[0] == 400
    deep = b"[" * 4000
    status, body = raw(d.socket, f"POST {base}/deploy HTTP/1.1\r\nHost: z\r\n"
                                 f"Content-Length: {len(deep)}\r\n\r\n".encode() + deep)
    assert status == 400 and b"nested" in body
    status, body = raw(d.socket, post(f"{base}/deploy", {"version": "v3; rm -rf /"}))
    assert status == 400 and json.loads(body)["error"]["exit_code"] == 2


def test_hostile_clients_while_a_real_deploy_runs_unharmed(make_app, daemon_factory):
    app = make_app()
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    base = f"/v1/apps/{app.name}"
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=90) as loop:
        # Held by the test, the app's lock keeps the daemon's deploy waiting (ordered by
        # state) while the queue is probed; then the deploy runs its phases under fire.
        with app_lock(app.config.parent / "state", app.name, "the test holds it", discard):
            deploy = cli_proc(app, "deploy", "v2")
            wait_for(lambda: d.status()["apps"][app.name]["busy"], 30, "the deploy to queue")

            # A slow client: half a request line, then nothing. Answered 408 in the end.
            slow = socket.socket(socket.AF_UNIX)
            slow.settimeout(60)
            slow.connect(str(d.socket))
            slow.sendall(f"POST {base}/deploy HTTP/1.1\r\nHost: z".encode())

            # --no-wait is honoured through the daemon: busy -> exit 1 at once.
            busy = app.cli("deploy", "v3", "--no-wait")
            assert busy.returncode == 1 and "busy" in busy.stderr, busy.stderr

            # A client that queues a rollback and leaves: cancelled, recorded, never run.
            with socket.socket(socket.AF_UNIX) as quitter:
                quitter.settimeout(30)
                quitter.connect(str(d.socket))
                quitter.sendall(post(f"{base}/rollback", {"to": None}))
                seen = b""
                while b"queued: another operation" not in seen:
                    chunk = quitter.recv(4096)
                    assert chunk, seen
                    seen += chunk
            wait_for(lambda: any(h["outcome"] == "cancelled" for h in history(app)), 30,
                     "the cancelled rollback in history")
            hostile_batch(d, base)
        batches = 0
        while deploy.poll() is None and batches < 100:  # under fire through every phase
            hostile_batch(d, base)
            batches += 1
        _out, err = deploy.communicate(timeout=120)
        assert deploy.returncode == 0, err
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
        slow.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert batches > 0
    assert loop.failures == []
    assert app.served_version() == "v2"
    rows = history(app)
    cancelled = next(h for h in rows if h["outcome"] == "cancelled")
    assert cancelled["kind"] == "rollback" and cancelled["user"] == "root"
    v2 = next(h for h in rows if h["version"] == "v2")
    assert v2["outcome"] == "succeeded" and v2["user"] == "root"  # SO_PEERCRED: uid 0
    assert not any(h["kind"] == "rollback" and h["outcome"] != "cancelled" for h in rows)
    assert d.status()["apps"][app.name]["queued"] == 0
    assert d.status()["daemon"]["connections"] == 1  # only this status request is open


def test_a_client_leaving_mid_deploy_does_not_stop_it(make_app, daemon_factory):
    app = make_app()
    d = daemon_factory([app]).start()
    app.ok("deploy", "v1")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(d.socket))
        s.sendall(post(f"/v1/apps/{app.name}/deploy", {"version": "v2"}))
        seen = b""
        while b'"phase-start"' not in seen:
            chunk = s.recv(4096)
            assert chunk, seen
            seen += chunk
    wait_for(lambda: history(app)[0]["outcome"] != "running", 90, "the deploy to end")
    assert history(app)[0]["outcome"] == "succeeded"
    assert app.served_version() == "v2" and _phase(app) == "idle"


def test_docker_down_is_exit_3_through_the_daemon(make_app, daemon_factory, tmp_path):
    app = make_app()
    app.ok("deploy", "v1")  # before the daemon: it must not need Docker to start
    dead = tmp_path / "no-docker.sock"
    d = daemon_factory([app], env={"DOCKER_HOST": f"unix://{dead}"}).start()
    p = app.cli("status")
    assert p.returncode == 3, p.stderr
    assert "cannot reach the Docker engine" in p.stderr and "hint:" in p.stderr
    assert "Traceback" not in p.stderr
    p = app.cli("deploy", "v2")
    assert p.returncode == 3, p.stderr
    assert d.proc.poll() is None and d.answers()


def unit_reload(pid: int) -> None:
    """Run the shipped unit's ExecReload= for the daemon ``pid``, as systemd would."""
    unit = Path(__file__).resolve().parents[2] / "systemd" / "zdagent.service"
    line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecReload="))
    argv = [a.replace("$MAINPID", str(pid)) for a in line.split("=", 1)[1].split()]
    subprocess.run(argv, check=True, timeout=10)


def _write_app(d, app, text: str | None = None) -> None:
    (d.config_dir / f"{app.name}.toml").write_text(text or app.config.read_text())


def test_a_bad_app_file_does_not_stop_the_others(make_app, daemon_factory):
    app = make_app()
    d = daemon_factory([app])
    (d.config_dir / "broken.toml").write_text("[app\nname = ")
    d.start()
    st = d.status()
    assert list(st["apps"]) == [app.name]
    assert "broken" in st["config_errors"] and "not valid TOML" in st["config_errors"]["broken"]
    assert "broken.toml invalid" in st["daemon"]["summary"]
    assert "app file broken.toml is invalid" in d.log.read_text()
    app.ok("deploy", "v1")  # through the daemon
    assert history(app)[0]["outcome"] == "succeeded"
    data = json.loads(app.ok("status", "--json").stdout)
    assert "broken" in data["daemon"]["config_errors"]


def test_sighup_adds_removes_and_changes_apps_while_a_deploy_runs(make_app, daemon_factory):
    a, b, c = make_app(extra=FAST_WATCHDOG), make_app(), make_app()
    d = daemon_factory([a, b]).start()
    a.ok("deploy", "v1")
    assert d.status()["apps"][a.name]["status"] != "disabled"
    with RequestLoop(a.url + "/cgi-bin/version", max_seconds=90) as loop:
        deploy = cli_proc(a, "deploy", "v2")
        wait_for(lambda: _phase(a) in ("start", "probe"), 30, "the deploy to run")
        (d.config_dir / f"{b.name}.toml").unlink()  # removed
        _write_app(d, c)  # added
        (d.config_dir / "broken.toml").write_text("nonsense = [")  # bad
        _write_app(d, a, a.config.read_text().replace("[watchdog]\n",
                                                      "[watchdog]\nenabled = false\n"))  # changed
        unit_reload(d.proc.pid)  # what `systemctl reload zdagent` runs
        wait_for(lambda: d.status()["daemon"]["reloads"] == 1, 30, "the reload")
        st = d.status()
        assert sorted(st["apps"]) == sorted([a.name, c.name]), (st, d.log.read_text())
        assert "broken" in st["config_errors"]
        wait_for(lambda: d.status()["apps"][a.name]["status"] == "disabled", 30,
                 "a's new config")
        assert d.status()["apps"][a.name]["busy"]  # the deploy went on meanwhile
        _out, err = deploy.communicate(timeout=120)
        assert deploy.returncode == 0, err
    assert loop.failures == []
    assert a.served_version() == "v2" and history(a)[0]["outcome"] == "succeeded"
    c.ok("deploy", "v1")
    assert c.served_version() == "v1"
    assert d.status()["apps"][c.name]["queued"] == 0
    gone = b.cli("status")  # b is no longer the daemon's: the CLI says so and runs locally
    assert "does not manage" in gone.stderr
    log = d.log.read_text()
    assert f"{b.name} removed" in log and f"{c.name} added" in log and f"{a.name} changed" in log
    _write_app(d, c, "[app]\nname = ")  # a bad edit of a served app: it keeps the last good one
    # A new app whose name sorts first, on a's slot ports: the running a keeps them.
    rival = "zda" + a.name[3:]
    (d.config_dir / f"{rival}.toml").write_text(
        a.config.read_text().replace(f'name = "{a.name}"', f'name = "{rival}"')
        .replace(f"{a.name}.upstream.conf", f"{rival}.upstream.conf"))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.status()["daemon"]["reloads"] == 2, 30, "the second reload")
    st = d.status()
    assert c.name in st["apps"] and c.name in st["config_errors"]
    assert a.name in st["apps"] and rival not in st["apps"], st
    assert f"slot port of app {a.name}" in st["config_errors"][rival]
    c.ok("deploy", "v2")
    assert c.served_version() == "v2"


def _notify_socket() -> tuple[socket.socket, str]:
    path = f"/tmp/zdn-{uuid.uuid4().hex[:8]}.sock"  # AF_UNIX paths are short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    return sock, path


def _drain(sock: socket.socket) -> list[str]:
    seen = []
    with contextlib.suppress(TimeoutError):
        while True:
            seen.append(sock.recv(4096).decode())
    return seen


def test_a_tick_that_always_raises_is_shown_while_others_deploy_and_pings_go_on(
        make_app, daemon_factory):
    """Garbage (not UTF-8, in an Nginx comment) in a's upstream file makes every tick of a's
    watch loop raise: a shows ``error``, logged once; b deploys; WATCHDOG=1 keeps coming."""
    a, b = make_app(extra=FAST_WATCHDOG), make_app()
    sock, path = _notify_socket()
    try:
        d = daemon_factory([a, b], env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        d.start()
        a.ok("deploy", "v1")
        b.ok("deploy", "v1")
        wait_for(lambda: d.status()["apps"][a.name]["status"] == "healthy", 30, "healthy")
        upstream = a.nginx.prefix / "zdagent" / f"{a.name}.upstream.conf"
        good = upstream.read_bytes()
        try:
            upstream.write_bytes(good + b"\n# \xff\xfe\xfa not utf-8\n")
            wait_for(lambda: d.status()["apps"][a.name]["status"] == "error", 30, "error")
            checks = d.status()["apps"][a.name]["checks"]
            _drain(sock)
            b.ok("deploy", "v2")  # the other app is not disturbed
            assert b.served_version() == "v2"
            st = d.status()
            app = st["apps"][a.name]
            assert app["status"] == "error" and "UnicodeDecodeError" in app["last_reason"]
            assert app["task"]["alive"] and app["task"]["restarts"] == 0
            assert st["daemon"]["tasks_alive"] and "error" in st["daemon"]["summary"]
            wait_for(lambda: "WATCHDOG=1" in "".join(_drain(sock)), 15, "pings after")
            assert d.log.read_text().count("watchdog check failed") == 1  # once per error
            assert checks == d.status()["apps"][a.name]["checks"]  # no probe counted
        finally:
            upstream.write_bytes(good)
        wait_for(lambda: d.status()["apps"][a.name]["status"] == "healthy", 60,
                 "a healthy again")
        assert d.proc.poll() is None
    finally:
        sock.close()
        os.unlink(path)


def _daemon_run(d: DaemonProc, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zdagent", "daemon", "--config-dir",
                           str(d.config_dir), "--socket", str(d.socket), *extra],
                          env=d.env, capture_output=True, text=True, timeout=60, check=False)


def test_an_unknown_socket_group_is_exit_3_before_any_app_is_touched(daemon_factory):
    d = daemon_factory([])
    p = _daemon_run(d, "--socket-group", f"zdnogroup{uuid.uuid4().hex[:6]}")
    assert p.returncode == 3, p.stderr
    assert "unknown group" in p.stderr and "hint:" in p.stderr
    assert "Traceback" not in p.stderr and "app(s) in" not in p.stderr  # nothing loaded
    assert not d.socket.exists()


def test_a_second_daemon_on_a_live_socket_refuses_to_start(daemon_factory):
    first = daemon_factory([]).start()
    p = _daemon_run(first)
    assert p.returncode == 3, p.stderr
    assert "already serving" in p.stderr and "hint:" in p.stderr
    assert "Traceback" not in p.stderr
    assert first.answers() and first.proc.poll() is None  # the first one keeps its socket
    first.proc.terminate()
    assert first.proc.wait(30) == 0
    second = daemon_factory([])
    second.config_dir, second.socket = first.config_dir, first.socket
    stale = socket.socket(socket.AF_UNIX)  # a socket file nothing answers on: replaced
    stale.bind(str(first.socket))
    stale.close()
    second.start()
    assert second.answers()


def test_daemon_package_entry_points():
    p = subprocess.run([sys.executable, "-c", "from zdagent.daemon import main; "
                        "main(['--help'])"], capture_output=True, text=True, check=False)
    assert p.returncode == 0 and "SIGHUP" in p.stdout
