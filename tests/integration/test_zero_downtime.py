"""The CI-sized zero-downtime benchmark: a few deploys and a rollback under six clients.

The full run (20 deploys, 5 rollbacks, side by side with the baselines) is
`python -m benchmarks.zero_downtime`; see docs/benchmarks.md.
"""

from __future__ import annotations

import pytest

from benchmarks import zero_downtime as bench
from tests.conftest import TEST_PREFIX


@pytest.fixture(scope="module")
def bench_images(docker_client):
    bench.build_images()


def test_deploys_and_rollback_under_load_lose_nothing_that_can_be_kept(bench_images, tmp_path):
    plan = bench.schedule(deploys=3, rollbacks=1)
    res = bench.run_mode("zdagent", tmp_path, plan, rate=40, gap=0.5, app=f"{TEST_PREFIX}zd")
    clients = res["clients"]
    assert res["deploys"] == 3 and res["rollbacks"] == 1
    assert res["requests"] > 500
    # Connection: close never fails; a browser-like client's GETs never fail.
    for key in ("close/GET", "close/POST", "retry/GET"):
        assert clients[key]["failed"] == 0, (key, clients[key])
        assert clients[key]["requests"] > 50
    # every client saw every operation switch it to the new version. (With reloads, old and
    # new Nginx workers overlap for ~100 ms, so a client may see old/new interleave briefly:
    # the benchmark reports how many windows flipped exactly once.)
    flips = res["flip_windows"]
    assert flips["ended_on_new"] == flips["total"] == 6 * 4
    assert 0 not in flips["counts"]
    assert res["post_replayed"] == 0
    assert res["switch_ms"]["n"] == 4 and res["rollback_ms"]["n"] == 1


def test_reload_free_switch_loses_nothing_for_any_client(bench_images, tmp_path):
    """switch_mode = "njs": raw keep-alive and POSTs lose nothing, and every client's
    served version flips exactly once per operation."""
    from benchmarks.harness import NJS_MODULE
    from tests.conftest import require

    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    plan = bench.schedule(deploys=3, rollbacks=1)
    res = bench.run_mode("zdagent-njs", tmp_path, plan, rate=40, gap=0.5,
                         app=f"{TEST_PREFIX}zd-njs")
    for key, client in res["clients"].items():
        assert client["failed"] == 0, (key, client)
        assert client["requests"] > 50
    flips = res["flip_windows"]  # never back and forth, always ending on the new version
    assert flips["at_most_once"] == flips["ended_on_new"] == flips["total"] == 6 * 4
    assert res["post_replayed"] == 0
