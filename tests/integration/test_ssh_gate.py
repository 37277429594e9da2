"""A real sshd on 127.0.0.1 whose authorized_keys line forces `zdagent ssh-gate`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.harness import free_port
from tests.conftest import require

SSHD = Path("/usr/sbin/sshd")


@dataclass
class SshServer:
    port: int
    dir: Path
    config_dir: Path
    gate_log: Path

    def ssh(self, command: str | None, timeout: float = 180) -> subprocess.CompletedProcess:
        argv = ["ssh", "-F", "/dev/null", "-i", str(self.dir / "client_key"),
                "-p", str(self.port), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1"]
        if command is not None:
            argv.append(command)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture
def sshd(tmp_path):
    require(SSHD.exists() and shutil.which("ssh") is not None,
            "openssh-server and openssh-client (apt-get install openssh-server)")
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    config_dir = tmp_path / "apps"
    config_dir.mkdir()
    gate_log = tmp_path / "gate.log"
    host_pub = _keygen(d / "host_key")
    client_pub = _keygen(d / "client_key")
    port = free_port()
    gate = (f"ZDAGENT_GATE_LOG={gate_log} {sys.executable} -m zdagent ssh-gate "
            f"--config-dir {config_dir}")
    (d / "authorized_keys").write_text(f'command="{gate}",restrict {client_pub}\n')
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PermitRootLogin forced-commands-only
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
LogLevel VERBOSE
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=(d / "sshd.log").open("w"))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, (d / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.1)
    yield SshServer(port, d, config_dir, gate_log)
    proc.terminate()
    proc.wait(10)


def _install(app, server: SshServer) -> None:
    shutil.copy(app.config, server.config_dir / f"{app.name}.toml")


def test_deploy_over_ssh_streams_progress_and_returns_the_exit_code(make_app, sshd):
    app = make_app()
    _install(app, sshd)
    p = sshd.ssh(f"deploy {app.name} v1")
    assert p.returncode == 0, p.stderr
    assert "switching Nginx to blue" in p.stderr  # progress reached the SSH client
    p = sshd.ssh(f"deploy {app.name} v2")
    assert p.returncode == 0, p.stderr
    assert app.served_version() == "v2"

    p = sshd.ssh(f"deploy {app.name} crash")
    assert p.returncode == 1  # a failed deploy's exit code reaches the ssh client
    assert "exited with code 3" in p.stderr
    assert app.served_version() == "v2"

    st = json.loads(sshd.ssh(f"status {app.name} --json").stdout)
    assert st["live_slot"] == "green"
    hist = json.loads(sshd.ssh(f"history {app.name} --json").stdout)
    assert [h["outcome"] for h in hist] == ["failed", "succeeded", "succeeded"]
    # the failed candidate took the standby's slot, so go back by version
    p = sshd.ssh(f"rollback {app.name} --to v1")
    assert p.returncode == 0, p.stderr
    assert app.served_version() == "v1"
    log = sshd.gate_log.read_text()
    assert f"command='deploy {app.name} v2' allowed" in log and "exit=1" in log


def test_everything_else_is_refused_logged_and_never_run(make_app, sshd, tmp_path):
    app = make_app()
    _install(app, sshd)
    marker = tmp_path / "pwned"
    attempts = [
        f"; touch {marker}",
        f"deploy {app.name} v1; touch {marker}",
        f"deploy {app.name} $(touch {marker})",
        f"deploy {app.name} `touch {marker}`",
        "deploy ../etc v1",
        f"deploy {app.name} ../etc",
        "deploy no-such-app v1",
        f"deploy {app.name} " + "v" * 400,
        "bash",
        "",
        None,  # an interactive session
    ]
    for cmd in attempts:
        p = sshd.ssh(cmd, timeout=60)
        assert p.returncode == 2, (cmd, p.returncode, p.stderr)
        assert "refused:" in p.stderr, (cmd, p.stderr)
        assert "Traceback" not in p.stderr
    assert not marker.exists()
    log = sshd.gate_log.read_text().splitlines()
    assert sum("refused:" in line for line in log) == len(attempts)
    assert any("<interactive>" in line for line in log)
    assert not (app.config.parent / "state" / "zdagent.db").exists()  # nothing ran


# --- the operator's path: a non-root deploy user, through the daemon -------------------------

def test_non_root_deploy_user_runs_every_verb_through_the_daemon(operator_host,
                                                                  docker_client):
    """README: init -> systemd unit -> deploy key of a user in the zdagent group. The user
    can neither write the state dir nor read the env file: everything goes through the
    daemon, started with the unit's own ExecStart."""
    host, app = operator_host, operator_host.test_app
    p = host.ssh(f"deploy {app.name} v1")
    assert p.returncode == 0, p.stderr
    assert "switching Nginx to blue" in p.stderr  # the daemon's progress, streamed back
    assert "not running" not in p.stderr and "running in this process" not in p.stderr
    p = host.ssh(f"deploy {app.name} v2")
    assert p.returncode == 0, p.stderr
    assert app.served_version() == "v2"

    st = host.ssh(f"status {app.name} --json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["live_slot"] == "green" and data["daemon"]["pid"] > 0
    hist = host.ssh(f"history {app.name} --json")
    assert hist.returncode == 0, hist.stderr
    assert [h["version"] for h in json.loads(hist.stdout)] == ["v2", "v1"]
    p = host.ssh(f"rollback {app.name}")
    assert p.returncode == 0, p.stderr
    assert app.served_version() == "v1"
    p = host.ssh(f"history {app.name}")  # the table, too
    assert p.returncode == 0 and "rollback" in p.stdout, p.stderr

    # the daemon (root) read the secret the deploy user cannot read, and nobody printed it
    env = docker_client.containers.get(f"{app.name}-green").attrs["Config"]["Env"]
    assert "ZDT_SECRET=s3cret-value" in env
    log = host.gate_log.read_text()
    assert "s3cret" not in log and f"command='rollback {app.name}' allowed" in log
    assert log.count("exit=0") == 6


def test_scoped_keys_and_users_outside_the_group_are_refused(operator_host):
    host, app = operator_host, operator_host.test_app
    p = host.ssh(f"status {app.name}", key="other-app")  # a key limited to app "web"
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [f"error: refused: this key may not touch app "
                                             f"'{app.name}'"]
    p = host.ssh(f"deploy {app.name} v1", key="read-only")
    assert p.returncode == 2 and "may not run 'deploy'" in p.stderr, p.stderr
    p = host.ssh(f"status {app.name} --json", key="read-only")
    assert p.returncode == 0 and json.loads(p.stdout)["app"] == app.name, p.stderr

    p = host.ssh(f"status {app.name}", key="outsider", user=host.outsider)
    assert p.returncode == 3, p.stderr
    assert "cannot read the app configs" in p.stderr and "group" in p.stderr
    assert "Traceback" not in p.stderr
    log = host.gate_log.read_text()
    assert "may not touch app" in log and "may not run 'deploy'" in log
    assert "refused: cannot read" not in log  # the outsider cannot write the group's log
