"""The watchdog's rules (pure), one tick against real local HTTP servers, sd_notify."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path

from benchmarks.harness import free_port
from zdagent.config import WatchdogConfig, load_config
from zdagent.nginx import render_upstream
from zdagent.notify import Notifier
from zdagent.probe import Answer
from zdagent.watchdog import (
    Action,
    RoutedSlot,
    WatchHooks,
    WatchState,
    choose,
    classify,
    tick,
)

POLICY = WatchdogConfig(enabled=True, interval=1.0, failures=3, cooldown=60.0, max_reverts=2,
                        window=3600.0)


def test_k_consecutive_failures_are_needed_and_a_pass_resets():
    st = WatchState()
    assert [st.observe(False, POLICY) for _ in range(2)] == [False, False]
    st.observe(True, POLICY)
    assert st.consecutive == 0
    assert [st.observe(False, POLICY) for _ in range(3)] == [False, False, True]


def test_revert_only_to_a_healthy_standby():
    assert choose(WatchState(), 1000.0, POLICY, standby_healthy=True) == (Action.REVERT, "")
    action, why = choose(WatchState(), 1000.0, POLICY, standby_healthy=False)
    assert action is Action.DEGRADED and "standby is not healthy" in why


def test_no_second_revert_inside_the_cooldown():
    st = WatchState(reverts=[1000.0])
    action, why = choose(st, 1030.0, POLICY, standby_healthy=True)
    assert action is Action.DEGRADED and "cooldown" in why
    assert choose(st, 1061.0, POLICY, standby_healthy=True)[0] is Action.REVERT


def test_at_most_max_reverts_per_window():
    st = WatchState(reverts=[0.0, 100.0])
    action, why = choose(st, 200.0, POLICY, standby_healthy=True)
    assert action is Action.DEGRADED and "2 reverts" in why
    assert choose(st, 3700.0, POLICY, standby_healthy=True)[0] is Action.REVERT


def test_notifier_sends_to_a_path_and_to_an_abstract_socket(monkeypatch, tmp_path):
    for abstract in (False, True):
        name = f"zdn-{uuid.uuid4().hex[:8]}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = "\0" + name if abstract else f"/tmp/{name}.sock"
        sock.bind(address)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else address)
        monkeypatch.setenv("WATCHDOG_USEC", "4000000")
        n = Notifier()
        assert n.watchdog_interval == 2.0
        n.ready("1 apps, all healthy")
        assert sock.recv(100) == b"READY=1\nSTATUS=1 apps, all healthy"
        sock.close()
        if not abstract:
            os.unlink(address)


def test_notifier_is_silent_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    assert n.send("READY=1") is False and n.watchdog_interval is None


# --- one tick against real local HTTP servers ----------------------------------------------

class Slot:
    """A tiny asyncio HTTP server: answers ``status`` with X-Zdagent-Upstream = ``upstream``."""

    def __init__(self, status: int = 200, upstream: str = "") -> None:
        self.status, self.upstream, self.server, self.port = status, upstream, None, 0

    async def _serve(self, reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n"
        if self.upstream:
            head += f"X-Zdagent-Upstream: {self.upstream}\r\n"
        writer.write((head + "\r\n").encode())
        await writer.drain()
        writer.close()

    async def start(self, port: int = 0) -> Slot:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def app_cfg(tmp_path: Path, blue: int, green: int, edge: int, pid_file: Path):
    path = tmp_path / "web.toml"
    upstream = tmp_path / "web.upstream.conf"
    path.write_text(f"""
