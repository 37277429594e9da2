"""`zdagent init` in a temporary root: files that pass nginx -t and systemd-analyze verify."""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import socket
import stat
import subprocess
import sys
import tomllib

import pytest

from benchmarks.harness import free_port
from tests.conftest import require
from zdagent import scaffold


def init(root, *extra: str, app: str = "web", group: str | None = None
         ) -> subprocess.CompletedProcess:
    group_args = ["--group", group] if group else []
    return subprocess.run([sys.executable, "-m", "zdagent", "init", app, "--root", str(root),
                           *group_args, *extra], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.fixture
def group(test_group):
    """init's group, test-owned (the fixture removes it)."""
    return test_group


def test_init_writes_valid_files_and_refuses_to_overwrite(tmp_path, group):
    require(shutil.which("nginx") is not None, "nginx")
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is needed (apt-get install systemd)")
    root = tmp_path / "root"
    listen = f"127.0.0.1:{free_port()}"
    p = init(root, "--image", "registry.local/web", "--listen", listen, "--server-name",
             "example.test", group=group)
    assert p.returncode == 0, p.stderr
    written = [line.split()[1] for line in p.stdout.splitlines()
               if line.startswith(("wrote", "linked"))]
    # config, site (+link), upstream, the site's access log, unit (+link), gate log
    assert len(written) == 8
    assert str(root / "var/log/nginx/zdagent-web.log") in written
    # the deploy group reads the config and appends to the gate log; nobody else does
    cfg_stat = (root / "etc/zdagent/apps/web.toml").stat()
    assert grp.getgrgid(cfg_stat.st_gid).gr_name == group
    assert stat.S_IMODE(cfg_stat.st_mode) == 0o640
    assert stat.S_IMODE((root / "etc/zdagent/apps").stat().st_mode) == 0o750
    log_stat = (root / "var/log/zdagent/ssh-gate.log").stat()
    assert stat.S_IMODE(log_stat.st_mode) == 0o660 and log_stat.st_gid == cfg_stat.st_gid
    cfg = root / "etc/zdagent/apps/web.toml"
    check = subprocess.run([sys.executable, "-m", "zdagent", "config", "check", "--config",
                            str(cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr

    # nginx -t on a main config that includes what init wrote
    conf = tmp_path / "nginx.conf"
    (tmp_path / "tmp").mkdir()
    njs = scaffold.njs_available()
    load = f"load_module {scaffold.NJS_MODULE};\n" if njs else ""
    conf.write_text(f"""{load}pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    client_body_temp_path {tmp_path}/tmp;
    proxy_temp_path {tmp_path}/tmp;
    include {root}/etc/nginx/sites-enabled/*.conf;
}}
""")
    t = subprocess.run(["nginx", "-t", "-c", str(conf), "-e", str(tmp_path / "error.log")],
                       capture_output=True, text=True, check=False)
    assert t.returncode == 0, t.stderr

    unit = root / "etc/systemd/system/zdagent.service"
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, check=False)
    assert v.returncode == 0 and v.stdout.strip() == "" and v.stderr.strip() == "", v.stderr
    wants = root / "etc/systemd/system/multi-user.target.wants/zdagent.service"
    assert wants.is_symlink()

    # a second run with other options refuses and changes nothing
    before = {f: f.read_bytes() for f in root.rglob("*") if f.is_file()}
    again = init(root, "--image", "registry.local/other", "--listen", listen, group=group)
    assert again.returncode == 2 and "exists" in again.stderr and "--force" in again.stderr
    assert before == {f: f.read_bytes() for f in root.rglob("*") if f.is_file()}

    # --force rewrites the config but never the live upstream file
    upstream = root / "etc/nginx/zdagent/web.upstream.conf"
    upstream.write_text(upstream.read_text() + "# live\n")
    forced = init(root, "--image", "registry.local/other", "--listen", listen, "--force",
                  group=group)
    assert forced.returncode == 0, forced.stderr
    assert "registry.local/other" in cfg.read_text()
    assert upstream.read_text().endswith("# live\n")
    assert "kept" in forced.stdout


def test_init_picks_free_ports_public_url_and_switch_mode(tmp_path, group):
    root = tmp_path / "root"
    with socket.socket() as taken:
        # something already listens on 18003: no app may get it
        with contextlib.suppress(OSError):  # someone else holds it: just as good
            taken.bind(("127.0.0.1", 18003))
        assert init(root, "--image", "r/web", "--listen", "8080", group=group).returncode == 0
        p = init(root, "--image", "r/api", "--listen", "127.0.0.1:8081", app="api", group=group)
        assert p.returncode == 0, p.stderr
    web = tomllib.loads((root / "etc/zdagent/apps/web.toml").read_text())
    api = tomllib.loads((root / "etc/zdagent/apps/api.toml").read_text())
    ports = [web["slots"]["blue_port"], web["slots"]["green_port"],
             api["slots"]["blue_port"], api["slots"]["green_port"]]
    assert len(set(ports)) == 4 and 18003 not in ports and 8080 not in ports
    assert web["nginx"]["public_url"] == "http://127.0.0.1:8080/"
    assert api["nginx"]["public_url"] == "http://127.0.0.1:8081/"
    expected = "njs" if scaffold.njs_available() else "reload"
    assert web["nginx"]["switch_mode"] == api["nginx"]["switch_mode"] == expected
    p = init(root, "--image", "r/x", "--listen", "80", "--switch-mode", "reload", app="x",
             group=group)
    assert p.returncode == 0, p.stderr
    x = tomllib.loads((root / "etc/zdagent/apps/x.toml").read_text())
    assert x["nginx"]["switch_mode"] == "reload" and x["nginx"]["public_url"] == \
        "http://127.0.0.1/"


def test_init_git_source_gets_a_sandbox_dropin(tmp_path, group):
    repo = tmp_path / "web.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    root = tmp_path / "root"
    p = init(root, "--git-repo", str(repo), group=group)
    assert p.returncode == 0, p.stderr
    dropin = (root / "etc/systemd/system/zdagent.service.d/git-web.conf").read_text()
    assert f"ReadWritePaths={repo}\n" in dropin
    # the unit with its drop-in passes systemd-analyze verify without a word
    unit_dir = tmp_path / "units"
    (unit_dir / "zdagent.service.d").mkdir(parents=True)
    shutil.copy(root / "etc/systemd/system/zdagent.service", unit_dir)
    shutil.copy(root / "etc/systemd/system/zdagent.service.d/git-web.conf",
                unit_dir / "zdagent.service.d")
    v = subprocess.run(["systemd-analyze", "verify", str(unit_dir / "zdagent.service")],
                       capture_output=True, text=True, check=False, timeout=60,
                       env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"})
    assert v.returncode == 0 and not v.stdout.strip() and not v.stderr.strip(), v.stderr


def test_init_bad_input_writes_nothing(tmp_path, group):
    root = tmp_path / "root"
    for args, message in ((["--image", "x", "--blue-port", "18001", "--green-port", "18001"],
                           "must differ"),
                          (["--build-context", str(tmp_path / "missing")], "directory not found"),
                          ([], "exactly one of")):
        p = init(root, *args, group=group)
        assert p.returncode == 2 and message in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert not root.exists()
