"""Release/smoke/host-hook parts that need no Docker: config keys, the smoke verdict, host
hooks as real processes (env, argv, timeout, missing program), the notes column."""

from __future__ import annotations

import contextlib
import http.server
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from tests.unit.test_config import MINIMAL, error_of, write
from zdagent.config import SmokeCheck, load_config
from zdagent.errors import EXIT_DEPLOY_FAILED, HookFailed, SmokeCheckFailed
from zdagent.events import Event
from zdagent.hooks import (
    HookContext,
    Output,
    hook_problems,
    run_host_hook,
    run_smoke,
    smoke_problem,
)
from zdagent.store import Store

CTX = HookContext(app="web", version="v2", previous_version="v1", slot="green", deploy_id=7,
                  performer="alice")


def test_hooks_and_smoke_default_to_nothing(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.hooks.release == () and cfg.hooks.pre_deploy == () and cfg.smoke == ()
    assert cfg.hooks.timeout == 60 and cfg.hooks.release_timeout == 300


def test_hooks_and_smoke_are_read(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + """
[hooks]
release = ["bin/migrate", "--yes"]
release_timeout = 30
pre_deploy = ["./hooks/pre"]
post_deploy = ["notify-send", "done"]
timeout = 5
[[smoke]]
path = "/health"
[[smoke]]
name = "orders API"
method = "POST"
path = "/api/orders"
status = 201
contains = "id"
max_latency = 0.5
host = "shop.example.com"
"""))
    h = cfg.hooks
    assert h.release == ("bin/migrate", "--yes")  # runs in the image: kept as written
    assert h.pre_deploy == (str(tmp_path / "hooks" / "pre"),)  # from the config's directory
    assert h.post_deploy == ("notify-send", "done")  # a bare name: looked up on PATH
    assert (h.release_timeout, h.timeout) == (30, 5)
    assert cfg.smoke == (
        SmokeCheck("GET /health", "GET", "/health", 200, "", None, None),
        SmokeCheck("orders API", "POST", "/api/orders", 201, "id", 0.5, "shop.example.com"))


@pytest.mark.parametrize(("extra", "key", "says"), [
    ('[hooks]\nrelease = "bin/migrate"', "hooks.release", "list of strings"),
    ('[hooks]\npre_deploy = [""]', "hooks.pre_deploy", "list of strings"),
    # a NUL cannot be in an argv (Popen raises ValueError): refused at load, named
    ('[hooks]\npre_deploy = ["/bin/true\\u0000x"]', "hooks.pre_deploy", "NUL"),
    ('[hooks]\nrelease = ["migrate", "a\\u0000"]', "hooks.release", "NUL"),
    ('[hooks]\npost_deplyo = ["x"]', "hooks.post_deplyo", "did you mean 'post_deploy'"),
    ('[hooks]\ntimeout = 0', "hooks.timeout", "between 1 and 3600"),
    ('[[smoke]]\nmethod = "GET"', "smoke[0].path", "is required"),
    ('[[smoke]]\npath = "/"\n[[smoke]]\npath = "x"', "smoke[1].path", "absolute URL path"),
    ('[[smoke]]\npath = "/"\nmethod = "FETCH"', "smoke[0].method", "one of GET"),
    ('[[smoke]]\npath = "/"\nstatus = 99', "smoke[0].status", "between 100 and 599"),
    ('[[smoke]]\npath = "/"\nhost = "a b"', "smoke[0].host", "host name"),
    ('[[smoke]]\npath = "/"\nmax_latncy = 1', "smoke[0].max_latncy", "max_latency"),
    ('[smoke]\npath = "/"', "smoke", "array of tables"),
])
def test_bad_hooks_and_smoke_keys_are_named(tmp_path, extra, key, says):
    msg = error_of(tmp_path, MINIMAL + extra)
    assert f": {key}: " in msg and says in msg, msg


def check(**kw) -> SmokeCheck:
    base = {"name": "orders", "method": "GET", "path": "/o", "status": 200, "contains": "",
            "max_latency": None, "host": None}
    return SmokeCheck(**{**base, **kw})


def test_smoke_verdicts():
    assert smoke_problem(check(), 200, "", 9.0) is None
    assert smoke_problem(check(), 500, "", 0.1) == "status 500, expected 200"
    assert smoke_problem(check(contains="id"), 200, "nothing", 0.1) == \
        "the body does not contain 'id'"
    assert smoke_problem(check(max_latency=0.2), 200, "", 0.35) == \
        "took 350 ms, max_latency 200 ms"
    assert smoke_problem(check(status=404, contains="x"), 404, "x", 0.1) is None


def test_output_emits_every_line_and_keeps_the_tail():
    seen: list[Event] = []
    out = Output(seen.append, "release")
    out.feed(b"one\ntw")
    out.feed(b"o\r\n\nthree")
    out.close()
    assert [e.message for e in seen] == ["one", "two", "", "three"]
    assert {e.phase for e in seen} == {"release"} and {e.kind for e in seen} == {"log"}
    assert out.last_lines() == "; last output: one | two | three"


