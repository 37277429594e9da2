"""Config validation: every error names the file and the key, and the example is valid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zdagent.config import BuildSource, ImageSource, check_version, load_config
from zdagent.errors import EXIT_USAGE, ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "zdagent" / "example.toml"

MINIMAL = """
[app]
name = "web"
state_dir = "state"
[source]
image = "registry.local/web"
[container]
port = 8080
[slots]
blue_port = 18001
green_port = 18002
[nginx]
upstream_file = "up.conf"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "web.toml"
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert e.value.exit_code == EXIT_USAGE
    assert str(tmp_path / "web.toml") in e.value.message
    return e.value.message


def test_annotated_example_is_valid(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "zdagent.toml")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\n")
    cfg = load_config(tmp_path / "zdagent.toml")
    assert cfg.name == "web"
    assert isinstance(cfg.source, BuildSource)
    assert cfg.source.context == (tmp_path / "app").resolve()
    assert cfg.slots.after_switch == "standby"
    assert cfg.health.passes == 3
    assert cfg.nginx.verify_path == "/"


def test_minimal_image_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg.source, ImageSource)
    assert cfg.source.pull == "missing"
    assert cfg.nginx.upstream_file == (tmp_path / "up.conf").resolve()
    assert cfg.nginx.test_command == ("nginx", "-t")
    assert cfg.verify_url == "http://127.0.0.1/"
    assert cfg.slot_for_port(18002) == "green"


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (("[slots]", "[slots]\nbleu_port = 1"), "slots.bleu_port", "did you mean 'blue_port'"),
        (("port = 8080", 'port = "8080"'), "container.port", "must be an integer"),
        (("port = 8080", "port = 70000"), "container.port", "between 1 and 65535"),
        (("green_port = 18002", "green_port = 18001"), "slots.green_port", "must differ"),
        (('name = "web"', 'name = "Web App"'), "app.name", "lowercase"),
        (("[nginx]", "[nginx]\ntest_command = \"nginx -t\""), "nginx.test_command", "argv"),
        (("[nginx]", "[health]\npasses = 0\n[nginx]"), "health.passes", "between 1 and 100"),
        (("[nginx]", "[health]\nstatuses = [700]\n[nginx]"), "health.statuses", "100-599"),
        (("[nginx]", '[health]\nexpect_version = "yes"\n[nginx]'), "health.expect_version",
         "none, body or header"),
        (("[nginx]", '[slots2]\n[nginx]'), "slots2", "unknown section"),
        (('upstream_file = "up.conf"', ""), "nginx.upstream_file", "is required"),
    ],
)
def test_each_error_names_file_and_key(tmp_path, edit, key, fragment):
    message = error_of(tmp_path, MINIMAL.replace(*edit))
    assert f": {key}:" in message
    assert fragment in message


def test_missing_context_and_template_are_named(tmp_path):
    build = MINIMAL.replace('[source]\nimage = "registry.local/web"',
                            '[source.build]\ncontext = "nope"')
    assert "source.build.context: directory not found" in error_of(tmp_path, build)
    tpl = MINIMAL + 'upstream_template = "missing.j2"\n'
    assert "nginx.upstream_template: template not found" in error_of(tmp_path, tpl)


def test_both_or_no_source_is_an_error(tmp_path):
    (tmp_path / "ctx").mkdir()
    both = MINIMAL.replace("[container]", '[source.build]\ncontext = "ctx"\n[container]')
    assert "set exactly one of" in error_of(tmp_path, both)
    assert "not several" in error_of(tmp_path, both)
    neither = MINIMAL.replace('image = "registry.local/web"', "")
    assert "one is required" in error_of(tmp_path, neither)


def test_git_source_needs_a_repository(tmp_path):
    text = MINIMAL.replace('[source]\nimage = "registry.local/web"',
                           '[source.git]\nrepo = "nothere"')
    assert "source.git.repo: not a git repository" in error_of(tmp_path, text)


def test_invalid_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, "[app\nname=")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_env_file_is_not_read_at_load(tmp_path):
    """Secrets are read only when a container is created (tests/unit/test_env_file_parsing.py)."""
    (tmp_path / "env").write_bytes(b"\xff broken")
    text = MINIMAL.replace("port = 8080", 'port = 8080\nenv_file = "env"')
    assert load_config(write(tmp_path, text)).container.env_file == tmp_path / "env"