[app]
name = "web"
state_dir = "{tmp_path / 'state'}"
[source]
image = "registry.local/web"
[container]
port = 8080
[slots]
blue_port = {blue}
green_port = {green}
[health]
path = "/health"
timeout = 1
[nginx]
upstream_file = "{upstream}"
pid_file = "{pid_file}"
public_url = "http://127.0.0.1:{edge}/"
[watchdog]
interval = 0.1
failures = 2
cooldown = 60
max_reverts = 2
""")
    cfg = load_config(path)
    upstream.write_text(render_upstream(cfg, "green", "blue"))
    return cfg


class Hooks:
    """Records the daemon's side: answers each action with the next queued outcome."""

    def __init__(self, outcomes: list[str | None]) -> None:
        self.outcomes, self.calls, self.lines = outcomes, [], []

    def make(self) -> WatchHooks:
        async def act(kind: str, reason: str, expected: str) -> str | None:
            self.calls.append((kind, expected))
            return self.outcomes.pop(0)

        return WatchHooks(busy=lambda: False,
                          revert=lambda r, e: act("revert", r, e),
                          restart=lambda r, e: act("restart", r, e),
                          log=self.lines.append)


async def _rounds(cfg, state, hooks, n: int) -> None:
    routed = RoutedSlot(cfg)
    for _ in range(n):
        await tick(cfg, state, hooks, routed)


def test_a_refused_revert_is_recorded_and_uses_no_budget(tmp_path):
    async def main():
        blue = await Slot(200).start()
        green = await Slot(500).start()
        edge = await Slot(500).start()
        pid = tmp_path / "nginx.pid"
        pid.write_text(str(os.getpid()))
        cfg = app_cfg(tmp_path, blue.port, green.port, edge.port, pid)
        edge.upstream = f"127.0.0.1:{green.port}"
        hooks = Hooks(["a deploy holds the app's lock", None])
        state = WatchState()
        await _rounds(cfg, state, hooks.make(), 2)
        assert hooks.calls == [("revert", "green")]
        assert state.status == "revert-failed" and state.reverts == []
        assert "a deploy holds the app's lock" in state.last_reason
        assert state.failed_actions == 1
        await _rounds(cfg, state, hooks.make(), 2)  # the budget is intact: it tries again
        assert hooks.calls == [("revert", "green")] * 2
        assert state.status == "reverted" and len(state.reverts) == 1
        for s in (blue, green, edge):
            await s.stop()

    asyncio.run(main())


def test_nginx_down_touches_nothing_and_passes_when_it_is_back(tmp_path):
    async def main():
        blue, green = await Slot(200).start(), await Slot(200).start()
        edge_port = free_port()  # nothing listens there: Nginx refuses
        pid = tmp_path / "nginx.pid"
        pid.write_text(str(os.getpid()))
        cfg = app_cfg(tmp_path, blue.port, green.port, edge_port, pid)
        hooks = Hooks([])
        state = WatchState()
        await _rounds(cfg, state, hooks.make(), 5)
        assert state.status == "nginx-down" and hooks.calls == []
        assert "does not answer" in state.last_reason
        assert "green answers directly" in state.last_reason
        pid.unlink()  # the master is gone too
        await _rounds(cfg, state, hooks.make(), 5)
        assert state.status == "nginx-down" and hooks.calls == []
        assert "Nginx is not running" in state.last_reason
        pid.write_text(str(os.getpid()))
        edge = await Slot(200, f"127.0.0.1:{green.port}").start(edge_port)
        await _rounds(cfg, state, hooks.make(), 1)
        assert state.status == "healthy" and state.last_reason is None
        assert hooks.calls == [] and any("Nginx is back" in x for x in hooks.lines)
        for s in (blue, green, edge):
            await s.stop()

    asyncio.run(main())


def test_answered_by_the_backup_counts_as_a_failure(tmp_path):
    """The live slot's health passes directly but Nginx used the standby: not healthy."""
    async def main():
        blue, green = await Slot(200).start(), await Slot(200).start()
        edge = await Slot(200).start()
        pid = tmp_path / "nginx.pid"
        pid.write_text(str(os.getpid()))
        cfg = app_cfg(tmp_path, blue.port, green.port, edge.port, pid)
        edge.upstream = f"127.0.0.1:{green.port}, 127.0.0.1:{blue.port}"
        state = WatchState()
        await _rounds(cfg, state, Hooks([]).make(), 1)
        assert state.status == "failing" and "answered by" in state.last_reason
        for s in (blue, green, edge):
            await s.stop()

    asyncio.run(main())


