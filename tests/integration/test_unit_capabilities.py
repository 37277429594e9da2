"""zdagent as the shipped systemd unit runs it: root, but without CAP_SYS_PTRACE (the unit's
CapabilityBoundingSet), next to an Nginx whose workers run as www-data, as Debian's do. Such a
zdagent cannot see which process owns a worker's sockets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from benchmarks.harness import NJS_MODULE, NginxServer
from tests.conftest import require
from tests.integration.test_daemon import wait_for

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "zdagent.service"


def unit_bounding_set() -> str:
    """The shipped unit's CapabilityBoundingSet, as setpriv's --bounding-set argument."""
    (line,) = [ln for ln in UNIT.read_text().splitlines()
               if ln.startswith("CapabilityBoundingSet=")]
    caps = line.split("=", 1)[1].split()
    return "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)


@pytest.fixture
def nginx_server() -> Iterator[NginxServer]:
    """This module's test Nginx: workers as www-data, so its files live in a directory they
    can read (pytest's temporary directories are root's, 0700)."""
    require(shutil.which("nginx") is not None, "nginx (apt-get install nginx)")
    root = Path(tempfile.mkdtemp(prefix="zdtest-unit-caps-"))
    root.chmod(0o755)
    server = NginxServer.create(root / "nginx")
    server.conf.write_text(server.conf.read_text().replace("user root;", "user www-data;"))
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_njs_drain_waits_under_the_shipped_units_capabilities(make_app, docker_client):
    """The njs drain still waits for a request in flight to the old slot before stopping it,
    although the unit's zdagent cannot tell whose the connection is."""
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    require(os.getuid() == 0, "root (the unit runs zdagent as root)")
    app = make_app(extra='switch_mode = "njs"\n')
    app.config.write_text(app.config.read_text().replace(
        "drain_seconds = 5", 'drain_seconds = 15\nafter_switch = "stop"'))
    restricted = ["setpriv", f"--bounding-set={unit_bounding_set()}", "--"]
    env = {**os.environ, "ZDAGENT_CONFIG": str(app.config), "NO_COLOR": "1", **app.env}

    def zdagent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*restricted, sys.executable, "-m", "zdagent", *args],
                              capture_output=True, text=True, timeout=180, env=env, check=False)

    p = zdagent("deploy", "v1")
    assert p.returncode == 0, p.stderr
    workers = psutil.Process(int(app.nginx.pid_file.read_text())).children()
    assert workers and {w.username() for w in workers} == {"www-data"}
    probe = subprocess.run([*restricted, sys.executable, "-c",
                            f"import psutil; psutil.Process({workers[0].pid}).net_connections()"],
                           capture_output=True, text=True, check=False)
    assert "AccessDenied" in probe.stderr, probe.stderr  # what the unit's zdagent cannot see

    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=app.get("/cgi-bin/slow?4")))
    t.start()
    wait_for(lambda: any(c.raddr and c.raddr.port == app.blue_port and
                         c.status == psutil.CONN_ESTABLISHED
                         for c in psutil.net_connections(kind="tcp")), 10,
             "the slow request in flight to blue")
    p = zdagent("deploy", "v2")
    assert p.returncode == 0, p.stderr
    t.join(30)
    assert box["r"].status_code == 200 and box["r"].text.startswith("slow v1"), box
    assert docker_client.containers.get(f"{app.name}-blue").status == "exited"
