"""`zdagent doctor` against real Docker, a test-owned Nginx, a real daemon and real sockets."""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.harness import NJS_MODULE
from tests.conftest import require
from zdagent.config import load_config

NJS = 'switch_mode = "njs"\n'


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[dict], str]:
    """Run `zdagent doctor --json`; return (exit code, the parsed list, stderr)."""
    p = subprocess.run([sys.executable, "-m", "zdagent", "doctor", "--json", *args],
                       capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "NO_COLOR": "1", **(env or {})})
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout), p.stderr


def by_check(results: list[dict]) -> dict[str, dict]:
    return {r["check"]: r for r in results}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp: unix socket paths must stay under 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="zdoc-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def app_dir(tmp: Path, *apps) -> Path:
    """A config directory holding each app as <name>.toml, as the daemon reads it."""
    d = tmp / "apps"
    d.mkdir(exist_ok=True)
    for app in apps:
        shutil.copy(app.config, d / f"{app.name}.toml")
    return d


class Daemon:
    """`zdagent daemon` as a subprocess; stopped (and waited for) by the test."""

    def __init__(self, config_dir: Path, sock: Path, group: str, log: Path) -> None:
        self.sock = sock
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zdagent", "daemon", "--config-dir", str(config_dir),
             "--socket", str(sock), "--socket-group", group],
            stdout=subprocess.DEVNULL, stderr=log.open("a"))
        from zdagent.client import DaemonClient

        deadline = time.monotonic() + 30
        while True:
            try:
                DaemonClient(str(sock), timeout=2).get("/v1/status")
                return
            except (OSError, ValueError):
                assert self.proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the daemon did not come up"
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def install_unit(root: Path, config_dir: Path, sock: Path, group: str) -> None:
    """The unit `init` installs (+ its enable link), naming this test's dir, socket, group."""
    unit = root / "etc/systemd/system/zdagent.service"
    unit.parent.mkdir(parents=True)
    text = Path("systemd/zdagent.service").read_text()
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    unit.write_text(text.replace(exec_start, f"ExecStart=/usr/local/bin/zdagentd --config-dir "
                                             f"{config_dir} --socket {sock} --socket-group "
                                             f"{group}"))
    wants = root / "etc/systemd/system/multi-user.target.wants/zdagent.service"
    wants.parent.mkdir(parents=True)
    wants.symlink_to("/etc/systemd/system/zdagent.service")


def test_healthy_setup_is_all_ok_and_options_come_from_the_unit(make_app, short_dir):
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    app = make_app(extra=NJS)
    app.ok("deploy", "v1")
    config_dir = app_dir(short_dir, app)
    group = grp.getgrgid(os.getgid()).gr_name
    sock = short_dir / "zd.sock"
    root = short_dir / "root"
    install_unit(root, config_dir, sock, group)
    daemon = Daemon(config_dir, sock, group, short_dir / "daemon.log")
    try:
        # no --config-dir/--socket/--socket-group: doctor reads them from the installed unit
        code, results, _ = doctor("--root", str(root))
    finally:
        daemon.stop()
    checks = by_check(results)
    live = next(s for s in ("blue", "green") if "ours" in checks[f"port:{app.name}/{s}"]
                ["message"])
    assert checks[f"port:{app.name}/{live}"]["message"].endswith(f"({app.name}-{live})")
    expected = {"docker", f"nginx:{app.nginx.pid_file}", f"nginx-config:{app.name}", "njs",
                f"port:{app.name}/blue", f"port:{app.name}/green", "socket", "socket-group",
                f"state-dir:{load_config(app.config).state_dir}", "systemd", f"app:{app.name}"}
    assert expected <= set(checks), sorted(checks)
    assert {c: checks[c]["status"] for c in expected} == {c: "ok" for c in expected}, results
    assert "API 1." in checks["docker"]["message"]
    assert "switch mode njs" in checks[f"app:{app.name}"]["message"]
    # this host's own Docker setting may be either; it is never a failure
    assert checks["live-restore"]["status"] in ("ok", "warn")
    assert code == 0, results
    assert {tuple(r) for r in results} == {("check", "status", "message", "hint")}