def test_stale_reason_is_never_shown():
    st = WatchState()
    st.set("paused", "a deploy or rollback is running")
    st.set("healthy")
    assert st.last_reason is None


def test_classify_separates_the_app_from_the_edge(tmp_path):
    cfg = app_cfg(tmp_path, 18001, 18002, 18003, tmp_path / "pid")
    up = Answer(200, "127.0.0.1:18002")
    assert classify(cfg, "green", None, None, up).kind == "ok"
    assert classify(cfg, "green", "Nginx is not running", Answer(500), None).kind == \
        "nginx-down"
    refused = Answer(error="connection refused", unreachable=True)
    assert classify(cfg, "green", None, Answer(200), refused).kind == "nginx-down"
    v = classify(cfg, "green", None, refused, None)
    assert v.kind == "failing" and v.unreachable
    assert classify(cfg, "green", None, Answer(200), Answer(503, "127.0.0.1:18002")).kind == \
        "failing"


def test_response_head_parsing():
    from zdagent.probe import _parse_head

    needle = b"\r\nx-zdagent-upstream:"
    a = _parse_head(b"HTTP/1.1 503 Busy\r\nServer: n\r\nX-Zdagent-Upstream:  127.0.0.1:1 \r\n"
                    b"\r\nbody", needle)
    assert (a.status, a.header, a.unreachable) == (503, "127.0.0.1:1", False)
    assert _parse_head(b"HTTP/1.0 200 OK\r\n\r\n", needle) == Answer(200, "")
    assert _parse_head(b"HTTP/1.1 200 OK\r\nX-Zd", needle).unreachable  # cut short
    assert _parse_head(b"SSH-2.0-OpenSSH\r\n\r\n", needle).status is None


def test_aget_against_a_real_server_and_a_closed_port():
    async def main():
        srv = await Slot(204, "127.0.0.1:9").start()
        from zdagent.probe import aget

        a = await aget(f"http://127.0.0.1:{srv.port}/x?y=1", 2, "X-Zdagent-Upstream")
        assert (a.status, a.header) == (204, "127.0.0.1:9")
        await srv.stop()
        b = await aget(f"http://127.0.0.1:{srv.port}/x", 2)
        assert b.unreachable and b.error == "connection refused"

    asyncio.run(main())


def test_body_framing_for_connection_reuse():
    from zdagent.probe import _body_done

    head = b"http/1.1 200 ok\r\ncontent-length: 3\r\n"
    assert _body_done(head, b"ok") is False and _body_done(head, b"ok\n") is True
    chunked = b"http/1.1 200 ok\r\ntransfer-encoding: chunked\r\n"
    assert _body_done(chunked, b"3\r\nok\n\r\n") is False
    assert _body_done(chunked, b"3\r\nok\n\r\n0\r\n\r\n") is True
    assert _body_done(chunked, b"zz\r\n") is None
    assert _body_done(b"http/1.1 200 ok\r\nconnection: close\r\n", b"") is None
    assert _body_done(b"http/1.1 200 ok\r\n", b"x") is None  # read-until-close: no reuse


def test_kept_alive_reuses_one_connection_and_survives_the_server_closing_it():
    import http.server
    import threading

    from zdagent.probe import KeptAlive

    peers: list[tuple] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            peers.append(self.client_address)
            self.send_response(200)
            self.send_header("X-Zdagent-Upstream", "127.0.0.1:7")
            self.send_header("Content-Length", "3")
            if len(peers) == 2:
                self.send_header("Connection", "close")  # like a worker retiring on reload
            self.end_headers()
            self.wfile.write(b"ok\n")
            if len(peers) == 3:
                self.close_connection = True  # closed without a word: the client must retry

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def main():
        edge = KeptAlive(f"http://127.0.0.1:{server.server_port}/h", "X-Zdagent-Upstream")
        got = [await edge.get(2) for _ in range(5)]
        edge.close()
        return got

    try:
        got = asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()
    assert [(a.status, a.header) for a in got] == [(200, "127.0.0.1:7")] * 5
    assert peers[0] == peers[1] != peers[2] != peers[3] == peers[4]


