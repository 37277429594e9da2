"""The operator's production host, as the README sets it up, for the integration tests.

* ``prod_venv``: zdagent installed the production way (a wheel of this checkout, ``pip install``
  with NO extras into a venv made by Debian's /usr/bin/python3) in a world-readable place, so a
  non-root user can run it. Built once per session.
* ``operator_host``: on top of it, ``zdagent init`` (its group, config, unit, gate log), the
  daemon started with the unit's own ExecStart, a deploy user in the group and an outsider not
  in it (real accounts), and a real sshd on 127.0.0.1 whose authorized_keys force the gate.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks.harness import free_port
from tests.conftest import TEST_PREFIX, require

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
SSHD = Path("/usr/sbin/sshd")


def _run(argv: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    assert p.returncode == 0, f"{' '.join(argv)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def world_readable_dir(prefix: str) -> Path:
    """A fresh directory other users may traverse (pytest's tmp_path is root-only 0700)."""
    path = Path("/var/tmp") / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture(scope="session")
def prod_venv() -> Iterator[Path]:
    """A production install: a wheel of this checkout, `pip install` with no extras."""
    require(SYSTEM_PYTHON.exists(), "Debian's /usr/bin/python3")
    base = world_readable_dir("zdagent-prod-")
    try:
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
              str(base / "wheel"), str(REPO)])
        venv = base / "venv"
        p = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], capture_output=True,
                           text=True, timeout=120, check=False)
        require(p.returncode == 0, f"python3-venv (apt-get install python3-venv): {p.stderr}")
        wheel = next((base / "wheel").glob("zdagent-*.whl"))
        _run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
              str(wheel)], timeout=600)
        yield venv
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- real accounts --------------------------------------------------------------------------

def _account_cleanup(users: list[str], group: str | None) -> None:
    for user in users:
        subprocess.run(["userdel", "--remove", user], capture_output=True, check=False,
                       timeout=60)
    if group:
        subprocess.run(["groupdel", group], capture_output=True, check=False, timeout=60)


@pytest.fixture
def test_group() -> Iterator[str]:
    """A group name for `zdagent init --group` (init creates it; removed afterwards)."""
    require(shutil.which("groupadd") is not None and os.geteuid() == 0,
            "root with groupadd/useradd (passwd package)")
    name = f"zdt{os.getpid() % 100000}g{uuid.uuid4().hex[:4]}"
    yield name
    _account_cleanup([], name)


def add_user(name: str, groups: list[str]) -> Path:
    """The README's `useradd --create-home --groups zdagent --password '*' deploy` and its
    `install -d -m 700 -o deploy -g deploy ~deploy/.ssh`; returns authorized_keys' path."""
    argv = ["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", name]
    if groups:
        argv[1:1] = ["--groups", ",".join(groups)]
    _run(argv, timeout=60)
    ssh = Path(pwd.getpwnam(name).pw_dir) / ".ssh"
    _run(["install", "-d", "-m", "700", "-o", name, "-g", name, str(ssh)])
    return ssh / "authorized_keys"


def _keygen(path: Path) -> str:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


# --- the operator's host --------------------------------------------------------------------

@dataclass
class OperatorHost:
    venv: Path
    root: Path  # what `zdagent init --root` installed into
    group: str
    app: str
    deploy_user: str
    outsider: str
    port: int  # sshd
    ssh_dir: Path
    socket: Path
    keys: dict[str, Path] = field(default_factory=dict)  # key name -> private key

    @property
    def gate_log(self) -> Path:
        return self.root / "var/log/zdagent/ssh-gate.log"

    @property
    def config_dir(self) -> Path:
        return self.root / "etc/zdagent/apps"

    def ssh_argv(self, key: str, user: str | None = None) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-i", str(self.keys[key]), "-p", str(self.port),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.ssh_dir / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", f"{user or self.deploy_user}@127.0.0.1"]

    def ssh(self, command: str | None, key: str = "deploy", user: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
        argv = self.ssh_argv(key, user) + ([command] if command is not None else [])
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    def gate_command(self, *scope: str) -> str:
        """The authorized_keys forced command, the README's, with this host's paths."""
        gate = [str(self.venv / "bin/zdagent"), "ssh-gate", *scope,
                "--config-dir", str(self.config_dir), "--socket", str(self.socket)]
        return f"ZDAGENT_GATE_LOG={self.gate_log} " + shlex.join(gate)


def unit_exec_start(unit: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart's argv and the [Service] settings of a unit file."""
    settings: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), value.strip())
    return shlex.split(settings["ExecStart"]), settings


