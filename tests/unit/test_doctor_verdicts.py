"""`zdagent doctor`'s verdicts: pure functions from gathered facts to ok / warn / fail."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from zdagent import doctor as d
from zdagent.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "zdagent" / "example.toml"


def example_in(directory: Path, name: str = "web.toml") -> Path:
    """The annotated example config with the build context it names."""
    (directory / "app").mkdir(exist_ok=True)
    (directory / "app" / "Dockerfile").write_text("FROM scratch\n")
    path = directory / name
    path.write_text(EXAMPLE.read_text())
    return path


def test_exit_code_is_one_only_when_a_check_failed():
    ok, warn, fail = (d.Result("x", s, "m") for s in (d.OK, d.WARN, d.FAIL))
    assert d.exit_code([ok, warn]) == 0
    assert d.exit_code([ok, fail, warn]) == 1
    assert d.exit_code([]) == 0


def test_docker_reachable_names_versions_and_unreachable_fails():
    up = d.DockerFacts(version="20.10.24", api_version="1.41", live_restore=True)
    assert d.docker_verdict(up) == d.Result("docker", "ok",
                                            "Docker 20.10.24 reachable (API 1.41 negotiated)")
    down = d.docker_verdict(d.DockerFacts(error="connection refused"))
    assert down.status == "fail" and "connection refused" in down.message and down.hint


def test_live_restore_off_warns_with_the_fix():
    off = d.live_restore_verdict(d.DockerFacts(version="x", live_restore=False))
    assert off.status == "warn" and "stops every app" in off.message
    assert '"live-restore": true' in off.hint and "/etc/docker/daemon.json" in off.hint
    assert d.live_restore_verdict(d.DockerFacts(version="x", live_restore=True)).status == "ok"
    assert d.live_restore_verdict(d.DockerFacts(error="down")).status == "warn"


@pytest.mark.parametrize(("free_gib", "total_gib", "status"), [
    (50, 100, "ok"),
    (1.9, 10, "warn"),     # under 2 GiB
    (5, 100, "warn"),      # under 10 %
    (2.5, 20, "ok"),       # 12.5 % and above 2 GiB
])
def test_disk_warns_under_two_gib_or_ten_percent(free_gib, total_gib, status):
    r = d.disk_verdict("/var/lib/docker", int(free_gib * d.GIB), int(total_gib * d.GIB))
    assert r.status == status
    assert "/var/lib/docker" in r.message
    assert d.disk_verdict("/x", None, None, "gone").status == "warn"


def test_nginx_not_running_fails_and_names_a_master_running_elsewhere():
    pid_file = Path("/run/nginx.pid")
    assert d.nginx_running_verdict(d.MasterFacts(pid_file, 42)).status == "ok"
    stopped = d.nginx_running_verdict(d.MasterFacts(pid_file, None))
    assert stopped.status == "fail" and "systemctl start nginx" in stopped.hint
    elsewhere = d.nginx_running_verdict(d.MasterFacts(pid_file, None, (7, 9)))
    assert elsewhere.status == "fail" and "pid 7, 9" in elsewhere.message
    assert "nginx.pid_file" in elsewhere.hint


DUMP = """\
nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
# configuration file /etc/nginx/nginx.conf:
load_module /usr/lib/nginx/modules/ngx_http_js_module.so;
http { include /etc/nginx/sites-enabled/*; }

# configuration file /etc/nginx/sites-enabled/web.conf:
include /etc/nginx/zdagent/web.upstream.conf;
server { location / { proxy_pass http://$zdagent_web_pool; } }

# configuration file /etc/nginx/zdagent/web.upstream.conf:
upstream zdagent_web_blue { server 127.0.0.1:18001; }

# configuration file /etc/nginx/sites-enabled/api.conf:
server { location / {
    proxy_pass http://zdagent_api;
} }
"""


def test_parse_dump_finds_files_modules_and_proxy_targets():
    dump = d.parse_dump(DUMP)
    assert "/etc/nginx/zdagent/web.upstream.conf" in dump.files
    assert dump.modules == ("/usr/lib/nginx/modules/ngx_http_js_module.so",)
    assert {"zdagent_web_pool", "zdagent_api"} <= dump.proxied


def test_includes_verdict():
    dump = d.parse_dump(DUMP)
    web = d.includes_verdict("web", Path("/etc/nginx/zdagent/web.upstream.conf"),
                             "zdagent_web", dump)
    assert web.status == "ok"
    missing = d.includes_verdict("api", Path("/etc/nginx/zdagent/api.upstream.conf"),
                                 "zdagent_api", dump)
    assert missing.status == "fail" and "not part of Nginx's config" in missing.message
    assert "render --site" in missing.hint
    unused = d.includes_verdict("web", Path("/etc/nginx/zdagent/web.upstream.conf"),
                                "zdagent_other", dump)
    assert unused.status == "warn" and "no proxy_pass uses zdagent_other" in unused.message
    broken = d.includes_verdict("web", Path("/x"), "zdagent_web",
                                d.NginxDump(error="[emerg] unknown directive"))
    assert broken.status == "fail" and "unknown directive" in broken.message
    denied = d.includes_verdict("web", Path("/x"), "zdagent_web",
                                d.NginxDump(error="open() failed", denied=True))
    assert denied.status == "warn" and "as root" in denied.hint


def test_includes_verdict_asks_the_running_nginx():
    dump = d.parse_dump(DUMP)
    upstream = Path("/etc/nginx/zdagent/web.upstream.conf")
    url = "http://127.0.0.1/"
    routed = d.includes_verdict("web", upstream, "zdagent_web", dump,
                                d.Served(url, header="127.0.0.1:18001"))
    assert routed.status == "ok" and "served through it" in routed.message
    stale = d.includes_verdict("web", upstream, "zdagent_web", dump, d.Served(url))
    assert stale.status == "warn" and "has not loaded it" in stale.message
    assert "nginx -s reload" in stale.hint
    silent = d.includes_verdict("web", upstream, "zdagent_web", dump,
                                d.Served(url, error="connection refused"))
    assert silent.status == "warn" and "nothing answers" in silent.message


def test_dump_argv_keeps_the_apps_prefix():
    assert d.dump_argv(("nginx", "-p", "/p", "-c", "/p/n.conf", "-t")) == \
        ["nginx", "-p", "/p", "-c", "/p/n.conf", "-T"]
    assert d.dump_argv(("/usr/sbin/nginx",)) == ["/usr/sbin/nginx", "-T"]


def test_njs_module_found_where_loaded_or_in_the_module_dirs(tmp_path):
    so = tmp_path / d.NJS_MODULE_NAME
    so.write_bytes(b"")
    loaded = d.NginxDump(modules=(str(so),))
    assert d.njs_module(loaded, search=()) == (so, True)
    assert d.njs_module(d.NginxDump(), search=(tmp_path,)) == (so, False)
    assert d.njs_module(d.NginxDump(), search=(tmp_path / "none",)) == (None, False)


def test_njs_verdict():
    so = Path("/m/ngx_http_js_module.so")
    assert d.njs_verdict(so, True, ["web"]).status == "ok"
    not_loaded = d.njs_verdict(so, False, ["web"])
    assert not_loaded.status == "fail" and f"load_module {so};" in not_loaded.hint
    assert d.njs_verdict(so, False, []).status == "warn"
    assert "and loadable" in d.njs_verdict(so, False, []).message
    broken = d.njs_verdict(so, False, ["web"], load_error="[emerg] module version mismatch")
    assert broken.status == "fail" and "cannot load it" in broken.message
    assert "matches the installed nginx" in broken.hint
    absent = d.njs_verdict(None, False, [])
    assert absent.status == "warn" and "every app" in absent.message
    assert "libnginx-mod-http-js" in absent.hint
    assert d.njs_verdict(None, False, ["web"]).status == "fail"
    unknown = d.njs_verdict(so, False, ["web"], dump_error="command not found: nginx")
    assert unknown.status == "warn" and "unknown" in unknown.message
    assert "command not found: nginx" in unknown.message
    assert d.njs_verdict(None, False, ["web"], dump_error="x").status == "fail"


OURS = {"zdagent": "1", "zdagent.app": "web", "zdagent.slot": "blue"}


def test_port_free_or_ours_is_ok_anything_else_fails():
    assert d.port_verdict("web", "blue", d.PortFacts(18001, free=True)).status == "ok"
    ours = d.port_verdict("web", "blue", d.PortFacts(18001, False, ("web-blue", OURS)))
    assert ours.status == "ok" and "ours (web-blue)" in ours.message
    other_slot = d.port_verdict("web", "green", d.PortFacts(18001, False, ("web-blue", OURS)))
    assert other_slot.status == "fail" and "app web slot blue" in other_slot.message
    other_app = d.port_verdict("api", "blue", d.PortFacts(18001, False, ("web-blue", OURS)))
    assert other_app.status == "fail"
    foreign_container = d.port_verdict("web", "blue",
                                       d.PortFacts(18001, False, ("web-blue", {})))
    assert foreign_container.status == "fail" and "not a zdagent slot" in \
        foreign_container.message  # a container with our name but not our labels
    proc = d.port_verdict("web", "blue", d.PortFacts(18001, False, process="python3 (pid 5)"))
    assert proc.status == "fail" and "python3 (pid 5)" in proc.message
    assert "slots.blue_port" in proc.hint
    unknown = d.port_verdict("web", "blue", d.PortFacts(18001, False))
    assert unknown.status == "fail" and "another process" in unknown.message


def _sock(**kw) -> d.SocketFacts:
    base = dict(path=Path("/run/zdagent/zdagent.sock"), group="zdagent", group_exists=True,
                exists=True, is_socket=True, mode=stat.S_IFSOCK | 0o660,
                owner_group="zdagent", user="deploy")
    return d.SocketFacts(**{**base, **kw})


def _socket_status(**kw) -> tuple[str, str]:
    group, sock = d.socket_verdicts(_sock(**kw))
    return group.status, sock.status


def test_socket_verdicts():
    assert _socket_status() == ("ok", "ok")
    assert _socket_status(exists=False) == ("ok", "warn")
    assert _socket_status(exists=False, group_exists=False) == ("warn", "warn")
    assert _socket_status(group_exists=False) == ("fail", "ok")
    assert _socket_status(is_socket=False) == ("ok", "fail")
    assert _socket_status(mode=stat.S_IFSOCK | 0o666) == ("ok", "fail")
    assert _socket_status(owner_group="root") == ("ok", "warn")
    assert _socket_status(reach_error="refused") == ("ok", "fail")
    denied = d.socket_verdicts(_sock(reach_error="Permission denied", denied=True))[1]
    assert denied.status == "fail" and "usermod -aG zdagent deploy" in denied.hint
    world = d.socket_verdicts(_sock(mode=stat.S_IFSOCK | 0o666))[1]
    assert "world-writable" in world.message


DEPLOY = d.Who("deploy", 1000, frozenset({1000, 50}))


@pytest.mark.parametrize(("mode", "uid", "gid", "who", "writable"), [
    (0o755, 0, 0, d.Who("root", 0, frozenset({0})), True),   # root writes anywhere
    (0o755, 1000, 0, DEPLOY, True),                           # owner with u+wx
    (0o555, 1000, 0, DEPLOY, False),                          # owner without u+w
    (0o775, 0, 50, DEPLOY, True),                             # a member of the group
    (0o755, 0, 50, DEPLOY, False),                            # group without g+w
    (0o777, 0, 0, DEPLOY, True),                              # others
    (0o750, 0, 0, DEPLOY, False),
])
def test_writable_by(mode, uid, gid, who, writable):
    assert d.writable_by(stat.S_IFDIR | mode, uid, gid, who) is writable


def test_state_dir_verdict_says_which_user():
    path = Path("/var/lib/zdagent")
    ok = d.state_dir_verdict(path, DEPLOY, "deploy", path, stat.S_IFDIR | 0o750, 1000, 1000,
                             False)
    assert ok.status == "ok" and "deploy (the daemon's user)" in ok.message
    no = d.state_dir_verdict(path, DEPLOY, "deploy", path, stat.S_IFDIR | 0o755, 0, 0, False)
    assert no.status == "fail" and "not writable by deploy" in no.message
    assert "chown deploy" in no.hint
    later = d.state_dir_verdict(path, DEPLOY, "deploy", Path("/var/lib"),
                                stat.S_IFDIR | 0o777, 0, 0, False)
    assert later.status == "ok" and "will be created" in later.message
    ro = d.state_dir_verdict(path, DEPLOY, "deploy", path, stat.S_IFDIR | 0o777, 0, 0, True)
    assert ro.status == "fail" and "read-only" in ro.message
    assert d.state_dir_verdict(path, None, "ghost", path, 0, 0, 0, False).status == "fail"


def test_unit_parsed_and_judged(tmp_path):
    text = ("[Service]\nUser=zd\nExecStart=/usr/local/bin/zdagentd --config-dir /etc/a "
            "--socket /run/z.sock --socket-group ops\n")
    assert d.parse_unit(text) == {"user": "zd", "config-dir": "/etc/a",
                                  "socket": "/run/z.sock", "socket-group": "ops"}
    assert d.parse_unit("[Service]\nExecStart=/x/zdagentd\n") == {"user": "root"}
    missing = d.read_unit(tmp_path)
    assert d.unit_verdict(missing).status == "warn" and "not installed" in \
        d.unit_verdict(missing).message
    unit = tmp_path / d.UNIT
    unit.parent.mkdir(parents=True)
    unit.write_text(text)
    assert "not enabled" in d.unit_verdict(d.read_unit(tmp_path)).message
    wants = tmp_path / d.UNIT_WANTS
    wants.parent.mkdir(parents=True)
    wants.symlink_to("/etc/systemd/system/zdagent.service")  # dangling under a test root
    u = d.read_unit(tmp_path)
    assert u.enabled and u.socket_group == "ops" and u.user == "zd"
    assert d.unit_verdict(u).status == "ok"


def test_app_verdict_names_the_switch_mode_and_why(tmp_path):
    cfg = load_config(example_in(tmp_path))
    mode = cfg.nginx.switch_mode
    njs = cfg if mode == "njs" else _with_mode(cfg, "njs")
    reload = cfg if mode == "reload" else _with_mode(cfg, "reload")
    assert d.app_verdict("web", njs, None, True).status == "ok"
    assert "reload-free" in d.app_verdict("web", njs, None, True).message
    assert d.app_verdict("web", njs, None, False).status == "fail"
    warn = d.app_verdict("web", reload, None, True)
    assert warn.status == "warn" and 'switch_mode = "njs"' in warn.hint
    plain = d.app_verdict("web", reload, None, False)
    assert plain.status == "ok" and "does not load the njs module" in plain.message
    assert d.app_verdict("web", njs, None, None).status == "warn"
    bad = d.app_verdict("web", None, "web.toml: slots.blue_port: is required", False)
    assert bad.status == "fail" and "slots.blue_port" in bad.message


def _with_mode(cfg, mode: str):
    from dataclasses import replace

    return replace(cfg, nginx=replace(cfg.nginx, switch_mode=mode))


def test_a_breaking_check_becomes_a_failed_line():
    def boom() -> list[d.Result]:
        raise RuntimeError("surprise")

    [r] = d._guarded("socket", boom)
    assert r.status == "fail" and "RuntimeError: surprise" in r.message and "bug" in r.hint


def test_load_apps_reports_bad_files_and_keeps_good_ones(tmp_path):
    example_in(tmp_path)
    (tmp_path / "bad.toml").write_text("[app]\nname = 'bad'\n")
    apps = d.load_apps(tmp_path)
    assert set(apps.configs) == {"web"} and set(apps.errors) == {"bad"}


def test_render_line_puts_the_hint_on_the_same_line():
    r = d.Result("port:web/blue", "fail", "127.0.0.1:1 is held", "stop it")
    assert d.render_line(r) == "fail  port:web/blue: 127.0.0.1:1 is held  hint: stop it"
    assert d.render_line(d.Result("docker", "ok", "fine", "unused")) == "ok    docker: fine"