def test_probe_sends_the_apps_verify_host():
    from zdagent.probe import _target

    request = _target("http://127.0.0.1:8080/health", "", "example.com")[3]
    assert request.startswith(b"GET /health HTTP/1.1\r\nHost: example.com\r\n")
    assert b"Host: 127.0.0.1:8080\r\n" in _target("http://127.0.0.1:8080/health", "")[3]


def test_a_tick_that_raises_is_state_error_logged_once_and_the_loop_goes_on(tmp_path):
    """An unreadable upstream file makes each tick raise: ``watch`` reports it and continues."""
    from zdagent.watchdog import STATES, watch

    async def main():
        blue = await Slot(200).start()
        green = await Slot(200).start()
        edge = await Slot(200).start()
        pid = tmp_path / "nginx.pid"
        pid.write_text(str(os.getpid()))
        cfg = app_cfg(tmp_path, blue.port, green.port, edge.port, pid)
        edge.upstream = f"127.0.0.1:{green.port}"
        good = cfg.nginx.upstream_file.read_bytes()
        cfg.nginx.upstream_file.write_bytes(good + b"\n# \xff\xfe not utf-8\n")
        hooks, state, stop = Hooks([]), WatchState(), asyncio.Event()
        ticks = []  # busy() is the first thing each tick asks: it counts the ticks
        wh = hooks.make()
        wh.busy = lambda: bool(ticks.append(1))
        loop = asyncio.create_task(watch(cfg, state, wh, stop))
        for _ in range(500):  # bounded: 0.1 s interval, at least four failing ticks
            await asyncio.sleep(0.02)
            if len(ticks) >= 4 or loop.done():
                break
        assert state.status == "error" and "UnicodeDecodeError" in state.last_reason
        assert "error" in STATES and not loop.done()
        assert len(hooks.lines) == 1 and "watchdog check failed" in hooks.lines[0]
        cfg.nginx.upstream_file.write_bytes(good)
        for _ in range(200):
            await asyncio.sleep(0.02)
            if state.status == "healthy":
                break
        assert state.status == "healthy" and state.checks >= 1
        stop.set()
        await asyncio.wait_for(loop, 5)
        for s in (blue, green, edge):
            await s.stop()

    asyncio.run(main())


def test_classify_accepts_any_task_of_the_live_slot(tmp_path):
    """Swarm task-ports: the live slot answers on any of its tasks' ports, never the other
    slot's."""
    cfg = app_cfg(tmp_path, 18001, 18002, 18003, tmp_path / "pid")
    ports = {"blue": (32771,), "green": (32780, 32781)}
    assert classify(cfg, "green", None, None, Answer(200, "127.0.0.1:32781"), ports).kind == \
        "ok"
    v = classify(cfg, "green", None, None, Answer(200, "127.0.0.1:32771"), ports)
    assert v.kind == "failing" and "not green" in v.detail


def test_task_ports_are_rerendered_once_per_change_and_a_failure_is_not_retried_at_once(
        tmp_path):
    """Swarm task-ports: a change of the tasks' ports asks the daemon to re-render once; a
    busy lock is asked again next round; a failed re-render waits REROUTE_RETRY (no reload
    storm); a live slot with no task left is not re-rendered (the task count decides)."""
    from types import SimpleNamespace

    from zdagent import watchdog as w
    from zdagent.services import TaskFloor

    path = app_cfg(tmp_path, 18001, 18002, 18003, tmp_path / "pid").path
    path.write_text(path.read_text().replace("[source]", 'backend = "swarm"\n[source]')
                    + '[swarm]\nreplicas = 2\npublish_mode = "task-ports"\n')
    cfg = load_config(path)
    floor = TaskFloor(cfg)
    now = {"blue": (32771, 32772), "green": (32780, 32781)}
    floor.task_ports = lambda: dict(now)  # Docker's answer, as data
    answers: list[str | None] = []
    asked: list[str] = []

    async def reroute(reason: str, live: str) -> str | None:
        asked.append(reason)
        return answers.pop(0)

    hooks = SimpleNamespace(reroute=reroute, log=lambda line: None)

    def round_() -> None:
        asyncio.run(w._rerouted(cfg, hooks, floor, "green"))

    answers.append(None)
    round_()
    round_()  # unchanged: nothing asked
    assert len(asked) == 1 and "green: 32780, 32781" in asked[0]
    now["green"] = (32780, 32790)
    answers += ["a deploy holds the app's lock", "nginx -t failed: ..."]
    round_()
    round_()  # the lock was busy: asked again; then it failed
    round_()  # the same ports failed a moment ago: not asked
    assert len(asked) == 3
    floor.retry_at = 0.0  # REROUTE_RETRY later
    answers.append(None)
    round_()
    assert len(asked) == 4 and floor.routed == now
    now["green"] = (18002,)  # no running task: the slot port stands for none
    round_()
    assert len(asked) == 4