def test_a_port_held_by_a_foreign_process_fails_with_a_hint(make_app, short_dir):
    app = make_app()
    held = socket.socket()
    held.bind(("127.0.0.1", app.blue_port))
    held.listen()
    try:
        code, results, _ = doctor("--config-dir", str(app_dir(short_dir, app)))
    finally:
        held.close()
    port = by_check(results)[f"port:{app.name}/blue"]
    assert port["status"] == "fail"
    assert f"127.0.0.1:{app.blue_port} is held by" in port["message"]
    assert f"(pid {os.getpid()})" in port["message"]
    assert "slots.blue_port" in port["hint"]
    assert by_check(results)[f"port:{app.name}/green"]["status"] == "ok"
    assert code == 1


def test_a_port_published_by_another_container_is_not_ours(make_app, short_dir, docker_client):
    app = make_app()
    app.ok("deploy", "v1")
    live = next(s for s in ("blue", "green")
                if docker_client.containers.list(filters={"label": [
                    f"zdagent.app={app.name}", f"zdagent.slot={s}"]}))
    other = make_app()
    # a second app whose config claims the first app's live port for the same slot
    key = f"{live}_port"
    other.config.write_text(other.config.read_text().replace(
        f"{key} = {getattr(other, key)}", f"{key} = {getattr(app, key)}"))
    code, results, _ = doctor("--config-dir", str(app_dir(short_dir, other)))
    port = by_check(results)[f"port:{other.name}/{live}"]
    assert port["status"] == "fail", results
    assert f"published by container {app.name}-{live} (app {app.name} slot {live})" \
        in port["message"]
    assert code == 1


def test_nginx_stopped_fails(make_app, short_dir):
    app = make_app()
    app.nginx.stop()
    code, results, _ = doctor("--config-dir", str(app_dir(short_dir, app)))
    check = by_check(results)[f"nginx:{app.nginx.pid_file}"]
    assert check["status"] == "fail"
    assert "nginx is not running" in check["message"] and check["hint"]
    assert code == 1


def test_an_upstream_file_nginx_does_not_include_fails(make_app, short_dir):
    app = make_app()
    (app.nginx.prefix / "sites" / f"{app.name}.conf").unlink()
    code, results, _ = doctor("--config-dir", str(app_dir(short_dir, app)))
    check = by_check(results)[f"nginx-config:{app.name}"]
    assert check["status"] == "fail"
    assert "is not part of Nginx's config" in check["message"]
    assert "zdagent nginx render --site" in check["hint"]
    assert code == 1


def test_a_site_nginx_has_not_loaded_warns(make_app, short_dir):
    first = make_app()
    second = make_app(start_nginx=False)  # its files are written, Nginx is not reloaded
    _, results, _ = doctor("--config-dir", str(app_dir(short_dir, first, second)))
    checks = by_check(results)
    assert checks[f"nginx-config:{first.name}"]["status"] == "ok"
    assert "served through it" in checks[f"nginx-config:{first.name}"]["message"]
    stale = checks[f"nginx-config:{second.name}"]
    assert stale["status"] == "warn" and "nothing answers" in stale["message"], stale
    assert "nginx -s reload" in stale["hint"]
    second.nginx.reload()
    _, results, _ = doctor("--config-dir", str(app_dir(short_dir, first, second)))
    assert by_check(results)[f"nginx-config:{second.name}"]["status"] == "ok"


def test_njs_installed_but_not_loaded_is_reported_loadable(nginx_server, make_app, short_dir):
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    conf = nginx_server.conf.read_text()
    nginx_server.conf.write_text(conf.replace(f"load_module {NJS_MODULE};\n", ""))
    app = make_app()  # reload mode, on an Nginx that does not load njs
    code, results, _ = doctor("--config-dir", str(app_dir(short_dir, app)))
    checks = by_check(results)
    assert checks["njs"]["status"] == "warn", checks["njs"]
    assert "and loadable, but not loaded" in checks["njs"]["message"]
    assert f"load_module {NJS_MODULE};" in checks["njs"]["hint"]
    assert checks[f"app:{app.name}"]["status"] == "ok"
    assert "switch mode reload (Nginx does not load" in checks[f"app:{app.name}"]["message"]
    # the same app in njs mode cannot switch there: a failure
    app.config.write_text(app.config.read_text() + NJS)  # the config ends in [nginx]
    code, results, _ = doctor("--config-dir", str(app_dir(short_dir, app)))
    assert by_check(results)["njs"]["status"] == "fail"
    assert by_check(results)[f"app:{app.name}"]["status"] == "fail"
    assert code == 1


