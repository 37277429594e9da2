"""The CI-sized soak: 20 operations through a real daemon under load, reload-free switch.

The full run (200 operations per mode, both modes) is `python -m benchmarks.soak`; see
docs/benchmarks.md.
"""

from __future__ import annotations

import json

from benchmarks import soak
from benchmarks.harness import NJS_MODULE
from benchmarks.loadgen import KINDS, METHODS
from tests.conftest import IMAGE_REPO, TEST_PREFIX, require


def test_soak_through_the_daemon_loses_nothing_and_leaves_nothing(images):
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    ops = 2 * len(soak.CYCLE)
    res = soak.run_mode("njs", ops, repo=IMAGE_REPO, name=f"{TEST_PREFIX}soak", rate=20,
                        log=lambda _: None)

    # every operation did what it must: good ones went live, failing candidates failed cleanly
    # (exit 1, live slot and version unchanged, no candidate container, history says failed),
    # and each killed or stopped live slot was reverted by the daemon's watchdog
    assert res["unexpected"] == []
    assert {k: o["done"] for k, o in res["ops"].items()} == {
        "deploy": 8, "rollback": 4, "fail500": 2, "crash": 2, "revert-stop": 2,
        "revert-kill": 2}
    assert all(o["as_expected"] == o["done"] for o in res["ops"].values()), res["ops"]

    # no client kind lost a request to a deploy, rollback or failing candidate; while the live
    # container was being killed, no GET was lost either (Nginx retries it on the standby)
    why = {k: res.get(k) for k in ("failed_during", "failed_sample", "op_log", "logs")}
    if any(c["failed"] for c in res["clients_planned"].values()):
        print(json.dumps(why, indent=1))  # in full: pytest cuts a long assertion message
    for kind in KINDS:
        for method in METHODS:
            planned = res["clients_planned"][f"{kind}/{method}"]
            assert planned["requests"] > 200, (kind, method, planned)
            assert planned["failed"] == 0, (kind, method, planned, why)
        assert res["clients"][f"{kind}/GET"]["failed"] == 0, (res["clients"], why)

    # the daemon holds no more descriptors than it started with (a leak grows one per op)
    start, end = res["daemon_start"], res["daemon_end"]
    assert abs(end["fds"] - start["fds"]) <= soak.FD_NOISE, (start, end)
    assert res["daemon_exit"] == 0

    during = res["during_run"]  # the app held exactly its two slots and its own files
    assert during["extra_containers"] == [] and during["built_images"] == []
    assert during["stray_nginx_files"] == [] and during["stray_state_files"] == []
    after = res["after_cleanup"]
    assert after["any"] is False, after