@pytest.mark.parametrize("good", ["v1", "1.2.3", "a1b2c3d", "release_2026-11-23"])
def test_good_versions(good):
    assert check_version(good) == good


@pytest.mark.parametrize("bad", ["", "-v1", ".v1", "v1;rm", "v 1", "../x", "x" * 129, "$(id)"])
def test_bad_versions(bad):
    with pytest.raises(ConfigError):
        check_version(bad)


@pytest.mark.parametrize(("listen", "fragment"), [
    ("0", "between 1 and 65535, got 0"), ("99999", "between 1 and 65535, got 99999"),
    ("127.0.0.1:0", "got 0"), ("http", "a port or address:port"), ("80 ssl", "address:port"),
])
def test_listen_must_be_a_valid_port(tmp_path, listen, fragment):
    message = error_of(tmp_path, MINIMAL + f'listen = "{listen}"\n')
    assert ": nginx.listen:" in message and fragment in message


@pytest.mark.parametrize("listen", ["80", "65535", "127.0.0.1:8080", "[::]:443", "*:80"])
def test_good_listen_values(tmp_path, listen):
    assert load_config(write(tmp_path, MINIMAL + f'listen = "{listen}"\n')).nginx.listen == listen


@pytest.mark.parametrize("image", ["nginx:latest", "registry.local/web:v1",
                                   "127.0.0.1:5000/app:v2", "web/", "a//b"])
def test_image_must_not_carry_a_tag(tmp_path, image):
    message = error_of(tmp_path, MINIMAL.replace('"registry.local/web"', f'"{image}"'))
    assert ": source.image:" in message


def test_a_tag_error_says_what_to_use(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace('"registry.local/web"', '"nginx:latest"'))
    assert "must not carry a tag" in message and "use 'nginx'" in message


@pytest.mark.parametrize("image", ["nginx", "127.0.0.1:5000/app", "localhost:5000/team/app",
                                   "ghcr.io/org/app"])
def test_registry_host_port_is_not_a_tag(tmp_path, image):
    cfg = load_config(write(tmp_path, MINIMAL.replace('"registry.local/web"', f'"{image}"')))
    assert isinstance(cfg.source, ImageSource) and cfg.source.image == image


def test_build_tag_must_not_carry_a_tag_either(tmp_path):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    text = MINIMAL.replace('[source]\nimage = "registry.local/web"',
                           '[source.build]\ncontext = "ctx"\ntag = "web:v1"')
    assert ": source.build.tag: must not carry a tag" in error_of(tmp_path, text)


def test_slot_port_must_not_be_nginx_listen_port(tmp_path):
    message = error_of(tmp_path, MINIMAL + 'listen = "127.0.0.1:18002"\n')
    assert ": slots.green_port: must differ from Nginx's listen port" in message


def test_upstream_file_not_written_by_zdagent_is_refused(tmp_path):
    nginx_conf = tmp_path / "nginx.conf"
    nginx_conf.write_text("user www-data;\nevents {}\n")
    text = MINIMAL.replace('"up.conf"', f'"{nginx_conf}"')
    message = error_of(tmp_path, text)
    assert f": nginx.upstream_file: {nginx_conf} exists and was not written by zdagent" in message
    assert nginx_conf.read_text() == "user www-data;\nevents {}\n"
    (tmp_path / "dir.conf").mkdir()
    assert "is not a regular file" in error_of(tmp_path, MINIMAL.replace("up.conf", "dir.conf"))


def test_upstream_file_of_another_app_is_refused_and_our_own_is_fine(tmp_path):
    (tmp_path / "up.conf").write_text('# Managed by zdagent for app "api": ...\nupstream x {}\n')
    assert "belongs to app 'api', not 'web'" in error_of(tmp_path, MINIMAL)
    (tmp_path / "up.conf").write_text('# Managed by zdagent for app "web": ...\nupstream x {}\n')
    assert load_config(write(tmp_path, MINIMAL)).name == "web"