def test_a_module_this_nginx_cannot_load_is_named(tmp_path):
    require(shutil.which("nginx") is not None, "nginx (apt-get install nginx)")
    from zdagent.doctor import njs_load_error

    bogus = tmp_path / "ngx_http_js_module.so"
    bogus.write_bytes(b"not an ELF file")
    error = njs_load_error("nginx", bogus)
    assert error is not None and "dlopen()" in error and str(bogus) in error
    if NJS_MODULE.exists():
        assert njs_load_error("nginx", NJS_MODULE) is None


def test_docker_unreachable_fails_without_a_traceback(short_dir):
    code, results, _ = doctor("--config-dir", str(short_dir), "--root", str(short_dir),
                              env={"DOCKER_HOST": f"unix://{short_dir}/dead.sock"})
    checks = by_check(results)
    assert checks["docker"]["status"] == "fail"
    assert "cannot reach the Docker engine" in checks["docker"]["message"]
    assert "DOCKER_HOST" in checks["docker"]["hint"]
    assert checks["live-restore"]["status"] == "warn"
    assert checks["apps"]["status"] == "warn"  # an empty config dir
    assert code == 1


def test_docker_unreachable_plain_output_is_one_line_per_check(short_dir):
    p = subprocess.run([sys.executable, "-m", "zdagent", "doctor", "--config-dir",
                        str(short_dir), "--root", str(short_dir)],
                       capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "NO_COLOR": "1",
                            "DOCKER_HOST": f"unix://{short_dir}/dead.sock"})
    lines = p.stdout.splitlines()
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr
    assert lines[0].startswith("fail  docker: cannot reach the Docker engine")
    assert "  hint: " in lines[0]
    assert all(ln.split()[0] in ("ok", "warn", "fail") for ln in lines), lines
    assert "fail" in p.stderr.splitlines()[-1]


def _unix_socket(path: Path, listen: bool) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    if listen:
        s.listen()
    return s


def test_world_writable_socket_fails(short_dir):
    group = grp.getgrgid(os.getgid()).gr_name
    path = short_dir / "zd.sock"
    s = _unix_socket(path, listen=True)
    try:
        os.chmod(path, 0o666)
        _, results, _ = doctor("--config-dir", str(short_dir), "--root", str(short_dir),
                               "--socket", str(path), "--socket-group", group)
    finally:
        s.close()
    check = by_check(results)["socket"]
    assert check["status"] == "fail" and "world-writable" in check["message"]


def test_socket_nobody_answers_and_missing_group_fail(short_dir):
    path = short_dir / "zd.sock"
    s = _unix_socket(path, listen=False)  # a stale socket file: nothing accepts
    try:
        os.chmod(path, 0o660)
        group = grp.getgrgid(path.stat().st_gid).gr_name
        _, results, _ = doctor("--config-dir", str(short_dir), "--root", str(short_dir),
                               "--socket", str(path), "--socket-group", group)
        _, missing, _ = doctor("--config-dir", str(short_dir), "--root", str(short_dir),
                               "--socket", str(path), "--socket-group", "zdoc-no-such-group")
    finally:
        s.close()
    check = by_check(results)["socket"]
    assert check["status"] == "fail" and "no daemon answers" in check["message"]
    assert by_check(missing)["socket-group"]["status"] == "fail"
    assert "groupadd" in by_check(missing)["socket-group"]["hint"]


def test_invalid_app_config_fails_and_the_others_are_still_checked(make_app, short_dir):
    app = make_app()
    config_dir = app_dir(short_dir, app)
    (config_dir / "broken.toml").write_text('[app]\nname = "broken"\n[slots]\nblue_port = 0\n')
    code, results, _ = doctor("--config-dir", str(config_dir))
    checks = by_check(results)
    assert checks["app:broken"]["status"] == "fail"
    assert "invalid config" in checks["app:broken"]["message"]
    assert checks[f"app:{app.name}"]["status"] in ("ok", "warn")
    assert checks[f"nginx-config:{app.name}"]["status"] == "ok"
    assert code == 1
