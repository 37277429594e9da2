"""Smoke: the first deploy and a switch to the other slot, through real Docker and Nginx."""

from __future__ import annotations


def test_first_deploy_then_switch(make_app):
    app = make_app()
    p = app.ok("deploy", "v1")
    assert "deployed v1 on the blue slot" in p.stderr
    assert app.served_version() == "v1"
    app.ok("deploy", "v2")
    assert app.served_version() == "v2"
    assert app.get().headers["X-Zdagent-Upstream"] == f"127.0.0.1:{app.green_port}"
