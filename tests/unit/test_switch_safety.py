"""Switch safety without a running Nginx: legacy njs files are refused before anything is
touched, a template error writes nothing, and a restored switch keeps its error's exit code."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from zdagent.config import load_config
from zdagent.errors import EXIT_DEPLOY_FAILED, EXIT_ENVIRONMENT, EnvironmentProblem, NginxError
from zdagent.nginx import Nginx, NjsSwitcher, served_by
from zdagent.nginx.switch import restored_error

CONFIG = """
[app]
name = "web"
[source]
image = "registry.local/web"
[container]
port = 8080
[slots]
blue_port = 18001
green_port = 18002
[nginx]
upstream_file = "{upstream}"
listen = "127.0.0.1:8080"
pid_file = "{pid}"
switch_mode = "{mode}"
"""

# What zdagent before the njs renames wrote (site: proxy_pass http://$zdagent_web_pool).
LEGACY_UPSTREAM = """\
# Managed by zdagent for app "web": rewritten on every switch; do not edit.
js_path /usr/lib/python3/dist-packages/nginx_templates;
js_import zdagent_web from zdagent.js;
js_set $zdagent_web_pool zdagent_web.pool;

upstream zdagent_web_blue {
    server 127.0.0.1:18001 max_fails=1 fail_timeout=2s;
    server 127.0.0.1:18002 backup;
}

upstream zdagent_web_green {
    server 127.0.0.1:18002 max_fails=1 fail_timeout=2s;
    server 127.0.0.1:18001 backup;
}
"""


def make_cfg(tmp_path: Path, mode: str = "njs", extra: str = ""):
    p = tmp_path / "web.toml"
    p.write_text(CONFIG.format(upstream=tmp_path / "web.upstream.conf",
                               pid=tmp_path / "nginx.pid", mode=mode) + extra)
    return load_config(p)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_legacy_njs_install_is_refused_before_anything_and_routed_slot_still_reads_it(
        tmp_path):
    cfg = make_cfg(tmp_path)
    switcher = NjsSwitcher(cfg)
    assert switcher.legacy_active_file == tmp_path / "web.active"
    cfg.nginx.upstream_file.write_text(LEGACY_UPSTREAM)
    (tmp_path / "web.active").write_text("zdagent_web_green\n")
    assert switcher.routed_slot() == "green"  # status and the watchdog still know the slot
    before = snapshot(tmp_path)
    nginx = Nginx(cfg, lambda ev: None)
    try:
        with pytest.raises(EnvironmentProblem) as info:
            nginx.switch("blue", None)  # raises before it looks for a master
    finally:
        nginx.close()
    e = info.value
    assert e.exit_code == EXIT_ENVIRONMENT
    assert "pre-upgrade njs names ($zdagent_web_pool)" in e.message and "\n" not in e.message
    assert "re-render the site block" in e.hint and "--site" in e.hint
    assert f"echo zdagent__green_web > {cfg.nginx.active_file}" in e.hint
    assert "nginx -t && nginx -s reload" in e.hint
    assert snapshot(tmp_path) == before  # nothing touched


def test_each_legacy_file_alone_is_named(tmp_path):
    cfg = make_cfg(tmp_path)
    switcher = NjsSwitcher(cfg)
    new_upstream = Nginx(cfg, lambda ev: None)
    try:
        cfg.nginx.upstream_file.write_text(new_upstream.render_upstream(None, None))
    finally:
        new_upstream.close()
    assert switcher.legacy_problem() is None  # a fresh install: fine
    legacy_active = tmp_path / "web.active"
    legacy_active.write_text("zdagent_web_blue\n")  # new upstream, only the old active file
    assert switcher.legacy_problem() == (f"{legacy_active} is the pre-upgrade active file and "
                                         f"{cfg.nginx.active_file} is missing")
    assert switcher.routed_slot() == "blue"
    cfg.nginx.active_file.write_text("zdagent_web_green\n")  # new file, old pool name
    assert switcher.legacy_problem() == (f"{cfg.nginx.active_file} names the pre-upgrade pool "
                                         "zdagent_web_green")
    cfg.nginx.active_file.write_text("zdagent__green_web\n")  # migrated: the old file is moot
    assert switcher.legacy_problem() is None
    assert switcher.routed_slot() == "green"
    switcher.preflight()


def test_another_apps_names_are_not_legacy(tmp_path):
    """App "web-blue"'s module is zdagent_web_blue: only app web's own old names count."""
    cfg = make_cfg(tmp_path)
    cfg.nginx.upstream_file.write_text("js_import zdagent_web_blue from zdagent.js;\n"
                                       "upstream zdagent__blue_web {\n}\n")
    assert NjsSwitcher(cfg).legacy_problem() is None


@pytest.mark.parametrize("mode", ["njs", "reload"])
def test_template_that_fails_to_render_writes_nothing(tmp_path, mode):
    bad = tmp_path / "tpl" / "bad.j2"
    bad.parent.mkdir()
    bad.write_text("upstream {{ upstream }} {\n  server {{ no_such_var }};\n}\n")
    cfg = make_cfg(tmp_path, mode, f'upstream_template = "{bad}"\n')
    cfg.nginx.upstream_file.write_text('# Managed by zdagent for app "web"\nold upstream\n')
    cfg.nginx.active_file.write_text("zdagent__blue_web\n")
    before = snapshot(tmp_path)
    nginx = Nginx(cfg, lambda ev: None)
    try:
        with pytest.raises(NginxError, match=r"cannot render .*bad\.j2") as info:
            nginx.switch("green", "blue")
    finally:
        nginx.close()
    assert "nothing was changed" in info.value.hint
    assert snapshot(tmp_path) == before
    assert nginx.live_slot_in_file() == ("blue" if mode == "njs" else None)


def test_restored_error_keeps_the_class_and_wraps_anything_else():
    e = restored_error(EnvironmentProblem("nginx is not running", hint="start nginx"), True,
                       "the previous routing", hint="read the log")
    assert type(e) is EnvironmentProblem and e.exit_code == EXIT_ENVIRONMENT
    assert e.message == str(e) == "nginx is not running; the previous routing was restored"
    assert e.hint == "start nginx; read the log"
    e = restored_error(PermissionError(13, "Permission denied"), False, "the previous upstream",
                       fallback_hint="check Nginx's error log")
    assert type(e) is NginxError and e.exit_code == EXIT_DEPLOY_FAILED
    assert e.message.startswith("switch failed: PermissionError: [Errno 13] Permission denied")
    assert "could NOT be put back" in e.message
    assert e.hint == "check Nginx's error log"


def test_served_by_treats_an_invalid_url_as_no_answer():
    with httpx.Client() as client:
        with pytest.raises(httpx.InvalidURL):  # not an httpx.HTTPError
            client.get("http://127.0.0.1:1/\x00")
        assert served_by(client, "http://127.0.0.1:1/\x00") is None
