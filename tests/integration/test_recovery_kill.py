"""kill -9 at every phase of a rollback and of a deploy, then recovery: a running live slot
serves, and the standby (container and image) is intact.

The operation runs in a child process that stops itself at a chosen point (on entering a
phase, after its state is stored, or once the phase's work is done) and says so in a marker
file; the test then kills it with SIGKILL. The order comes from that marker and the store's
phase, never from a sleep; everything the child does is the real engine on real Docker and
Nginx.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.integration.test_daemon import wait_for
from zdagent.config import load_config
from zdagent.deploy import Engine
from zdagent.store import Store

STOP_AT = """
import os, signal, sys
from contextlib import contextmanager
from zdagent import deploy
from zdagent.config import load_config

phase_name, when, marker, op = sys.argv[1:5]
original = deploy._Run.phase

def hold():
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    while True:
        signal.pause()  # until the test's SIGKILL

@contextmanager
def phase(self, p, message, **kw):
    with original(self, p, message, **kw):
        if p.value == phase_name and when == "enter":
            hold()
        yield
        if p.value == phase_name and when == "end":
            hold()

deploy._Run.phase = phase
if phase_name == "start" and when == "backup-dropped":  # njs: right after drop_backup
    from zdagent.nginx import Nginx
    dropped = Nginx.drop_backup

    def drop_then_hold(self, live):
        if dropped(self, live):
            hold()
        return False

    Nginx.drop_backup = drop_then_hold
with deploy.Engine(load_config(os.environ["ZDAGENT_CONFIG"]), lambda e: None) as engine:
    engine.deploy("v3") if op == "deploy" else engine.rollback()
"""

CASES = [
    # rollback to a running standby: probe, switch, drain
    *[("rollback", ph, when) for ph in ("probe", "switch", "drain") for when in ("enter", "end")],
    # rollback to a stopped standby: it is started first
    ("rollback-stopped", "start", "enter"), ("rollback-stopped", "start", "end"),
    ("rollback-stopped", "probe", "end"),
    # a deploy of v3 into the standby's slot
    *[("deploy", ph, "end") for ph in ("source", "start", "probe", "switch", "drain")],
    ("deploy", "switch", "enter"),
]


def _containers(docker_client, app) -> dict[str, object]:
    return {c.labels["zdagent.slot"]: c for c in docker_client.containers.list(
        all=True, filters={"label": f"zdagent.app={app.name}"})}


@pytest.mark.parametrize(("op", "phase", "when"), CASES)
def test_kill_9_then_recovery_keeps_live_and_standby(make_app, docker_client, tmp_path,
                                                     op, phase, when):
    app = make_app()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")  # green v2 live, blue v1 the running standby
    before = {slot: (c.image.id, c.id) for slot, c in _containers(docker_client, app).items()}
    if op == "rollback-stopped":
        docker_client.containers.get(f"{app.name}-blue").stop(timeout=1)
    marker = tmp_path / "held"
    child = subprocess.Popen(
        [sys.executable, "-c", STOP_AT, phase, when, str(marker),
         "deploy" if op == "deploy" else "rollback"],
        env={**os.environ, "ZDAGENT_CONFIG": str(app.config)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, 120, f"{phase}/{when}")
        assert marker.exists(), f"the {op} never reached {phase}: {child.stderr.read()[-800:]}"
        store = Store(app.config.parent / "state")
        assert store.state(app.name).phase == phase
        store.close()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)

    cfg = load_config(app.config)
    with Engine(cfg, lambda e: None) as engine:
        notes = engine.recover()
    assert notes and f"interrupted in phase '{phase}'" in notes[0]

    live = engine_live(cfg)
    standby = "green" if live == "blue" else "blue"
    containers = _containers(docker_client, app)
    assert containers[live].status == "running"
    served = app.served_version()
    assert served == containers[live].labels["zdagent.version"]
    switched = phase == "drain" or (phase == "switch" and when == "end")
    if op.startswith("rollback"):
        # Both versions survive whatever the moment: the standby is never thrown away.
        assert live == ("blue" if switched else "green")
        assert set(containers) == {"blue", "green"}
        for slot, (image_id, container_id) in before.items():
            assert containers[slot].id == container_id and containers[slot].image.id == image_id
        assert docker_client.images.get(before[standby][0])
    else:
        assert live == ("blue" if switched else "green")
        if switched:  # v3 went live: v2 is the standby, container and image
            assert containers["green"].id == before["green"][1]
            assert containers["green"].status == "running"
        else:  # v2 keeps serving; a half-started candidate is gone
            assert containers["green"].id == before["green"][1] and served == "v2"
            if phase != "source":
                assert "blue" not in containers
            else:  # nothing was started yet: the standby v1 is untouched
                assert containers["blue"].id == before["blue"][1]
        for image_id, _ in before.values():
            assert docker_client.images.get(image_id)  # no image is ever deleted
    st = app.ok("status", "--json").stdout
    assert '"drift": []' in st and '"confirmed": true' in st, st


def engine_live(cfg) -> str:
    with Engine(cfg, lambda e: None) as engine:
        live = engine.live_slot()
    assert live is not None
    return live


def test_kill_9_after_the_backup_was_dropped_gives_it_back(make_app, tmp_path):
    """njs: killed between naming the live slot's group without backup and touching the
    standby; recovery finds the standby intact and makes it the backup again."""
    from tests.integration.test_njs_switch import NJS
    from zdagent.config import pool_name

    app = make_app(extra=NJS)
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    active = app.nginx.prefix / "zdagent" / f"{app.name}.upstream.conf.active"
    marker = tmp_path / "held"
    child = subprocess.Popen(
        [sys.executable, "-c", STOP_AT, "start", "backup-dropped", str(marker), "deploy"],
        env={**os.environ, "ZDAGENT_CONFIG": str(app.config)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, 120, "backup dropped")
        assert marker.exists(), child.stderr.read()[-800:]
        assert active.read_text().strip() == pool_name(app.name, "green", alone=True)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    with Engine(load_config(app.config), lambda e: None) as engine:
        notes = engine.recover()
    assert notes and "interrupted in phase 'start'" in notes[0], notes
    assert active.read_text().strip() == pool_name(app.name, "green")  # blue: the backup
    assert app.served_version() == "v2"
