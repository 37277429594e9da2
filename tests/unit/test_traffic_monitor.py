"""The traffic task's decisions over real files: which switches are analysed, when it reverts."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.unit.test_config import MINIMAL
from zdagent.config import load_config
from zdagent.nginx import render_upstream
from zdagent.traffic.follow import LogFollower
from zdagent.traffic.monitor import TrafficHooks, TrafficState, tick
from zdagent.traffic.ports import SlotOfPort
from zdagent.watchdog import RoutedSlot

CONFIG = MINIMAL + """access_log = "access.json"
[analysis]
window = 30
failures = 2
min_requests = 10
cooldown = 100
"""


class App:
    def __init__(self, tmp_path, last=("deploy", "green")) -> None:
        (tmp_path / "web.toml").write_text(CONFIG)
        self.cfg = load_config(tmp_path / "web.toml")
        self.route("blue")
        self.cfg.nginx.access_log.write_text("")
        self.state = TrafficState()
        self.reverts: list[tuple[str, str]] = []
        self.refuse: str | None = None
        self.refusals = 0
        self.last = last
        self.follower = LogFollower(self.cfg.nginx.access_log)
        self.routed = RoutedSlot(self.cfg)
        self.state.routed = self.routed.get()

    def route(self, slot: str) -> None:
        self.cfg.nginx.upstream_file.write_text(render_upstream(self.cfg, slot, None))

    def requests(self, slot: str, n: int, errors_every: int = 0) -> None:
        port = self.cfg.slot_port(slot)
        with self.cfg.nginx.access_log.open("a") as f:
            for i in range(n):
                status = 500 if errors_every and i % errors_every == 0 else 200
                f.write(json.dumps({"t": time.time(), "s": status, "rt": 0.01, "ut": "0.01",
                                    "ua": f"127.0.0.1:{port}"}) + "\n")

    def tick(self) -> None:
        async def revert(reason: str, expected: str) -> str | None:
            if self.refuse:
                self.refusals += 1
                return self.refuse
            self.reverts.append((reason, expected))
            return None

        async def last_switch():
            return self.last

        hooks = TrafficHooks(revert=revert, last_switch=last_switch, log=lambda _m: None)
        asyncio.run(tick(self.cfg, self.state, hooks, self.follower, self.routed,
                         SlotOfPort(self.cfg)))


@pytest.fixture
def app(tmp_path):
    a = App(tmp_path)
    yield a
    a.follower.close()


def test_bad_release_is_reverted_with_its_figures(app):
    app.requests("blue", 50)
    app.tick()
    app.route("green")
    app.tick()
    assert app.state.analysis and app.state.analysis.slot == "green"
    assert app.state.analysis.baseline.requests == 50
    app.requests("green", 50, errors_every=5)
    app.tick()
    assert app.reverts == []  # one failed check: not yet
    app.tick()
    (reason, expected), = app.reverts
    assert expected == "green"
    assert reason.startswith("analysis: 5xx 20.0% over 50 requests > 5% (green since the "
                             "switch: 50 requests, 5xx 20.0%")
    assert "previous blue: 50 requests, 5xx 0.0%" in reason
    assert app.state.analysis.verdict == "reverted" and app.state.reverts == 1


def test_good_release_and_low_background_errors_are_kept(app):
    app.route("green")
    app.tick()
    for _ in range(5):
        app.requests("green", 100, errors_every=100)  # 1 %
        app.tick()
    assert app.reverts == [] and app.state.analysis.verdict == "watching"


def test_refused_revert_is_retried(app):
    app.route("green")
    app.tick()
    app.refuse = "the standby blue is not healthy"
    app.requests("green", 50, errors_every=2)
    app.tick()
    app.tick()
    assert app.reverts == [] and "revert refused" in app.state.analysis.reason
    app.refuse = None
    app.tick()
    assert len(app.reverts) == 1


def test_refused_revert_is_not_retried_after_the_window(app):
    """README: a refusal is "retried while the window lasts". A release that keeps failing
    kept the analysis watching, so a standby that stays unhealthy was asked for every interval,
    forever (an engine call under the app's lock each time)."""
    app.route("green")
    app.tick()
    app.state.analysis.switched_at -= 31  # the 30 s window is over
    app.refuse = "the standby blue is not healthy"
    app.requests("green", 50, errors_every=2)
    for _ in range(6):
        app.tick()
    assert app.refusals == 1 and app.reverts == []
    a = app.state.analysis
    assert a.verdict == "not-reverted" and "revert refused" in a.reason


def test_cooldown_blocks_a_second_analysis_revert(app):
    app.state.cooldown_until = time.time() + 100
    app.route("green")
    app.tick()
    app.requests("green", 50, errors_every=2)
    app.tick()
    app.tick()
    assert app.reverts == [] and app.state.analysis.verdict == "failed"


@pytest.mark.parametrize("last", [("auto-revert", "green"), ("deploy", "blue"), None])
def test_automatic_or_foreign_switches_are_not_analysed(tmp_path, last):
    a = App(tmp_path, last=last)
    a.route("green")
    a.tick()
    assert a.state.analysis is None
    a.follower.close()


def test_a_new_switch_supersedes_the_analysis(app):
    app.route("green")
    app.tick()
    first = app.state.analysis
    app.last = ("rollback", "blue")
    app.route("blue")
    app.tick()
    assert first.verdict == "superseded" and app.state.analysis.slot == "blue"


def test_swarm_task_ports_count_for_their_slot_even_after_they_left(tmp_path):
    """task-ports: the monitor learns each task's port from the upstream file zdagent wrote
    (not from Docker), and keeps a replaced task's port for lines read late."""
    from zdagent.traffic.follow import feed
    from zdagent.traffic.windows import TrafficWindows

    (tmp_path / "web.toml").write_text(
        MINIMAL.replace("[source]", 'backend = "swarm"\n[source]').replace(
            'image = "registry.local/web"', 'image = "registry.local/web"\npull = "always"')
        + '[swarm]\nreplicas = 2\npublish_mode = "task-ports"\n')
    cfg = load_config(tmp_path / "web.toml")
    tasks = {"blue": (32771, 32772), "green": (32780,)}
    upstream = cfg.nginx.upstream_file

    def render() -> None:
        upstream.write_text(render_upstream(cfg, "blue", "green", lambda s: tasks[s]))

    render()
    assert "# zdagent: task ports blue=32771,32772 green=32780" in upstream.read_text()
    by_port = SlotOfPort(cfg)
    assert by_port.get() == {18001: "blue", 18002: "green", 32771: "blue", 32772: "blue",
                             32780: "green"}
    tasks["blue"] = (32771, 32790)  # Swarm replaced a task; the next render says so
    render()
    ports = by_port.get()
    assert ports[32790] == "blue" and ports[32772] == "blue"

    def line(port: int, status: int = 200) -> bytes:
        return json.dumps({"t": time.time(), "s": status, "rt": 0.01, "ut": "0.01",
                           "ua": f"127.0.0.1:{port}"}).encode() + b"\n"

    windows = TrafficWindows()
    feed(windows, [line(32772), line(32790, 500), line(32780), line(40000)], ports)
    now = time.time()
    assert windows.figures("blue", now).requests == 2
    assert windows.figures("green", now).requests == 1 and windows.unrouted == 1