def start_daemon_from_unit(host: OperatorHost, log: Path) -> subprocess.Popen:
    """Start zdagentd exactly as the installed unit says, with the test's paths; systemd's
    RuntimeDirectory= (and its mode) is made the way systemd makes it."""
    argv, settings = unit_exec_start(host.root / "etc/systemd/system/zdagent.service")
    replace = {"/etc/zdagent/apps": str(host.config_dir),
               "/run/zdagent/zdagent.sock": str(host.socket)}
    argv = [replace.get(a, a) for a in argv]
    assert argv[0] == str(host.venv / "bin/zdagentd"), argv
    assert argv[argv.index("--socket-group") + 1] == host.group
    run_dir = host.socket.parent
    run_dir.mkdir(parents=True, mode=int(settings["RuntimeDirectoryMode"], 8))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
    deadline = time.monotonic() + 60
    while not _answers(host.socket):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"the daemon did not open its socket\n" \
                                            f"{log.read_text()}"
        time.sleep(0.1)
    return proc


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(str(path))
        return True
    except OSError:
        return False


def start_sshd(ssh_dir: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    host_pub = _keygen(ssh_dir / "host_key")
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (ssh_dir / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {ssh_dir / 'host_key'}
PidFile {ssh_dir / 'sshd.pid'}
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
LogLevel VERBOSE
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(ssh_dir / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.1)


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def operator_host(prod_venv, test_group, make_app, tmp_path) -> Iterator[OperatorHost]:
    """The README's operator path up to the first deploy: init (group, config, unit, gate
    log), the config edited for the test's Nginx, the env file root-only, the daemon from
    the unit, a deploy user in the group and an outsider, sshd forcing the gate."""
    require(SSHD.exists() and shutil.which("ssh") is not None,
            "openssh-server and openssh-client (apt-get install openssh-server)")
    app = make_app()
    root = world_readable_dir("zdagent-host-")
    suffix = test_group.removeprefix("zdt")
    deploy_user, outsider = f"zdd{suffix}", f"zdo{suffix}"
    procs: list[subprocess.Popen] = []
    try:
        # 1. `zdagent init` exactly as the README (image source; the test Nginx's listen)
        _run([str(prod_venv / "bin/zdagent"), "init", app.name, "--root", str(root),
              "--group", test_group, "--image", "zdtest", "--listen", f"127.0.0.1:{app.port}"])
        # 2. "edit it": the operator's edit, here pointing it at the test Nginx, plus secrets
        #    in a root-only env file (written 0600 from the start, never chmod-ed)
        env_dir = root / "etc/zdagent/env"
        env_dir.mkdir(parents=True, mode=0o700)
        env_file = env_dir / f"{app.name}.env"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("ZDT_SECRET=s3cret-value\n")
        text = app.config.read_text().replace(
            "[container]\n", f"[container]\nenv_file = \"{env_file}\"\n", 1)
        (root / f"etc/zdagent/apps/{app.name}.toml").write_text(text)  # keeps 0640 root:group
        # 3. the deploy user (in the group) and an outsider
        deploy_keys = add_user(deploy_user, [test_group])
        outsider_keys = add_user(outsider, [])
        ssh_dir = tmp_path / "sshd"
        ssh_dir.mkdir(mode=0o700)
        host = OperatorHost(prod_venv, root, test_group, app.name, deploy_user, outsider, 0,
                            ssh_dir, root / "run/zdagent/zdagent.sock")
        lines = []
        for key, scope in (("deploy", [f"--apps={app.name}"]), ("other-app", ["--apps=web"]),
                           ("read-only", ["--verbs", "status,history"])):
            host.keys[key] = ssh_dir / key
            lines.append(f'command="{host.gate_command(*scope)}",restrict '
                         f"{_keygen(ssh_dir / key)}")
        deploy_keys.write_text("\n".join(lines) + "\n")  # root-owned, 0644: sshd reads it
        host.keys["outsider"] = ssh_dir / "outsider"
        outsider_keys.write_text(
            f'command="{host.gate_command()}",restrict {_keygen(ssh_dir / "outsider")}\n')
        # 4. the daemon, as systemd would start it
        procs.append(start_daemon_from_unit(host, tmp_path / "daemon.log"))
        sshd, host.port = start_sshd(ssh_dir, ssh_dir / "sshd.log")
        procs.append(sshd)
        host.test_app = app  # type: ignore[attr-defined]
        yield host
    finally:
        for proc in reversed(procs):
            _stop(proc)
        _account_cleanup([deploy_user, outsider], None)
        shutil.rmtree(root, ignore_errors=True)


__all__ = ["TEST_PREFIX", "OperatorHost", "add_user", "unit_exec_start"]