def test_output_without_newlines_stays_bounded():
    """A progress bar drawn with \\r, or binary noise, never ends its line: what is kept of
    it must not grow with the stream (nor be copied whole for every chunk)."""
    import tracemalloc

    seen: list[Event] = []
    out = Output(seen.append, "release")
    chunk = b"x" * (1 << 20)
    tracemalloc.start()
    try:
        for _ in range(32):
            out.feed(chunk)
        out.feed(b"\nnext\n")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak >> 20} MiB held for 32 MiB without a newline"
    assert [e.message for e in seen] == ["x" * 2000, "next"]


def script(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "hook.sh"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def test_a_host_hook_gets_argv_and_only_its_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDT_DAEMON_SECRET", "must-not-leak")
    dump = tmp_path / "env.txt"
    hook = script(tmp_path, f'env > {dump}\necho "args: $*"\n')
    seen: list[Event] = []
    run_host_hook("post_deploy", (str(hook), "a b", "$HOME;x"),
                  HookContext(**{**CTX.__dict__, "reason": "health failed"}), 10,
                  seen.append)
    env = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert {k: v for k, v in env.items() if k.startswith("ZDAGENT_")} == {
        "ZDAGENT_HOOK": "post_deploy", "ZDAGENT_APP": "web", "ZDAGENT_VERSION": "v2",
        "ZDAGENT_PREVIOUS_VERSION": "v1", "ZDAGENT_SLOT": "green", "ZDAGENT_DEPLOY_ID": "7",
        "ZDAGENT_PERFORMER": "alice", "ZDAGENT_REASON": "health failed"}
    assert "ZDT_DAEMON_SECRET" not in env
    assert env["PATH"] == os.environ["PATH"]
    assert "args: a b $HOME;x" in [e.message for e in seen]  # argv, no shell expansion


def test_a_failing_host_hook_names_itself_its_exit_code_and_output(tmp_path):
    hook = script(tmp_path, 'echo "checking"\necho "disk full" >&2\nexit 4\n')
    with pytest.raises(HookFailed) as e:
        run_host_hook("pre_deploy", (str(hook),), CTX, 10, lambda ev: None)
    assert e.value.exit_code == EXIT_DEPLOY_FAILED
    assert e.value.message == (f"pre_deploy hook {hook} failed with exit code 4; "
                               "last output: checking | disk full")


def test_a_host_hook_past_its_timeout_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    hook = script(tmp_path, f"sleep 60 &\necho $! > {pid_file}\necho started\nwait\n")
    t0 = time.monotonic()
    with pytest.raises(HookFailed) as e:
        run_host_hook("post_switch", (str(hook),), CTX, 1, lambda ev: None)
    assert time.monotonic() - t0 < 10
    assert "did not finish within 1s (hooks.timeout): killed; last output: started" in \
        e.value.message
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the hook's child survived the kill"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not yet reaped by init counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_hook_leaving_a_background_child_on_its_output_still_ends(tmp_path):
    """The hook exits 0 but a daemonized child keeps the pipe open: not a timeout."""
    pid_file = tmp_path / "child.pid"
    hook = script(tmp_path, f"sleep 30 &\necho $! > {pid_file}\necho bye\n")
    t0 = time.monotonic()
    try:
        run_host_hook("post_deploy", (str(hook),), CTX, 20, lambda ev: None)
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(int(pid_file.read_text()), 9)


def test_a_missing_or_non_executable_hook_is_a_clear_error(tmp_path):
    for argv in ((str(tmp_path / "nope"),), ("zdagent-no-such-program",)):
        with pytest.raises(HookFailed, match="is not an executable file") as e:
            run_host_hook("pre_deploy", argv, CTX, 5, lambda ev: None)
        assert "chmod +x" in e.value.hint
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(HookFailed, match="is not an executable file"):
        run_host_hook("pre_deploy", (str(plain),), CTX, 5, lambda ev: None)


def test_notes_column_is_added_to_an_existing_store_and_appends(tmp_path):
    db = sqlite3.connect(tmp_path / "zdagent.db")  # a store from before `notes`
    db.executescript("""CREATE TABLE deploys (id INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL, kind TEXT NOT NULL, version TEXT, image TEXT, image_id TEXT,
        slot TEXT, from_slot TEXT, started_at REAL NOT NULL, finished_at REAL,
        outcome TEXT NOT NULL, error TEXT, phases TEXT NOT NULL DEFAULT '[]', user TEXT,
        pid INTEGER);
        INSERT INTO deploys(app, kind, version, started_at, outcome)
        VALUES ('web', 'deploy', 'v1', 1.0, 'succeeded');""")
    db.close()
    store = Store(tmp_path)
    try:
        assert store.get(1).notes is None
        store.add_note(1, "post_deploy hook failed")
        store.add_note(1, "post_switch hook failed")
        assert store.get(1).notes == "post_deploy hook failed; post_switch hook failed"
        assert store.get(1).outcome == "succeeded"
    finally:
        store.close()


def test_config_check_names_hooks_whose_program_is_missing(tmp_path):
    hook = script(tmp_path, "exit 0\n")
    cfg = load_config(write(tmp_path, MINIMAL + f"""
[hooks]
pre_deploy = ["{hook}"]
post_deploy = ["./hooks/missing"]
post_switch = ["sh", "-c", "true"]
post_revert = ["zdagent-no-such-program"]
"""))
    assert hook_problems(cfg.hooks) == [
        f"hooks.post_deploy: {tmp_path / 'hooks' / 'missing'} is not an executable file",
        "hooks.post_revert: zdagent-no-such-program is not an executable file"]


class _App(http.server.BaseHTTPRequestHandler):
    """Records what each request brought; /slow answers after 1 s."""

    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Host")))
        if self.path == "/slow":
            time.sleep(1)
        with contextlib.suppress(OSError):  # /slow: the client gave up already
            self.send_response(201 if self.command == "POST" else 200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b'{"id": 1}')

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def app_port():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _App.seen = []
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_smoke_checks_send_method_path_and_host_and_name_the_failure(app_port):
    seen: list[Event] = []
    run_smoke([check(name="create", method="POST", path="/orders?x=1", status=201,
                     contains='"id"', host="shop.example.test", max_latency=5),
               check(name="list", path="/orders")], app_port, seen.append)
    assert _App.seen == [("POST", "/orders?x=1", "shop.example.test"),
                         ("GET", "/orders", f"127.0.0.1:{app_port}")]
    assert [e.message.split(":")[0] for e in seen] == ['smoke check "create"',
                                                       'smoke check "list"']
    with pytest.raises(SmokeCheckFailed) as e:
        run_smoke([check(name="list", path="/orders"),
                   check(name="slow page", path="/slow", max_latency=0.2),
                   check(name="never run", path="/orders")], app_port, lambda ev: None)
    assert e.value.message == 'smoke check "slow page" failed: no answer within 0.2s'
    assert "nothing was switched" in e.value.hint
    assert [p for _, p, _ in _App.seen[2:]] == ["/orders", "/slow"]


def test_an_interrupted_host_hook_is_killed_with_its_group(tmp_path):
    """Ctrl-C (or any error while its output is followed) must not leave the hook running:
    it has its own session, so the terminal's SIGINT never reaches it."""
    pid_file = tmp_path / "hook.pid"
    hook = script(tmp_path, f"echo $$ > {pid_file}\necho started\nexec sleep 60\n")

    def interrupt(ev: Event) -> None:
        if ev.message == "started":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_host_hook("pre_deploy", (str(hook),), CTX, 30, interrupt)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the interrupted hook kept running")
        time.sleep(0.05)


def test_a_hook_that_closes_its_output_still_has_a_timeout(tmp_path):
    """The end of its output is not the end of the hook: the timeout still holds after."""
    pid_file = tmp_path / "hook.pid"
    hook = script(tmp_path, f"echo $$ > {pid_file}\necho bye\nexec sleep 60 >/dev/null 2>&1\n")
    t0 = time.monotonic()
    try:
        with pytest.raises(HookFailed, match=r"did not finish within 1s .*last output: bye"):
            run_host_hook("pre_deploy", (str(hook),), CTX, 1, lambda ev: None)
        assert time.monotonic() - t0 < 15
        assert not _alive(int(pid_file.read_text()))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 9)


