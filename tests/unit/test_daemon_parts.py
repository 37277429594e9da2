"""The daemon's queue and task supervisor, on a real event loop (no Docker)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from zdagent.daemon import supervise
from zdagent.daemon.queue import AppRuntime, Operation, Queue
from zdagent.daemon.supervise import Supervised, backoff


def _runtime() -> AppRuntime:
    return AppRuntime(SimpleNamespace(name="web"))  # type: ignore[arg-type]


async def _collect(stream) -> list[dict[str, Any]]:
    return [item async for item in stream]


def test_operations_run_one_at_a_time_in_arrival_order():
    async def main() -> list[str]:
        rt, order = _runtime(), []
        release = threading.Event()
        queue = Queue(lambda: False, lambda cfg, op: None, lambda m: None)

        def work(name: str):
            def run(cfg, emit) -> dict:
                order.append(f"start {name}")
                if name == "a":
                    assert release.wait(10)
                order.append(f"end {name}")
                return {"result": {"name": name}}
            return run

        streams = [queue.submit(rt, Operation("deploy", n, "alice", asyncio.Event()), work(n))
                   for n in ("a", "b", "c")]
        while rt.queued != 2:  # b and c wait behind a
            await asyncio.sleep(0.01)
        release.set()
        results = await asyncio.gather(*(_collect(s) for s in streams))
        assert results[0] == [{"result": {"name": "a"}}]
        assert results[1][0]["event"]["message"].startswith("queued: another operation")
        assert results[2][-1] == {"result": {"name": "c"}}
        assert not rt.busy() and rt.queued == 0
        return order

    assert asyncio.run(main()) == ["start a", "end a", "start b", "end b", "start c", "end c"]


def test_a_queued_operation_whose_client_left_is_cancelled_and_recorded():
    async def main() -> None:
        rt, recorded, ran = _runtime(), [], []
        queue = Queue(lambda: False, lambda cfg, op: recorded.append((op.what, op.version,
                                                                      op.performer)),
                      lambda m: None)
        await rt.lock.acquire()  # a running operation
        gone = asyncio.Event()
        op = Operation("deploy", "v3", "alice", gone)
        stream = queue.submit(rt, op, lambda cfg, emit: ran.append(1) or {"result": {}})
        while rt.queued != 1:
            await asyncio.sleep(0.01)
        gone.set()
        items = await _collect(stream)
        assert op.state == "cancelled" and recorded == [("deploy", "v3", "alice")]
        assert rt.queued == 0 and rt.lock.locked()  # the running one still holds it
        rt.lock.release()
        await queue.drain()
        assert ran == [] and not rt.lock.locked()
        assert all("result" not in i for i in items)

    asyncio.run(main())


def test_a_started_operation_runs_to_the_end_when_its_client_leaves():
    async def main() -> None:
        rt = _runtime()
        started, finish = threading.Event(), threading.Event()
        queue = Queue(lambda: False, lambda cfg, op: None, lambda m: None)
        gone = asyncio.Event()

        def work(cfg, emit) -> dict:
            started.set()
            assert finish.wait(10)
            return {"result": {"ok": True}}

        op = Operation("deploy", "v2", "alice", gone)
        queue.submit(rt, op, work)
        await asyncio.to_thread(started.wait, 10)
        gone.set()
        finish.set()
        await queue.drain()
        assert op.state == "done" and not rt.lock.locked()

    asyncio.run(main())


def test_queued_operations_do_not_start_once_the_daemon_stops():
    async def main() -> None:
        rt, stopping = _runtime(), [False]
        queue = Queue(lambda: stopping[0], lambda cfg, op: None, lambda m: None)
        await rt.lock.acquire()
        stream = queue.submit(rt, Operation("deploy", "v2", "a", asyncio.Event()),
                              lambda cfg, emit: pytest.fail("must not run"))
        while rt.queued != 1:
            await asyncio.sleep(0.01)
        stopping[0] = True
        rt.lock.release()
        items = await _collect(stream)
        assert items[-1]["error"]["exit_code"] == 3

    asyncio.run(main())


def test_backoff_doubles_and_is_capped():
    assert [backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff(50) == supervise.MAX_BACKOFF


def test_a_failing_task_is_logged_restarted_and_not_alive_while_waiting(monkeypatch):
    monkeypatch.setattr(supervise, "FIRST_BACKOFF", 0.05)

    async def main() -> None:
        runs, logs, failures = [], [], []
        hold = asyncio.Event()

        async def body() -> None:
            runs.append(1)
            if len(runs) <= 2:
                raise RuntimeError(f"boom {len(runs)}")
            await hold.wait()

        task = Supervised("watch web", body, logs.append, lambda e, d: failures.append(e))
        task.start()
        saw_backoff = False
        while len(runs) < 3:
            # In backoff: not alive (status shows it), still supervised (systemd's pings go on).
            saw_backoff |= task.state == "backoff" and not task.alive and task.supervised
            await asyncio.sleep(0)
        assert saw_backoff
        assert task.alive and task.state == "running" and task.restarts == 2
        assert task.last_error == "RuntimeError: boom 2" and len(failures) == 2
        assert "Traceback" in logs[0] and "boom 1" in logs[0]
        hold.set()
        await task.stop(5)
        assert task.state == "finished" and task.alive

    asyncio.run(main())


def test_stop_cancels_a_task_that_does_not_end():
    async def main() -> None:
        task = Supervised("stuck", lambda: asyncio.Event().wait(), lambda m: None)
        task.start()
        await asyncio.sleep(0)
        await task.stop(0.05)
        assert task.state == "stopped" and not task.alive and not task.supervised

    asyncio.run(main())


class _Engines:
    """Stands in for the engine calls: the glue's own logic is what is tested here."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.calls: list[tuple] = []

    def watchdog_action(self, cfg, method, reason, expected_live):
        self.calls.append((method, reason, expected_live))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def test_watchdog_glue_returns_none_or_the_reason(tmp_path):
    from zdagent.daemon.server import Daemon

    async def main() -> None:
        d = Daemon(tmp_path, tmp_path / "s.sock", None)
        rt = _runtime()
        hooks = d._hooks(rt)
        d.engines = _Engines(None)  # type: ignore[assignment]
        assert await hooks.revert("green failed", "green") is None
        assert d.engines.calls == [("auto_revert", "green failed", "green")]
        d.engines = _Engines("the live slot is now blue, not green: nothing done")
        assert "not green" in await hooks.restart("degraded", "green")
        d.engines = _Engines(RuntimeError("glue broke"))
        assert "glue broke" in await hooks.revert("x", "green")
        assert not rt.busy()
        await rt.lock.acquire()  # a deploy runs: refused at once, the engine is not called
        d.engines = _Engines(None)
        assert "lock" in await hooks.revert("x", "green") and d.engines.calls == []
        rt.lock.release()

    asyncio.run(main())