def test_the_rendered_placeholder_is_accepted_as_ours(tmp_path):
    from zdagent.nginx import render_upstream

    cfg = load_config(write(tmp_path, MINIMAL))
    (tmp_path / "up.conf").write_text(render_upstream(cfg, None, None))
    assert load_config(write(tmp_path, MINIMAL)).name == "web"


# --- the app directory --------------------------------------------------------------------

def app_file(directory: Path, name: str, blue: int, green: int, upstream: str | None = None,
             listen: str = "80", mtime: float | None = None) -> Path:
    text = (MINIMAL.replace('name = "web"', f'name = "{name}"')
            .replace("blue_port = 18001", f"blue_port = {blue}")
            .replace("green_port = 18002", f"green_port = {green}")
            .replace('"up.conf"', f'"{upstream or name + ".upstream.conf"}"')
            + f'listen = "{listen}"\n')
    path = directory / f"{name}.toml"
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_app_dir_loads_every_app_and_reports_bad_files_one_line_each(tmp_path):
    from zdagent.config import load_app_dir

    app_file(tmp_path, "web", 18001, 18002)
    app_file(tmp_path, "api", 18003, 18004)
    (tmp_path / "broken.toml").write_text("[app\n")
    (tmp_path / "other.toml").write_text(MINIMAL.replace('"up.conf"', '"o.conf"')
                                         .replace("18001", "19001").replace("18002", "19002"))
    d = load_app_dir(tmp_path)
    assert sorted(d.apps) == ["api", "web"]
    assert sorted(d.errors) == ["broken", "other"]
    assert "not valid TOML" in d.errors["broken"]
    assert "rename it to web.toml" in d.errors["other"]
    assert all("\n" not in m for m in d.errors.values())


@pytest.mark.parametrize(("newer", "fragment"), [
    ({"blue": 18002, "green": 18009}, "slots.blue_port: port 18002 is also a slot port of app "
                                      "web"),
    ({"blue": 18008, "green": 18009, "listen": "18001"},
     "nginx.listen: port 18001 is a slot port of app web"),
    ({"blue": 8080, "green": 18009, "listen": "8081"},
     "slots.blue_port: port 8080 is Nginx's listen port of app web"),
    ({"blue": 18008, "green": 18009, "upstream": "web.upstream.conf"},
     "nginx.upstream_file: {dir}/web.upstream.conf is also used by app web"),
    ({"blue": 18008, "green": 18009, "upstream": "web.upstream.conf.active"},
     "nginx.upstream_file: {dir}/web.upstream.conf.active is also used by app web"),
])
def test_a_clash_reports_the_later_app_naming_the_first(tmp_path, newer, fragment):
    from zdagent.config import load_app_dir

    app_file(tmp_path, "web", 18001, 18002, listen="127.0.0.1:8080", mtime=2_000_000)
    path = app_file(tmp_path, "zzz", newer["blue"], newer["green"], newer.get("upstream"),
                    newer.get("listen", "8080"), mtime=1_000_000)  # older: times don't count
    d = load_app_dir(tmp_path)
    assert list(d.apps) == ["web"]
    assert d.errors == {"zzz": f"{path.resolve()}: {fragment.format(dir=tmp_path.resolve())}"}


def test_a_running_app_keeps_its_resources_whatever_the_file_times(tmp_path):
    """Touching or editing files never moves a port from a running app to another."""
    from zdagent.config import load_app_dir, load_config

    web = app_file(tmp_path, "web", 18001, 18002)
    app_file(tmp_path, "api", 18001, 18002, upstream="api.upstream.conf")
    first = load_app_dir(tmp_path)
    assert list(first.apps) == ["api"] and "web" in first.errors  # by name, nothing running
    running = {"web": load_config(web)}
    for mtime in (1_000_000, 3_000_000):
        os.utime(web, (mtime, mtime))
        d = load_app_dir(tmp_path, running=running)
        assert list(d.apps) == ["web"], d.errors
        assert "slot port of app web" in d.errors["api"]
    # web's own edit to new ports is no clash with what its running config holds
    app_file(tmp_path, "web", 18001, 18005)
    d = load_app_dir(tmp_path, running=running)
    assert d.apps["web"].slots.green_port == 18005 and "api" in d.errors


