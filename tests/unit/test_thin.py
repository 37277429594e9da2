"""The thin client's pieces that need no daemon: argv, replies, constants, --version."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest

from tests.unit.test_config import MINIMAL
from zdagent import api, client, config, thin
from zdagent.client import DaemonClient, DaemonError


@pytest.mark.parametrize(("argv", "verb", "opts", "version"), [
    (["status"], "status", {}, None),
    (["status", "--json", "-c", "a.toml"], "status", {"json": True, "config": "a.toml"}, None),
    (["deploy", "v2", "--no-wait", "--socket=/s"], "deploy",
     {"no_wait": True, "socket": "/s"}, "v2"),
    (["deploy", "--config", "x.toml", "v2"], "deploy", {"config": "x.toml"}, "v2"),
    (["rollback", "--to", "v1", "--json"], "rollback", {"to": "v1", "json": True}, None),
])
def test_parse_accepts_the_daemon_commands(argv, verb, opts, version):
    call = thin.parse(argv)
    assert call is not None
    assert (call.verb, call.opts, call.version) == (verb, opts, version)


@pytest.mark.parametrize("argv", [
    [], ["--version", "status"], ["history"], ["status", "--local"], ["status", "--help"],
    ["deploy"], ["deploy", "v1", "v2"], ["status", "extra"], ["status", "--to", "v1"],
    ["deploy", "v1", "--to", "v0"], ["rollback", "--to"], ["rollback", "--to", "--json"],
    ["rollback", "--to="], ["status", "--json=1"], ["status", "-cfoo"], ["deploy", "--", "v1"],
])
def test_parse_leaves_everything_else_to_the_full_cli(argv):
    assert thin.parse(argv) is None


def test_defaults_agree_with_the_full_cli():
    from zdagent import cli, doctor
    from zdagent.daemon import server

    # One definition (client.py, stdlib-only); the others import it.
    assert not hasattr(api, "DEFAULT_SOCKET")
    assert doctor.DEFAULT_SOCKET is server.DEFAULT_SOCKET is client.DEFAULT_SOCKET
    assert cli.app is not None
    assert str(config.DEFAULT_CONFIG_PATH) == thin.DEFAULT_CONFIG
    assert (thin.CONFIG_ENV, thin.SOCKET_ENV) == (config.CONFIG_ENV, "ZDAGENT_SOCKET")


def serve_once(tmp_path, reply: bytes) -> str:
    """A unix socket that answers one request with ``reply`` and closes."""
    path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            conn.sendall(reply)

    threading.Thread(target=run, daemon=True).start()
    return path


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"


@pytest.mark.parametrize("reply", [
    HEAD + b"Connection: close\r\n\r\n" + b'{"event": 1}\n{"result": 2}\n',
    HEAD + b"Content-Length: 27\r\n\r\n" + b'{"event": 1}\n{"result": 2}\n',
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    + b'5\r\n{"eve\r\n' + b'e\r\nnt": 1}\n{"resu\r\n' + b'8\r\nlt": 2}\n\r\n' + b"0\r\n\r\n",
])
def test_stream_reads_every_framing(tmp_path, reply):
    items = list(DaemonClient(serve_once(tmp_path, reply)).stream("/x", {}))
    assert items == [{"event": 1}, {"result": 2}]


def test_error_replies_carry_the_daemons_exit_code(tmp_path):
    body = json.dumps({"error": {"message": "app busy", "hint": "", "exit_code": 1}})
    path = serve_once(tmp_path, b"HTTP/1.1 409 Conflict\r\nConnection: close\r\n\r\n"
                      + body.encode())
    with pytest.raises(DaemonError) as e:
        DaemonClient(path).get("/v1/apps/a/status")
    assert (e.value.message, e.value.exit_code) == ("app busy", 1)


@pytest.mark.parametrize("reply", [
    b"", b"garbage\r\n\r\n", HEAD + b"Content-Length: 50\r\n\r\n{}",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_broken_replies_raise_value_error(tmp_path, reply):
    with pytest.raises(ValueError):
        DaemonClient(serve_once(tmp_path, reply)).get("/v1/status")


def test_version_imports_neither_typer_nor_rich():
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "zdagent", "--version"],
                       capture_output=True, text=True, timeout=60, check=True)
    assert p.stdout == "zdagent 0.1.0\n"
    modules = {line.split("|")[-1].strip() for line in p.stderr.splitlines()}
    assert "zdagent.thin" in modules
    assert not modules & {"typer", "rich", "click", "zdagent.cli", "zdagent.config", "json",
                          "socket"}


def test_ctrl_c_while_waiting_for_the_daemon_is_one_line_and_130(tmp_path):
    """The fast path's first request hangs (the daemon never answers); SIGINT meanwhile."""
    import signal

    path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(30)
    p = subprocess.Popen([sys.executable, "-m", "zdagent", "status", "--socket", path],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = srv.accept()  # the client is inside its request: interrupt it there
        with conn:
            conn.recv(4096)
            p.send_signal(signal.SIGINT)
            _out, err = p.communicate(timeout=30)
    finally:
        srv.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


def test_the_full_cli_losing_the_daemon_mid_status_is_exit_3_with_a_hint(tmp_path):
    """`status --json` through the full CLI (the SSH gate's path): the daemon answers who it
    manages, then drops the status request: exit 3, one line, a hint at its log."""
    cfg = tmp_path / "web.toml"
    cfg.write_text(MINIMAL)
    path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(2)
    srv.settimeout(30)
    body = json.dumps({"apps": {"web": {"config": "/elsewhere.toml"}}}).encode()

    def run() -> None:
        with srv:
            for reply in (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
                          b""):  # the second request: closed without a reply
                conn, _ = srv.accept()
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(4096)
                    conn.sendall(reply)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    code = ("import sys; from zdagent.cli import main; "
            f"sys.argv = ['zdagent', 'status', '-c', {str(cfg)!r}, '--socket', {path!r}]; "
            "main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=False)
    t.join(30)
    assert p.returncode == 3, p.stderr
    assert "lost the connection to the daemon" in p.stderr and "journalctl -u zdagent" in p.stderr
    assert "Traceback" not in p.stderr