def test_a_dead_tasks_port_waits_for_its_replacement_so_both_cost_one_reload(tmp_path):
    """Swarm task-ports: one task per slot that only went away, its port refusing
    connections, is not re-rendered at once (Nginx passes on); the replacement's port brings
    one re-render for both. Two gone at once (the site passes a request on once), or a port
    that still accepts, are re-rendered at once; no replacement: after DEAD_PORT_GRACE."""
    from types import SimpleNamespace

    from zdagent import watchdog as w
    from zdagent.services import TaskFloor

    assert w.waitable_gone({"blue": (1,), "green": (5,)}, {"blue": (1, 2), "green": (5,)}) \
        == [2]
    assert w.waitable_gone({"blue": (1, 3), "green": (5,)},
                           {"blue": (1, 2), "green": (5,)}) is None  # a new port
    assert w.waitable_gone({"blue": (1,)}, {"blue": (1, 2, 3)}) is None  # two gone
    assert w.waitable_gone({"blue": (1,)}, None) is None
    assert w.waitable_gone({"blue": (1,)}, {"blue": (1,)}) is None
    path = app_cfg(tmp_path, 18001, 18002, 18003, tmp_path / "pid").path
    path.write_text(path.read_text().replace("[source]", 'backend = "swarm"\n[source]')
                    + '[swarm]\nreplicas = 3\npublish_mode = "task-ports"\n')
    cfg = load_config(path)
    floor = TaskFloor(cfg)
    a, b, c, d, e = (free_port() for _ in range(5))  # nothing listens: refused
    now = {"blue": (a,), "green": (b, c, d)}
    floor.task_ports = lambda: dict(now)
    asked: list[str] = []

    async def reroute(reason: str, live: str) -> str | None:
        asked.append(reason)
        return None

    hooks = SimpleNamespace(reroute=reroute, log=lambda line: None)

    def round_() -> None:
        asyncio.run(w._rerouted(cfg, hooks, floor, "green"))

    round_()
    assert len(asked) == 1
    now["green"] = (b, d)  # a task died
    round_()
    round_()
    assert len(asked) == 1 and floor.shrunk_at is not None
    now["green"] = (b, d, e)  # Swarm's replacement
    round_()
    assert len(asked) == 2 and f"green: {b}, {d}, {e}" in asked[1]
    assert floor.shrunk_at is None
    now["green"] = (b,)  # two died at once: at once
    round_()
    assert len(asked) == 3
    now["green"] = (b, d)
    round_()  # a new port (d again): re-rendered
    assert len(asked) == 4
    with socket.socket() as listener:  # a gone port that still accepts (a task stopping)
        listener.bind(("127.0.0.1", d))
        listener.listen()
        now["green"] = (b,)
        round_()
        assert len(asked) == 5
    now["green"] = (b, d)
    round_()
    assert len(asked) == 6
    now["green"] = (b,)  # one died, and no replacement comes
    round_()
    assert len(asked) == 6
    floor.shrunk_at -= w.DEAD_PORT_GRACE  # DEAD_PORT_GRACE later
    round_()
    assert len(asked) == 7 and floor.routed == now
