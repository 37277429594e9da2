"""The watchdog's rules (pure) and sd_notify addressing."""

from __future__ import annotations

import os
import socket
import uuid

from zdagent.config import WatchdogConfig
from zdagent.notify import Notifier
from zdagent.watchdog import Action, WatchState, choose

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
