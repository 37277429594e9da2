"""`zdagent exec` forwards piped stdin to the one-off container on real Docker: data both
ways, EOF delivered, exit codes kept, and a command that never reads its stdin still ends."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

BUSYBOX = "/bin/busybox"


@pytest.fixture
def app(make_app):
    app = make_app()
    app.ok("deploy", "v1", "--local")
    return app


def zdagent(app, *args: str, stdin=None, input: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real CLI with the given stdin (bytes, or a file object)."""
    env = {**os.environ, "ZDAGENT_CONFIG": str(app.config), **(env or {})}
    return subprocess.run([sys.executable, "-m", "zdagent", *args], input=input, stdin=stdin,
                          capture_output=True, timeout=180, env=env, check=False)


def oneoffs_left(docker_client, app) -> list:
    return docker_client.containers.list(
        all=True, filters={"label": ["zdagent.oneoff=1", f"zdagent.app={app.name}"]})


def test_piped_stdin_reaches_the_command_and_eof_ends_it(app, docker_client, tmp_path):
    p = zdagent(app, "exec", "--", BUSYBOX, "cat", input=b"data\n")
    assert (p.returncode, p.stdout) == (0, b"data\n"), p.stderr
    # stdout and stderr stay apart; the exit code is the command's
    script = "read x; echo got=$x; echo to-stderr >&2; exit 5"
    p = zdagent(app, "exec", "--", BUSYBOX, "sh", "-c", script, input=b"42\n")
    assert (p.returncode, p.stdout, p.stderr) == (5, b"got=42\n", b"to-stderr\n")
    # nothing on stdin, and a command that never reads a stdin bigger than any socket buffer
    with open(os.devnull, "rb") as null:
        p = zdagent(app, "exec", "--", BUSYBOX, "cat", stdin=null)
    assert (p.returncode, p.stdout) == (0, b""), p.stderr
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (16 * 1024 * 1024))
    with big.open("rb") as f:
        p = zdagent(app, "exec", "--", BUSYBOX, "sh", "-c", "echo done; exit 3", stdin=f)
    assert (p.returncode, p.stdout) == (3, b"done\n"), p.stderr
    assert oneoffs_left(docker_client, app) == []


def test_megabytes_both_ways_byte_exact_and_through_the_ssh_gate(app, tmp_path):
    data = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(64 * 1024))  # 2 MiB
    t = time.monotonic()
    p = zdagent(app, "exec", "--", BUSYBOX, "cat", input=data)
    took = time.monotonic() - t
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == len(data) and p.stdout == data, f"{len(p.stdout)} of {len(data)}"
    print(f"2 MiB through `exec -- cat` in {took:.2f}s")
    src = tmp_path / "input.bin"
    src.write_bytes(data)
    with src.open("rb") as f:  # a file as stdin, as `zdagent exec -- wc -c < input.bin`
        p = zdagent(app, "exec", "--", BUSYBOX, "wc", "-c", stdin=f)
    assert p.returncode == 0 and p.stdout.split() == [str(len(data)).encode()], p.stderr

    # through the SSH gate (in-process, the gate's stdin is the SSH channel)
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / f"{app.name}.toml").write_text(app.config.read_text())
    env = {"SSH_ORIGINAL_COMMAND": f"exec {app.name} {BUSYBOX} wc -l",
           "ZDAGENT_GATE_LOG": str(tmp_path / "gate.log")}
    p = zdagent(app, "ssh-gate", "--config-dir", str(apps), "--verbs", "exec",
                input=b"a\nb\nc\n", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == b"3"
    assert "allowed" in (tmp_path / "gate.log").read_text()


def test_a_command_missing_from_the_image_is_a_clear_error(app, docker_client):
    """Docker refuses to start it (no such file): one line and a hint, not a bug report."""
    p = zdagent(app, "exec", "--", "/no/such/program", input=b"")
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "/no/such/program" in err and "could not start" in err and "hint:" in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert oneoffs_left(docker_client, app) == []