def test_a_hook_others_can_rewrite_is_refused(tmp_path):
    """Hooks run as the daemon's user (root): a program, or a directory holding it, that
    another user can write would hand that user root (the rule of sshd's StrictModes)."""
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    hook = script(hooks_dir, "exit 0\n")
    run_host_hook("pre_deploy", (str(hook),), CTX, 10, lambda ev: None)  # 0755: fine
    for target, mode in ((hook, 0o777), (hooks_dir, 0o777)):
        before = target.stat().st_mode & 0o7777
        target.chmod(mode)
        try:
            with pytest.raises(HookFailed, match="writable by others") as e:
                run_host_hook("pre_deploy", (str(hook),), CTX, 10, lambda ev: None)
            assert "chmod go-w" in e.value.hint
            cfg = load_config(write(tmp_path, MINIMAL + f'[hooks]\npre_deploy = ["{hook}"]\n'))
            [problem] = hook_problems(cfg.hooks)  # and config check says so
            assert problem.startswith(f"hooks.pre_deploy: {hook} ") and "writable" in problem
        finally:
            target.chmod(before)


def test_a_hooks_arguments_are_never_printed(tmp_path):
    """A host hook gets no env of the operator's choosing, so a token or a webhook URL can
    only come as an argument: it must not appear in progress events, errors or history."""
    secret = "https://hooks.example.com/services/T0/B0/s3cr3t-token"
    hook = script(tmp_path, 'echo "posting"\nexit 2\n')
    seen: list[Event] = []
    with pytest.raises(HookFailed) as e:
        run_host_hook("post_deploy", (str(hook), "--url", secret), CTX, 10, seen.append)
    assert "s3cr3t" not in e.value.message + (e.value.hint or "")
    assert not [ev.message for ev in seen if "s3cr3t" in ev.message]
    assert e.value.message.startswith(f"post_deploy hook {hook} ")  # still named
