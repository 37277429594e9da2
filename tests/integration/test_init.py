"""`zdagent init` in a temporary root: files that pass nginx -t and systemd-analyze verify."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from benchmarks.harness import free_port
from tests.conftest import require


def init(root, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zdagent", "init", "web", "--root", str(root),
                           *extra], capture_output=True, text=True, timeout=60, check=False)


def test_init_writes_valid_files_and_refuses_to_overwrite(tmp_path):
    require(shutil.which("nginx") is not None, "nginx")
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is needed (apt-get install systemd)")
    root = tmp_path / "root"
    listen = f"127.0.0.1:{free_port()}"
    p = init(root, "--image", "registry.local/web", "--listen", listen, "--server-name",
             "example.test")
    assert p.returncode == 0, p.stderr
    written = [line.split()[1] for line in p.stdout.splitlines()
               if line.startswith(("wrote", "linked"))]
    assert len(written) == 6
    cfg = root / "etc/zdagent/apps/web.toml"
    check = subprocess.run([sys.executable, "-m", "zdagent", "config", "check", "--config",
                            str(cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr

    # nginx -t on a main config that includes what init wrote
    conf = tmp_path / "nginx.conf"
    (tmp_path / "tmp").mkdir()
    conf.write_text(f"""pid {tmp_path}/nginx.pid;
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
    again = init(root, "--image", "registry.local/other", "--listen", listen)
    assert again.returncode == 2 and "exists" in again.stderr and "--force" in again.stderr
    assert before == {f: f.read_bytes() for f in root.rglob("*") if f.is_file()}

    # --force rewrites the config but never the live upstream file
    upstream = root / "etc/nginx/zdagent/web.upstream.conf"
    upstream.write_text(upstream.read_text() + "# live\n")
    forced = init(root, "--image", "registry.local/other", "--listen", listen, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "registry.local/other" in cfg.read_text()
    assert upstream.read_text().endswith("# live\n")
    assert "kept" in forced.stdout


def test_init_bad_input_writes_nothing(tmp_path):
    root = tmp_path / "root"
    for args, message in ((["--image", "x", "--blue-port", "18001", "--green-port", "18001"],
                           "must differ"),
                          (["--build-context", str(tmp_path / "missing")], "directory not found"),
                          ([], "exactly one of")):
        p = init(root, *args)
        assert p.returncode == 2 and message in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert not root.exists()
