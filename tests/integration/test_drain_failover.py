"""Graceful drain and the tuned Nginx template, each setting shown by a test."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.traffic import RequestLoop


def _in_background(fn) -> dict:
    box: dict = {}

    def run():
        try:
            box["response"] = fn()
        except Exception as e:
            box["error"] = e
        box["done_at"] = time.time()

    t = threading.Thread(target=run)
    t.start()
    box["thread"] = t
    return box


def _stop_after_switch(app, drain: int) -> None:
    app.config.write_text(app.config.read_text().replace(
        "drain_seconds = 5", f'drain_seconds = {drain}\nafter_switch = "stop"'))


def test_in_flight_request_survives_the_drain(make_app, docker_client):
    """A 5 s request started just before the switch completes with 200 from the old slot."""
    app = make_app()
    _stop_after_switch(app, drain=15)
    app.ok("deploy", "v1")
    slow = _in_background(lambda: httpx.get(app.url + "/cgi-bin/slow?5", timeout=30))
    time.sleep(0.5)
    p = app.ok("deploy", "v2")
    slow["thread"].join(30)
    assert "error" not in slow, slow.get("error")
    assert slow["response"].status_code == 200
    assert slow["response"].text.startswith("slow v1 after 5s")
    assert app.served_version() == "v2"
    assert docker_client.containers.get(f"{app.name}-blue").status == "exited"
    drain = next(ph for ph in json.loads(app.ok("history", "--json").stdout)[0]["phases"]
             if ph["name"] == "drain")
    # the drain lasted until the in-flight request had its answer, and only then stopped blue
    assert drain["started_at"] + drain["duration"] >= slow["done_at"] - 0.25
    assert drain["duration"] > 1
    assert "stopped the old slot blue" in p.stderr


def test_drain_timeout_cuts_what_is_left(make_app, docker_client):
    app = make_app()
    _stop_after_switch(app, drain=1)
    app.ok("deploy", "v1")
    slow = _in_background(lambda: httpx.get(app.url + "/cgi-bin/slow?20", timeout=40))
    time.sleep(0.5)
    p = app.ok("deploy", "v2")
    assert "still busy after 1s drain" in p.stderr
    slow["thread"].join(40)
    cut = slow.get("error") or slow["response"].status_code != 200
    assert cut, "a request longer than the drain must be cut when the old slot stops"
    assert docker_client.containers.get(f"{app.name}-blue").status == "exited"


def test_backup_standby_takes_over_when_the_live_slot_dies(make_app, docker_client):
    """`server … backup` + proxy_next_upstream: a killed live slot costs no GET."""
    app = make_app()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    with RequestLoop(app.url + "/cgi-bin/version", max_seconds=20) as loop:
        time.sleep(1)
        docker_client.containers.get(f"{app.name}-green").kill()
        time.sleep(3)
    assert loop.failures == [], loop.failures[:5]
    assert loop.versions["v1"] > 0  # the standby answered


def test_post_is_never_resent_to_a_second_upstream(make_app, docker_client):
    """A POST whose upstream dies mid-request fails; Nginx does not replay it on the backup."""
    app = make_app()
    app.ok("deploy", "v1")
    app.ok("deploy", "v2")
    post = _in_background(lambda: httpx.post(app.url + "/cgi-bin/slow?4", content=b"x",
                                             timeout=30))
    time.sleep(1)
    docker_client.containers.get(f"{app.name}-green").kill()
    post["thread"].join(30)
    r = post["response"]
    assert r.status_code == 502
    assert r.headers["X-Zdagent-Upstream"] == f"127.0.0.1:{app.green_port}"  # one try only


def test_keep_alive_client_is_not_pinned_to_the_old_slot(make_app):
    """Old workers close idle keep-alive connections; new ones only know the new slot."""
    app = make_app()
    app.ok("deploy", "v1")
    with httpx.Client(timeout=10) as client:
        url = app.url + "/cgi-bin/version"
        assert client.get(url).text.startswith("v1")
        app.ok("deploy", "v2")
        seen = []
        for _ in range(20):
            try:
                seen.append(client.get(url).text.split()[0])
            except httpx.TransportError:  # the old worker closed our idle connection
                seen.append("reconnect")
            time.sleep(0.05)
    assert seen[-10:] == ["v2"] * 10, seen