def test_apps_may_share_an_nginx_listen_port(tmp_path):
    from zdagent.config import load_app_dir

    app_file(tmp_path, "web", 18001, 18002)
    app_file(tmp_path, "web-blue", 18003, 18004)
    app_file(tmp_path, "api", 18005, 18006, upstream="upstream.api.conf")
    app_file(tmp_path, "www", 18007, 18008, upstream="upstream.www.conf")
    d = load_app_dir(tmp_path)
    assert sorted(d.apps) == ["api", "web", "web-blue", "www"] and d.errors == {}
    assert d.apps["api"].nginx.active_file != d.apps["www"].nginx.active_file


def config_check_all(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real ``zdagent config check --all`` on ``directory``."""
    return subprocess.run([sys.executable, "-m", "zdagent", "config", "check", "--all",
                           "--config-dir", str(directory), *extra], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, "NO_COLOR": "1"})


def test_config_check_all_prints_each_app_and_exits_2_on_any_error(tmp_path):
    import json

    app_file(tmp_path, "web", 18001, 18002)
    app_file(tmp_path, "www", 18002, 18003)

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return config_check_all(tmp_path, *extra)

    p = check()
    assert p.returncode == 2, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("ok    web: ")
    assert lines[1].startswith("error www: ") and "slot port of app web" in lines[1]
    data = json.loads(check("--json").stdout)
    assert data["apps"]["web"]["ok"] is True and data["apps"]["www"]["ok"] is False
    (tmp_path / "www.toml").unlink()
    p = check()
    assert p.returncode == 0 and p.stdout.startswith("ok    web: ")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8o80/", "http://127.0.0.1:99999/",
                                 "http://127.0.0.1:0/", "http://[::1/"])
def test_public_url_port_must_be_1_to_65535(url):
    """A port urlsplit cannot read would fail every watchdog tick: refused at load."""
    from zdagent.config import _url

    assert _url(url) is not None
    assert _url(url.replace("http://", "https://")) is not None


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://127.0.0.1:8080/",
                                 "https://example.com:65535/x", "http://[::1]:80/"])
def test_good_public_urls(url):
    from zdagent.config import _url

    assert _url(url) is None


def test_analysis_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.policy.enabled and cfg.policy.max_error_rate == 0.05
    assert cfg.nginx.access_log == Path(f"/var/log/nginx/zdagent-{cfg.name}.log")
    cfg = load_config(write(tmp_path, MINIMAL.replace(
        "[nginx]", '[analysis]\nwindow = 10\nmax_error_rate = 0.1\n\n[nginx]\n'
                   'access_log = "logs/web.json"')))
    assert cfg.policy.window == 10.0 and cfg.policy.max_error_rate == 0.1
    assert cfg.nginx.access_log == (tmp_path / "logs" / "web.json").resolve()


@pytest.mark.parametrize(("section", "line", "key"), [
    ("analysis", "max_error_rate = 1.5", "analysis.max_error_rate"),
    ("analysis", "failures = 0", "analysis.failures"),
    ("analysis", "windw = 3", "analysis.windw"),
    ("nginx", 'access_log = "/var/log/a b.log"', "nginx.access_log"),
    ("nginx", 'access_log = "/var/log/$host.log"', "nginx.access_log"),
])
def test_analysis_and_access_log_errors_name_the_key(tmp_path, section, line, key):
    text = MINIMAL.replace("[nginx]", f"[{section}]\n{line}\n\n[nginx]") \
        if section == "analysis" else MINIMAL.replace("[nginx]", f"[nginx]\n{line}")
    assert f"{key}:" in error_of(tmp_path, text)


def test_an_empty_upstream_file_is_nobodys_and_a_blank_line_is_not(tmp_path):
    """`zdagent nginx render --live none > FILE` (README, scripts/demo.sh): the shell creates
    FILE, empty, before zdagent loads the config — that refused the README's own command."""
    (tmp_path / "up.conf").write_text("")
    assert load_config(write(tmp_path, MINIMAL)).name == "web"
    (tmp_path / "up.conf").write_text("\nuser www-data;\n")
    assert "was not written by zdagent" in error_of(tmp_path, MINIMAL)
