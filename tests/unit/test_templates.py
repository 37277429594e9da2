"""Pure builders as data: the rendered upstream/site and the container arguments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zdagent.config import load_config
from zdagent.errors import NginxError
from zdagent.nginx import live_port_in, render_site, render_upstream
from zdagent.slots import container_kwargs

GOLDEN = Path(__file__).parent / "golden"
CONFIG = """
[app]
name = "web-app"
[source]
image = "registry.local/web"
[container]
port = 8080
[slots]
blue_port = 18001
green_port = 18002
[nginx]
upstream_file = "/etc/nginx/zdagent/web-app.upstream.conf"
listen = "127.0.0.1:8080"
server_name = "example.com"
"""


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "web.toml"
    p.write_text(CONFIG)
    return load_config(p)


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    assert text == path.read_text(), f"{name} changed; review and update the golden file"


def test_upstream_live_with_standby_backup(cfg):
    text = render_upstream(cfg, "green", "blue")
    golden("upstream_green_backup_blue.conf", text)
    assert live_port_in(text) == 18002


def test_upstream_without_standby(cfg):
    text = render_upstream(cfg, "blue", None)
    assert re.search(r"^\s*server .*backup;", text, re.M) is None
    assert live_port_in(text) == 18001


def test_placeholder_upstream_names_no_live_slot(cfg):
    text = render_upstream(cfg, None, None)
    golden("upstream_placeholder.conf", text)
    assert live_port_in(text) is None


def test_site_block(cfg):
    golden("site.conf", render_site(cfg))


def test_live_port_skips_backup_and_down():
    text = "upstream x {\n  server 127.0.0.1:1 down;\n  server 127.0.0.1:2 backup;\n" \
           "  server 127.0.0.1:3 max_fails=1;\n}\n"
    assert live_port_in(text) == 3


def test_custom_template_error_names_the_file(tmp_path, cfg):
    bad = tmp_path / "bad.j2"
    bad.write_text("upstream {{ upstream }} {\n  server {{ no_such_var }};\n}\n")
    object.__setattr__(cfg.nginx, "upstream_template", bad)
    with pytest.raises(NginxError, match=r"bad\.j2"):
        render_upstream(cfg, "blue", None)


def test_container_kwargs_bind_loopback_only(cfg):
    kw = container_kwargs(cfg, "green", "sha256:abc", "v7", 42, {"SECRET": "s3"})
    assert kw["name"] == "web-app-green"
    assert kw["ports"] == {"8080/tcp": ("127.0.0.1", 18002)}
    assert kw["restart_policy"] == {"Name": "no"}  # a candidate; unless-stopped once healthy
    assert kw["environment"] == {"SECRET": "s3", "ZDAGENT_VERSION": "v7",
                                 "ZDAGENT_SLOT": "green"}
    labels = kw["labels"]
    assert labels["zdagent.app"] == "web-app"
    assert labels["zdagent.slot"] == "green"
    assert labels["zdagent.version"] == "v7"
    assert labels["zdagent.deploy-id"] == "42"
    assert float(labels["zdagent.deployed-at"]) > 0
    assert "network" not in kw


def test_njs_mode_renders_both_pools_and_reads_the_active_file(tmp_path):
    from zdagent.nginx import pool_name, routed_slot

    p = tmp_path / "web.toml"
    p.write_text(CONFIG.replace("/etc/nginx/zdagent/web-app.upstream.conf",
                                str(tmp_path / "web-app.upstream.conf"))
                 + 'switch_mode = "njs"\n')
    cfg = load_config(p)
    text = render_upstream(cfg, "green", "blue")
    assert text == render_upstream(cfg, "blue", None)  # independent of the live slot
    assert "upstream zdagent__blue_web_app {" in text
    assert "upstream zdagent__green_web_app {" in text
    assert "js_set $zdagent__pool_web_app zdagent_web_app.pool;" in text
    site = render_site(cfg)
    assert "proxy_pass http://$zdagent__pool_web_app;" in site
    assert "set $zdagent_fallback_pool zdagent__blue_web_app;" in site
    assert f"set $zdagent_active_file {tmp_path / 'web-app.upstream.conf.active'};" in site
    assert routed_slot(cfg) is None
    cfg.nginx.active_file.write_text(pool_name(cfg, "green") + "\n")
    assert routed_slot(cfg) == "green"
    cfg.nginx.active_file.write_text("something_else\n")
    assert routed_slot(cfg) is None


def test_njs_groups_without_backup_exist_and_route_to_their_slot(tmp_path):
    """The groups named while the other slot is no verified standby: one server, no backup;
    the groups with a backup mark a failed live slot down for 2 s."""
    import re

    from zdagent.nginx import pool_name, routed_slot, switcher_for

    p = tmp_path / "web.toml"
    p.write_text(CONFIG.replace("/etc/nginx/zdagent/web-app.upstream.conf",
                                str(tmp_path / "web-app.upstream.conf"))
                 + 'switch_mode = "njs"\n')
    cfg = load_config(p)
    text = render_upstream(cfg, "green", None)
    blocks = dict(re.findall(r"upstream (\S+) \{(.*?)\}", text, re.S))
    alone = blocks["zdagent__alone_green_web_app"]
    assert alone.count("server ") == 1 and "backup" not in alone
    assert f"127.0.0.1:{cfg.slots.green_port};" in alone
    assert f"127.0.0.1:{cfg.slots.green_port} max_fails=1 fail_timeout=2s;" in \
        blocks["zdagent__green_web_app"]
    switcher = switcher_for(cfg)
    assert switcher._has_alone(text)
    assert not switcher._has_alone("upstream zdagent__blue_web_app { server 127.0.0.1:1; }")
    cfg.nginx.active_file.write_text(pool_name(cfg, "blue", alone=True) + "\n")
    assert routed_slot(cfg) == "blue"


def test_answering_upstream_is_the_last_try_of_the_last_group():
    from zdagent.nginx import answering_upstream

    assert answering_upstream("127.0.0.1:1") == "127.0.0.1:1"
    assert answering_upstream("127.0.0.1:1, 127.0.0.1:2") == "127.0.0.1:2"
    assert answering_upstream("127.0.0.1:1 : 127.0.0.1:3") == "127.0.0.1:3"
    assert answering_upstream("") is None


def test_active_files_come_from_the_whole_upstream_file_name(tmp_path):
    cfgs = []
    for name in ("web", "api"):
        p = tmp_path / f"{name}.toml"
        p.write_text(CONFIG.replace('"web-app"', f'"{name}"').replace(
            "/etc/nginx/zdagent/web-app.upstream.conf", str(tmp_path / f"upstream.{name}.conf")))
        cfgs.append(load_config(p))
    web, api = cfgs
    assert web.nginx.active_file == tmp_path / "upstream.web.conf.active"
    assert web.nginx.active_file != api.nginx.active_file


@pytest.mark.parametrize(("a", "b"), [("web", "web-blue"), ("web", "web-green"),
                                      ("web", "web-pool"), ("blue-web", "web"),
                                      ("a-b", "a--b"), ("fallback", "web"),
                                      ("web", "alone-blue-web"), ("blue-web", "alone-web")])
def test_nginx_names_of_two_apps_never_collide(a, b):
    from zdagent.config import nginx_names

    assert len(nginx_names(a)) == 6
    assert not nginx_names(a) & nginx_names(b)
    assert "zdagent_fallback_pool" not in nginx_names(a) | nginx_names(b)


def test_every_rendered_upstream_starts_with_the_managed_header(tmp_path, cfg):
    custom = tmp_path / "custom.j2"
    custom.write_text("upstream {{ upstream }} { server 127.0.0.1:{{ placeholder_port }}; }\n")
    for text in (render_upstream(cfg, None, None), render_upstream(cfg, "blue", "green")):
        assert text.startswith('# Managed by zdagent for app "web-app"')
    object.__setattr__(cfg.nginx, "upstream_template", custom)
    text = render_upstream(cfg, None, None)
    assert text.startswith('# Managed by zdagent for app "web-app"')
    assert text.endswith("upstream zdagent_web_app { server 127.0.0.1:18001; }\n")


def test_verification_sends_the_first_server_name_as_host(tmp_path):
    p = tmp_path / "web.toml"
    for names, host in (("example.com www.example.com", "example.com"), ("_", None),
                        ("*.example.com shop.example.com", "shop.example.com"),
                        (".example.org", "example.org")):
        p.write_text(CONFIG.replace('"example.com"', f'"{names}"'))
        cfg = load_config(p)
        assert cfg.nginx.verify_host == host
        assert cfg.verify_headers == ({"Host": host} if host else {})


def test_the_switch_strategy_is_chosen_once_from_config(tmp_path, cfg):
    from zdagent.nginx import NjsSwitcher, ReloadSwitcher, routed_slot, switcher_for

    assert type(switcher_for(cfg)) is ReloadSwitcher
    p = tmp_path / "njs.toml"
    p.write_text(CONFIG.replace("/etc/nginx/zdagent/web-app.upstream.conf",
                                str(tmp_path / "web-app.upstream.conf"))
                 + 'switch_mode = "njs"\n')
    njs = load_config(p)
    switcher = switcher_for(njs)
    assert type(switcher) is NjsSwitcher
    assert render_upstream(njs, None, None).endswith(switcher.render_upstream(None, None))
    assert render_site(njs) == switcher.render_site()
    njs.nginx.upstream_file.write_text(render_upstream(njs, "green", None))
    assert routed_slot(njs) is None  # njs routes by the active file, not the upstream file
    njs.nginx.active_file.write_text("zdagent__green_web_app\n")
    assert routed_slot(njs) == switcher.routed_slot() == "green"



def test_task_ports_render_one_server_per_task_in_both_modes(tmp_path):
    """Swarm task-ports: every running task of a slot is a server; the other slot's tasks
    are the backups; the header still names the live slot (the ports come and go)."""
    from zdagent.nginx import switcher_for

    ports = {"blue": (32771, 32772), "green": (32780, 32781, 32782)}
    text = render_upstream(cfg_at(tmp_path), "green", "blue", ports.get)
    assert "# zdagent: live=green standby=blue" in text
    assert re.findall(r"server 127\.0\.0\.1:(\d+) max_fails=1 fail_timeout=2s;", text) == \
        ["32780", "32781", "32782"]
    assert re.findall(r"server 127\.0\.0\.1:(\d+) backup;", text) == ["32771", "32772"]
    njs = cfg_at(tmp_path, 'switch_mode = "njs"\n')
    text = render_upstream(njs, "green", None, ports.get)
    blue, green = text.split("upstream zdagent__green_web_app {")
    assert re.findall(r":(\d+) max_fails", blue) == ["32771", "32772"]
    assert re.findall(r":(\d+) backup", green) == ["32771", "32772"]
    assert re.findall(r":(\d+) max_fails", green) == ["32780", "32781", "32782"]
    alone = green.split("upstream zdagent__alone_green_web_app {")[1].split("}")[0]
    assert re.findall(r":(\d+);", alone) == ["32780", "32781", "32782"]  # no backup
    switcher = switcher_for(cfg_at(tmp_path), ports.get)
    assert switcher.slot_of(18002) == "green"  # the slot ports still name their slot


def cfg_at(tmp_path, extra: str = ""):
    p = tmp_path / "web.toml"
    p.write_text(CONFIG.replace("/etc/nginx/zdagent/web-app.upstream.conf",
                                str(tmp_path / "web-app.upstream.conf")) + extra)
    return load_config(p)
