"""Canary and maintenance: the pure parts (shares, files Nginx reads, config, recovery,
API and gate validation)."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import pytest

from tests.unit.test_config import MINIMAL, write
from tests.unit.test_gate import gate
from zdagent import api
from zdagent.canary import ABORT, PROMOTE, Control, _wait_step, shares
from zdagent.config import load_config
from zdagent.daemon.routes import validate, validate_maintenance
from zdagent.errors import ConfigError
from zdagent.gate import GateCommand, GateRefused, parse, parse_scope
from zdagent.nginx import live_port_in, render_upstream, routed_slot
from zdagent.nginx.maintenance import page, render_conf
from zdagent.nginx.split import Split, active_text, parse_active, parse_upstream, weights
from zdagent.nginx.switch import switcher_for
from zdagent.recovery import recovery_plan
from zdagent.store import FRESH, Phase
from zdagent.traffic.windows import Figures


@pytest.fixture
def cfg(tmp_path):
    return load_config(write(tmp_path, MINIMAL))


@pytest.fixture
def njs_cfg(tmp_path):
    return load_config(write(tmp_path, MINIMAL + 'switch_mode = "njs"\n'
                                                 "[canary]\nsticky = true\n"))


@pytest.mark.parametrize(("percent", "expected"), [(5, (19, 1)), (25, (3, 1)), (50, (1, 1)),
                                                   (20, (4, 1)), (99, (1, 99))])
def test_weights_in_smallest_terms(percent, expected):
    assert weights(percent) == expected


@pytest.mark.parametrize("percent", [0, 100, -1])
def test_weights_refuse_a_non_split(percent):
    with pytest.raises(ValueError):
        weights(percent)


def test_shares_leave_the_promotion_to_the_switch():
    assert shares((5, 25, 50, 100)) == [5, 25, 50]
    assert shares((100,)) == []


def test_reload_split_weights_both_slots_with_no_backup(cfg):
    split = Split("blue", "green", 25)
    text = switcher_for(cfg).render_upstream("blue", "green", split)
    assert "server 127.0.0.1:18001 weight=3 " in text
    assert "server 127.0.0.1:18002 weight=1 " in text
    assert re.search(r"^\s*server .*backup;", text, re.M) is None
    assert live_port_in(text) == 18001  # the stable slot stays "live"
    assert parse_upstream(text) == split
    assert parse_upstream(render_upstream(cfg, "green", "blue")) is None


def test_njs_active_file_round_trip(njs_cfg):
    split = Split("green", "blue", 5, step=2, cookie="zdagent_web_v")
    text = active_text("web", split)
    assert parse_active("web", text) == ("green", split)
    assert parse_active("web", "zdagent__blue_web\n") == ("blue", None)
    assert parse_active("web", "zdagent__alone_green_web\n") == ("green", None)
    assert parse_active("web", '{"live": "nope"}') == (None, None)
    assert parse_active("web", "{not json") == (None, None)
    njs_cfg.nginx.active_file.write_text(text)
    assert routed_slot(njs_cfg) == "green"
    assert switcher_for(njs_cfg).routed_split() == split


def test_njs_site_reads_maintenance_and_sets_the_sticky_cookie(njs_cfg):
    site = switcher_for(njs_cfg).render_site()
    assert f"set $zdagent_maintenance_file {njs_cfg.nginx.upstream_file}.maintenance.json;" \
        in site
    assert "add_header Set-Cookie $zdagent__pool_web_cookie;" in site
    assert "js_content zdagent_web.page;" in site


def test_maintenance_page_escapes_html_and_nginx_syntax():
    text = page("web", "<b>x</b> $host 'q' \\ \"d\"")
    assert "<b>" not in text and "&lt;b&gt;" in text
    for raw in ("$", "'", "\\", '"'):
        assert raw not in text.split("<p>", 1)[1]
    conf = render_conf(text, 30, "/health")
    assert "set $zdagent_maintenance_retry \"30\";" in conf
    assert '"127.0.0.1 /health"' in conf


def test_canary_config_defaults_and_checks(tmp_path, cfg):
    assert cfg.canary.steps == (5, 25, 50, 100) and cfg.canary.step_seconds == 60
    for steps, why in (("[5, 50]", "end with 100"), ("[50, 25, 100]", "rise"),
                       ("[0, 100]", "percentages"), ("[]", "percentages")):
        with pytest.raises(ConfigError, match=why):
            load_config(write(tmp_path, MINIMAL + f"[canary]\nsteps = {steps}\n"))
    with pytest.raises(ConfigError, match=r"canary\.sticky: needs nginx\.switch_mode"):
        load_config(write(tmp_path, MINIMAL + "[canary]\nsticky = true\n"))


def test_recovery_puts_an_ownerless_split_back_on_stable():
    plan = recovery_plan(Phase.CANARY, "green", "blue", "blue", True, FRESH)
    assert plan.live == "blue" and plan.remove == "green"


def test_control_first_word_wins_and_wakes_the_waiter():
    c = Control()
    assert c.wait(0.01) is None
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(c.wait(30)))
    t.start()
    assert c.request(ABORT, "alice")
    t.join(10)
    assert got == [ABORT]
    assert not c.request(PROMOTE, "bob") and c.by == "alice"


def test_api_validation(cfg):
    assert validate(cfg, "deploy", {"version": "v2", "canary": True})["canary"] is True
    with pytest.raises(api.ApiError, match="canary"):
        validate(cfg, "deploy", {"version": "v2", "canary": "yes"})
    assert validate_maintenance({"on": True}) == (
        True, "This service is down for maintenance and will be back shortly.", 120)
    for body in ({}, {"on": 1}, {"on": True, "retry_after": 0},
                 {"on": True, "message": "x" * 501}, {"on": False, "extra": 1}):
        with pytest.raises(api.ApiError):
            validate_maintenance(body)


def test_gate_canary_verbs():
    assert gate("deploy web v2 --canary") == GateCommand("deploy", "web", ("v2", "--canary"))
    with pytest.raises(GateRefused, match="usage"):
        gate("deploy web v2 --canary --x")
    with pytest.raises(GateRefused, match="need a key scoped for them"):
        gate("promote web")
    from tests.unit.test_gate import APPS

    scope = parse_scope(None, "deploy,promote,abort")
    assert parse("abort web", APPS.get, scope) == GateCommand("abort", "web", ())


def _step_engine(tmp_path, step_seconds: float):
    cfg = load_config(write(tmp_path, MINIMAL + f"[canary]\nstep_seconds = {step_seconds}\n"
                                                "[analysis]\ninterval = 0.1\nfailures = 3\n"
                                                "min_requests = 20\n"))
    return SimpleNamespace(cfg=cfg), SimpleNamespace(target="green", live="blue")


def test_a_failing_candidate_ends_its_step_after_the_failed_checks_not_the_step(tmp_path):
    """20 % 5xx is judged every analysis.interval: three failed checks in a row end a 60 s
    step at once, with the figures of the last check (a bad 5 % canary must not serve its
    share for the whole step)."""
    engine, run = _step_engine(tmp_path, 60)
    calls: list[str] = []

    def figures(slot: str, since: float) -> Figures:
        calls.append(slot)
        return Figures(100, 20, 0.01, 0.05) if slot == "green" else Figures(400, 0, 0.01, 0.05)

    t = time.monotonic()
    action, seen = _wait_step(engine, run, time.time(), Control(), figures)
    assert time.monotonic() - t < 30
    assert action is None and seen is not None and seen[0].errors == 20
    assert calls == ["green", "blue"] * 3


def test_a_good_or_quiet_candidate_waits_out_its_step(tmp_path):
    """Below min_requests or under the limits: no verdict during the step, which runs out."""
    engine, run = _step_engine(tmp_path, 0.5)
    for new in (Figures(5, 5, 0.01, 0.05), Figures(500, 1, 0.01, 0.05)):
        since = time.time()
        action, seen = _wait_step(engine, run, since, Control(),
                                  lambda slot, _s, new=new: new if slot == "green" else None)
        assert (action, seen) == (None, None) and time.time() >= since + 0.5


def test_promote_or_abort_ends_the_step_at_once(tmp_path):
    engine, run = _step_engine(tmp_path, 60)
    control = Control()
    control.request(ABORT, "alice")
    assert _wait_step(engine, run, time.time(), control, lambda *_: None) == (ABORT, None)
    assert _wait_step(engine, run, time.time(), control, None) == (ABORT, None)
