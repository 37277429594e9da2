"""A switch that fails for any reason, in either mode, leaves the live slot serving, Nginx's
files byte-for-byte as they were, and no candidate behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import docker
import pytest

from benchmarks.harness import NJS_MODULE
from tests.conftest import require
from zdagent.nginx import templates_dir

# nginx.test_command for the test: the real `nginx -t`, then zdagent's view of the master
# dies (its pid file names a pid no process can have), as if Nginx stopped mid-switch.
MASTER_DIES = """\
import subprocess, sys
from pathlib import Path
pid_file, *argv = sys.argv[1:]
rc = subprocess.run(argv).returncode
if rc == 0:
    Path(pid_file).write_text(Path("/proc/sys/kernel/pid_max").read_text())
sys.exit(rc)
"""


@pytest.fixture(params=["reload", "njs"])
def live_app(request, make_app):
    """An app of either switch mode with v1 live in blue."""
    if request.param == "njs":
        require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    app = make_app(extra=f'switch_mode = "{request.param}"\n')
    app.ok("deploy", "v1")
    return app


def nginx_files(app) -> dict[str, bytes]:
    """The upstream (and njs active) files zdagent manages, as bytes."""
    return {p.name: p.read_bytes() for p in sorted((app.nginx.prefix / "zdagent").iterdir())
            if p.name.startswith(app.name)}


def set_nginx(app, **keys: str) -> None:
    """Override [nginx] keys (TOML values) in the app's config."""
    lines = [ln for ln in app.config.read_text().splitlines()
             if ln.split(" = ")[0] not in keys]
    at = lines.index("[nginx]") + 1
    lines[at:at] = [f"{k} = {v}" for k, v in keys.items()]
    app.config.write_text("\n".join(lines) + "\n")


def assert_nothing_changed(app, docker_client, before: dict[str, bytes]) -> None:
    assert nginx_files(app) == before
    assert app.served_version() == "v1"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(f"{app.name}-green")  # the candidate was removed
    st = json.loads(app.ok("status", "--json").stdout)
    assert st["live_slot"] == "blue"
    rows = json.loads(app.ok("history", "--json").stdout)
    assert rows[0]["outcome"] == "failed"


def test_a_template_that_fails_to_render_changes_nothing(live_app, docker_client, tmp_path):
    app = live_app
    bad = tmp_path / "bad.j2"
    bad.write_text("upstream {{ upstream }} {\n  server {{ no_such_var }};\n}\n")
    set_nginx(app, upstream_template=json.dumps(str(bad)))
    before = nginx_files(app)
    p = app.cli("deploy", "v2")
    assert p.returncode == 1, p.stderr
    assert f"cannot render {bad}" in p.stderr and "nothing was changed" in p.stderr
    assert "Traceback" not in p.stderr
    assert_nothing_changed(app, docker_client, before)


def test_nginx_master_gone_mid_switch_restores(live_app, docker_client, tmp_path):
    app = live_app
    script = tmp_path / "master_dies.py"
    script.write_text(MASTER_DIES)
    view = tmp_path / "zdagent-view.pid"  # zdagent's pid file; the test Nginx keeps its own
    view.write_text(app.nginx.pid_file.read_text())
    keys = {"pid_file": json.dumps(str(view)),
            "test_command": json.dumps([sys.executable, str(script), str(view),
                                        *app.nginx.argv("-t")])}
    if "njs" in app.config.read_text():  # njs runs `nginx -t` only when the upstream changes
        tpl = tmp_path / "upstream_njs.conf.j2"
        tpl.write_text((Path(templates_dir()) / "upstream_njs.conf.j2").read_text()
                       + "# a changed upstream\n")
        keys["upstream_template"] = json.dumps(str(tpl))
    set_nginx(app, **keys)
    before = nginx_files(app)
    p = app.cli("deploy", "v2")
    assert p.returncode == 3, p.stderr  # Nginx is gone: an environment problem
    assert "nginx is not running" in p.stderr and "was restored" in p.stderr
    assert "Traceback" not in p.stderr
    view.write_text(app.nginx.pid_file.read_text())  # Nginx is back, for status
    assert_nothing_changed(app, docker_client, before)