def test_operations_fill_their_pool_yet_watchdog_actions_and_reads_still_run():
    """Long deploys on every operation thread do not starve a revert or a status read."""
    from zdagent.daemon.pools import MIN_OPERATIONS, Pools

    async def main() -> None:
        pools = Pools(apps=7)
        assert pools.size(pools.operations) == 7 and pools.size(pools.watchdog) == 7
        release = threading.Event()
        long_ops = [pools.submit(pools.operations, release.wait, 30) for _ in range(7)]
        try:
            assert await asyncio.wait_for(pools.run(pools.watchdog, lambda: "reverted"), 5) \
                == "reverted"
            assert await asyncio.wait_for(pools.run(pools.reads, lambda: "status"), 5) \
                == "status"
        finally:
            release.set()
            await asyncio.gather(*long_ops)
        pools.fit(9)
        assert pools.size(pools.operations) == 9
        pools.fit(2)  # never shrinks
        assert pools.size(pools.operations) == 9
        assert Pools().size(Pools().operations) == MIN_OPERATIONS
        pools.shutdown()

    asyncio.run(main())


def test_a_watch_task_stopped_mid_action_keeps_the_lock_until_the_thread_ends(tmp_path):
    from zdagent.daemon.server import Daemon

    class Blocking(_Engines):
        def __init__(self) -> None:
            super().__init__(None)
            self.started, self.release, self.ended = (threading.Event() for _ in range(3))

        def watchdog_action(self, cfg, method, reason, expected_live):
            self.started.set()
            self.release.wait(30)
            self.ended.set()

    async def main() -> None:
        d = Daemon(tmp_path, tmp_path / "s.sock", None)
        engines = Blocking()
        d.engines = engines  # type: ignore[assignment]
        rt = _runtime()
        task = asyncio.create_task(d._hooks(rt).revert("green failed", "green"))
        while not engines.started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # a reload or shutdown stops the watch task mid-revert
        for _ in range(5):
            await asyncio.sleep(0.02)
            assert rt.busy() and not task.done()  # the engine still switches: lock held
        engines.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engines.ended.is_set() and not rt.busy()
        d.pools.shutdown()

    asyncio.run(main())


