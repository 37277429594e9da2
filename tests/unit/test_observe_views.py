"""The metrics and the status page's pure parts: reason labels, following history, gauges from
a view, the listener's address and token checks."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zdagent import api
from zdagent.daemon.metrics import Metrics, revert_reason
from zdagent.daemon.web import Listen, Web, app_view, host_name, parse_listen
from zdagent.errors import ConfigError
from zdagent.store import DeployRecord, PhaseRecord

T0 = 1_000_000.0


def rec(id_: int, kind: str = "deploy", outcome: str = "succeeded", reason: str | None = None,
        finished: float | None = T0 + 10, app: str = "web") -> DeployRecord:
    phases = [PhaseRecord("probe", T0, 1.5, True), PhaseRecord("switch", T0 + 2, 0.25, True)]
    return DeployRecord(id_, app, kind, "v1", None, None, "green", "blue", T0,
                        finished if outcome != "running" else None, outcome, None, "ci", 1,
                        reason=reason, phases=phases)


def samples(m: Metrics) -> dict[tuple[str, frozenset], float]:
    text = m.exposition().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def get(s, name: str, **labels: str) -> float | None:
    return s.get((name, frozenset(labels.items())))


@pytest.mark.parametrize(("reason", "label"), [
    ("green failed 3 probes in a row (last: green direct: connection refused)", "unreachable"),
    ("green failed 3 probes in a row (last: green direct: no answer within 2s)", "unreachable"),
    ("green failed 3 probes in a row (last: green direct: HTTP 500)", "http_status"),
    ("blue failed 3 probes in a row (last: through Nginx: HTTP 502); blue was exited: not "
     "kept as the standby", "http_status"),
    ("green failed 3 probes in a row (last: through Nginx: answered by 127.0.0.1:1, not "
     "green)", "wrong_upstream"),
    ("canary v3: 5xx rate 12% over 60s", "canary"),
    ("analysis: 5xx 21.3% over 412 requests > 5% (green since the switch: 412 requests, "
     "5xx 21.3%, p50 12ms, p99 480ms; ...)", "error_rate"),
    ("analysis: p99 2100ms over 412 requests > 1000ms (green since the switch: 412 "
     "requests, 5xx 0.0%, p50 12ms, p99 2100ms)", "latency"),
    ("analysis: something new", "analysis"),
    (None, "other"),
    ("by hand", "other"),
])
def test_revert_reasons_are_few_labels(reason, label):
    assert revert_reason(reason) == label


def test_history_is_counted_once_and_a_running_record_when_it_finishes():
    m = Metrics(lambda: {"apps": {}}, since=T0)
    m.follow("web", [rec(1), rec(2, outcome="running")])
    assert m.after("web") == 1  # the running one holds the mark
    m.follow("web", [rec(2, outcome="running"), rec(3, outcome="failed")])
    m.follow("web", [rec(2, kind="auto-revert", reason="green failed 3 probes in a row "
                         "(last: green direct: HTTP 500)"), rec(3, outcome="failed")])
    assert m.after("web") == 3
    m.follow("web", [])  # nothing new: nothing counted again
    s = samples(m)
    assert get(s, "zdagent_deploys_total", app="web", kind="deploy", outcome="succeeded") == 1
    assert get(s, "zdagent_deploys_total", app="web", kind="deploy", outcome="failed") == 1
    assert get(s, "zdagent_deploys_total", app="web", kind="auto-revert",
               outcome="succeeded") == 1
    assert get(s, "zdagent_reverts_total", app="web", reason="http_status") == 1
    assert get(s, "zdagent_switch_duration_seconds_count", app="web", kind="deploy") == 2
    assert get(s, "zdagent_switch_duration_seconds_sum", app="web", kind="deploy") == 0.5
    assert get(s, "zdagent_deploy_phase_duration_seconds_bucket", app="web", kind="deploy",
               phase="probe", le="2.5") == 2
    assert get(s, "zdagent_deploy_duration_seconds_sum", app="web", kind="deploy",
               outcome="succeeded") == 10


def test_history_from_before_the_daemon_started_is_not_news():
    m = Metrics(lambda: {"apps": {}}, since=T0 + 100)
    m.follow("web", [rec(1), rec(2, finished=T0 + 200)])
    s = samples(m)
    assert get(s, "zdagent_deploys_total", app="web", kind="deploy", outcome="succeeded") == 1


VIEW = {"apps": {"web": {
    "live_slot": "green",
    "watchdog": {"status": "reverted", "consecutive_failures": 0, "busy": False},
    "slots": {"blue": {"state": "running", "version": "v1", "health": "healthy"},
              "green": {"state": "exited", "version": "v2", "health": "-"}},
    "traffic": {"window_seconds": 60, "lines": 123, "slots": {
        "blue": {"requests": 120, "errors": 3, "error_rate": 0.025, "p50": 0.01, "p99": 0.05,
                 "seconds": 60, "Bad-Name": 1, "flag": True, "label": "x"},
        "purple": {"requests": 1}, "green": "nonsense"}},
}}}


def test_gauges_read_the_view_at_scrape_time():
    view = {"apps": {}}
    m = Metrics(lambda: view, outbox_depth=lambda: 4)
    assert get(samples(m), "zdagent_live_slot", app="web", slot="green") is None
    view.update(VIEW)  # the same registry, scraped again, sees the new state
    s = samples(m)
    assert get(s, "zdagent_live_slot", app="web", slot="green") == 1
    assert get(s, "zdagent_live_slot", app="web", slot="blue") == 0
    assert get(s, "zdagent_slot_running", app="web", slot="green") == 0
    assert get(s, "zdagent_slot_healthy", app="web", slot="blue") == 1
    assert get(s, "zdagent_slot_info", app="web", slot="green", version="v2",
               state="exited") == 1
    assert get(s, "zdagent_watchdog_state", app="web", state="reverted") == 1
    assert get(s, "zdagent_watchdog_state", app="web", state="healthy") == 0
    assert get(s, "zdagent_notification_outbox_depth") == 4
    # The traffic window's figures per slot, units in the names; the rest is skipped.
    assert get(s, "zdagent_traffic_requests", app="web", slot="blue") == 120
    assert get(s, "zdagent_traffic_errors_5xx", app="web", slot="blue") == 3
    assert get(s, "zdagent_traffic_error_rate", app="web", slot="blue") == 0.025
    assert get(s, "zdagent_traffic_p99_seconds", app="web", slot="blue") == 0.05
    assert get(s, "zdagent_traffic_window_seconds", app="web", slot="blue") == 60
    assert not [k for k in s if k[0].startswith("zdagent_traffic_") and
                ("purple" in dict(k[1]).values() or k[0].endswith(("flag", "label")))]


def test_app_view_lifts_what_other_parts_add():
    status = {"status": "healthy", "busy": False, "canary": {"version": "v3", "weight": 10},
              "maintenance": None, "traffic": {"blue": {"requests": 1}}}
    v = app_view(status, "blue", None, [])
    assert v["canary"] == {"version": "v3", "weight": 10} and v["maintenance"] is None
    assert v["traffic"] == {"blue": {"requests": 1}}
    assert "canary" not in v["watchdog"] and v["live_slot"] == "blue" and v["slots"] is None


def test_slot_rows_from_one_container_list():
    from zdagent.daemon.looks import slot_rows

    cfg = SimpleNamespace(name="web", slot_port={"blue": 8001, "green": 8002}.get)
    containers = {("web", "blue"): {"State": "running", "Labels": {
        "zdagent.app": "web", "zdagent.slot": "blue", "zdagent.version": "v7"}},
        ("other", "green"): {"State": "running", "Labels": {}}}
    rows = slot_rows(cfg, containers)
    assert rows["blue"] == {"slot": "blue", "port": 8001, "state": "running", "version": "v7",
                            "container": "web-blue", "health": "-"}
    assert rows["green"]["state"] == "missing" and rows["green"]["version"] is None


def test_listen_addresses(tmp_path):
    assert parse_listen("127.0.0.1:9361") == Listen("127.0.0.1", 9361)
    assert parse_listen("9361") == Listen("127.0.0.1", 9361)
    assert parse_listen("[::1]:9361").loopback
    for bad in ("127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x", "example.com:80", "1:²"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    with pytest.raises(ConfigError, match="without a token") as e:
        parse_listen("0.0.0.0:9361")
    assert "ssh -L" in e.value.hint
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="too short"):
        parse_listen("0.0.0.0:9361", short)
    with pytest.raises(ConfigError, match="cannot read"):
        parse_listen("0.0.0.0:9361", tmp_path / "missing")
    good = tmp_path / "token"
    good.write_text("s3cret-s3cret-s3cret\n")
    assert parse_listen("0.0.0.0:9361", good) == Listen("0.0.0.0", 9361, "s3cret-s3cret-s3cret")


def test_host_names():
    assert host_name("localhost:8080") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("[::1]:9361") == "[::1]"
    assert host_name("Evil.example:80") == "evil.example"


def _web(token: str | None) -> Web:
    daemon = SimpleNamespace(engines=SimpleNamespace(log=lambda m: None), started=time.time(),
                             limits=api.Limits(), outbox_depth=lambda: 0)
    return Web(daemon, Listen("127.0.0.1" if token is None else "0.0.0.0", 1, token))


def _req(path: str, **headers: str) -> api.Request:
    return api.Request("GET", path, {}, {}, headers={k.lower(): v for k, v in headers.items()})


def test_token_guards_the_data_not_the_page():
    web = _web("t" * 20)
    assert web._refused(_req("/api/status")).status == 401
    assert web._refused(_req("/metrics", Authorization="Bearer wrong")).status == 401
    assert web._refused(_req("/metrics", Authorization="Bearer " + "t" * 20)) is None
    assert web._refused(_req("/", Host="vps.example:9361")) is None  # no data in the page


def test_without_a_token_only_a_loopback_host_is_answered():
    web = _web(None)
    assert web._refused(_req("/api/status", Host="localhost:8080")) is None
    assert web._refused(_req("/", Host="rebound.example:9361")).status == 421
    assert web._refused(_req("/metrics")).status == 421  # no Host at all


def test_the_page_ships_in_the_package():
    root = Path(__file__).resolve().parents[2] / "zdagent" / "web"
    assert {"index.html", "app.js", "app.css"} <= {p.name for p in root.iterdir()}
    js = (root / "app.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js  # text only: no XSS


def test_a_burst_of_requests_shares_one_view():
    """Each /api/status or /metrics request built the whole view on the event loop (every
    app's status and traffic figures: ~30-60 ms for 100 busy apps). Any local user could
    queue 32 connections of them back to back and starve the watchdog's probes into
    timeouts; a burst now shares one view."""
    import asyncio

    built = []

    def status() -> dict:
        built.append(1)
        return {"daemon": {}}

    async def run(_executor, fn, *args):  # the daemon's pools run reads in threads
        return fn(*args)

    daemon = SimpleNamespace(engines=SimpleNamespace(log=lambda m: None), started=time.time(),
                             limits=api.Limits(), outbox_depth=lambda: 0, apps={},
                             config_errors={}, status=status,
                             pools=SimpleNamespace(web=None, run=run))

    async def burst() -> list[dict]:
        web = Web(daemon, Listen("127.0.0.1", 1))
        return await asyncio.gather(*(web.view() for _ in range(50)))

    views = asyncio.run(burst())
    assert len(built) == 1 and all(v is views[0] for v in views)