APP = """
[app]
name = "{name}"
state_dir = "state"
[source]
image = "registry.local/{name}"
[container]
port = 8080
[slots]
blue_port = {blue}
green_port = {green}
[nginx]
upstream_file = "{name}.upstream.conf"
[watchdog]
enabled = {enabled}
"""


def test_two_reloads_while_an_added_app_recovers_start_one_watcher(tmp_path):
    from zdagent.daemon.server import Daemon

    class SlowRecovery:
        def __init__(self) -> None:
            self.started, self.release = threading.Event(), threading.Event()

        def recover(self, cfg) -> None:
            self.started.set()
            self.release.wait(30)

    def write(enabled: str) -> None:
        (tmp_path / "web.toml").write_text(
            APP.format(name="web", blue=18101, green=18102, enabled=enabled))

    async def main() -> None:
        d = Daemon(tmp_path, tmp_path / "s.sock", None)
        engines = SlowRecovery()
        d.engines = engines  # type: ignore[assignment]
        starts: list[str] = []
        start = d._start_watch
        d._start_watch = lambda name: (starts.append(name), start(name))[1]  # type: ignore
        write("false")
        await d.reload()  # added: recovery starts in the background
        while not engines.started.is_set():
            await asyncio.sleep(0.01)
        write("true")
        await d.reload()  # changed while recovering
        write("false")
        await d.reload()
        engines.release.set()
        while d.background:
            await asyncio.gather(*list(d.background))
        assert starts == ["web"] and list(d.watchers) == ["web"]
        assert d.apps["web"].cfg.watchdog.enabled is False  # the newest config is watched
        await d._stop_watch("web")
        d.pools.shutdown()

    asyncio.run(main())


@pytest.mark.parametrize("raw", ["²", "٣", "1e3", "", "0", "10001", "-1", " 5"])
def test_history_limit_is_ascii_digits_in_range(raw):
    from zdagent import api
    from zdagent.daemon.routes import _limit

    with pytest.raises(api.ApiError):
        _limit({"limit": [raw]})
    assert _limit({"limit": ["10000"]}) == 10000 and _limit({}) == 20


def test_starting_a_watcher_stops_the_one_already_registered(tmp_path):
    from zdagent.daemon.server import Daemon

    async def main() -> None:
        d = Daemon(tmp_path, tmp_path / "s.sock", None)
        cfg = SimpleNamespace(name="web", watchdog=SimpleNamespace(enabled=False))
        d.apps["web"] = AppRuntime(cfg)  # type: ignore[arg-type]
        d._start_watch("web")
        first = d.watchers["web"]
        d._start_watch("web")
        second = d.watchers["web"]
        assert second is not first and first.stop.is_set() and not second.stop.is_set()
        while d.background:
            await asyncio.gather(*list(d.background))
        assert d.watchers == {"web": second} and first.task.state != "running"
        await d._stop_watch("web")
        d.pools.shutdown()

    asyncio.run(main())
