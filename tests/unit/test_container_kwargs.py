"""container.* settings (volumes, command, limits, labels, user, logs): validated at load, and
passed to Docker as data by container_kwargs (slots) and oneoff_kwargs (one-off containers)."""

from __future__ import annotations

import pytest

from tests.unit.test_config import MINIMAL, error_of, write
from zdagent.config import Volume, load_config, parse_memory
from zdagent.oneoff import oneoff_kwargs
from zdagent.slots import Slots, container_kwargs

SETTINGS = """\
volumes = ["data:/var/lib/app", "/srv/uploads:/uploads:ro", "/srv/cache:/cache:rw"]
command = ["/bin/app", "serve", "--port", "8080"]
entrypoint = ["/bin/tini", "--"]
memory = "512m"
cpus = 1.5
labels = { team = "web", "com.example.tier" = "front" }
user = "1000:1000"
log_driver = "local"
log_options = { max-size = "10m", max-file = 3 }
"""


def with_settings(tmp_path, settings: str = SETTINGS):
    return load_config(write(tmp_path, MINIMAL.replace("port = 8080", "port = 8080\n" + settings)))


def test_settings_are_parsed_into_the_config(tmp_path):
    c = with_settings(tmp_path).container
    assert c.volumes == (Volume("data", "/var/lib/app", "rw"),
                         Volume("/srv/uploads", "/uploads", "ro"),
                         Volume("/srv/cache", "/cache", "rw"))
    assert [v.named for v in c.volumes] == [True, False, False]
    assert c.command == ("/bin/app", "serve", "--port", "8080")
    assert c.entrypoint == ("/bin/tini", "--")
    assert c.memory == 512 * 1024**2
    assert c.cpus == 1.5
    assert c.labels == {"team": "web", "com.example.tier": "front"}
    assert c.user == "1000:1000"
    assert c.log_driver == "local"
    assert c.log_options == {"max-size": "10m", "max-file": "3"}


def test_defaults_leave_everything_to_the_image_and_docker(tmp_path):
    c = load_config(write(tmp_path, MINIMAL)).container
    assert (c.volumes, c.command, c.entrypoint, c.memory, c.cpus, dict(c.labels), c.user,
            c.log_driver, dict(c.log_options)) == ((), (), (), None, None, {}, None, None, {})
    kw = container_kwargs(load_config(write(tmp_path, MINIMAL)), "blue", "img", "v1", 1, {})
    for key in ("volumes", "command", "entrypoint", "mem_limit", "nano_cpus", "user",
                "log_config", "network"):
        assert key not in kw


def test_container_kwargs_pass_every_setting(tmp_path):
    cfg = with_settings(tmp_path)
    kw = container_kwargs(cfg, "blue", "sha256:abc", "v3", 7, {"A": "1"})
    assert kw["volumes"] == ["data:/var/lib/app:rw", "/srv/uploads:/uploads:ro",
                             "/srv/cache:/cache:rw"]
    assert kw["command"] == ["/bin/app", "serve", "--port", "8080"]
    assert kw["entrypoint"] == ["/bin/tini", "--"]
    assert kw["mem_limit"] == 536870912
    assert kw["nano_cpus"] == 1_500_000_000
    assert kw["user"] == "1000:1000"
    assert kw["log_config"] == {"type": "local", "config": {"max-size": "10m", "max-file": "3"}}
    assert kw["labels"]["team"] == "web" and kw["labels"]["com.example.tier"] == "front"
    assert kw["labels"]["zdagent.slot"] == "blue" and kw["labels"]["zdagent.version"] == "v3"
    assert kw["ports"] == {"8080/tcp": ("127.0.0.1", 18001)}  # unchanged by the settings


def test_log_options_alone_keep_the_daemons_default_driver(tmp_path):
    cfg = with_settings(tmp_path, 'log_options = { max-size = "1m" }\n')
    kw = container_kwargs(cfg, "green", "img", "v1", 1, {})
    assert kw["log_config"] == {"type": "", "config": {"max-size": "1m"}}


def test_oneoff_gets_volumes_user_network_and_limits_but_not_the_slot_command(tmp_path):
    cfg = with_settings(tmp_path, SETTINGS + 'network = "backend"\n')
    kw = oneoff_kwargs(Slots(cfg, client=None), "sha256:abc", "v3", ["bin/migrate"], tty=False)
    assert kw["command"] == ["bin/migrate"]
    assert "entrypoint" not in kw and "log_config" not in kw
    assert kw["volumes"] == ["data:/var/lib/app:rw", "/srv/uploads:/uploads:ro",
                             "/srv/cache:/cache:rw"]
    assert (kw["user"], kw["mem_limit"], kw["nano_cpus"], kw["network"]) == \
        ("1000:1000", 536870912, 1_500_000_000, "backend")
    assert "team" not in kw["labels"] and kw["labels"]["zdagent.oneoff"] == "1"
    assert "ports" not in kw


@pytest.mark.parametrize(("text", "size"), [
    ("512m", 512 * 1024**2), ("1g", 1024**3), ("1G", 1024**3), ("1.5g", 1536 * 1024**2),
    ("64mb", 64 * 1024**2), ("8192k", 8 * 1024**2), (10 * 1024**2, 10 * 1024**2)])
def test_memory_sizes(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize(("setting", "key", "fragment"), [
    ('volumes = ["./data:/data"]', "container.volumes", "relative"),
    ('volumes = ["data/sub:/data"]', "container.volumes", "relative"),
    ('volumes = ["~/data:/data"]', "container.volumes", "relative"),
    ('volumes = ["data:data"]', "container.volumes", "container path must be absolute"),
    ('volumes = ["data:/"]', "container.volumes", "must not be /"),
    ('volumes = ["data:/data:z"]', "container.volumes", "ro or rw"),
    ('volumes = ["data:/data:ro:extra"]', "container.volumes", "SOURCE:/container/path"),
    ('volumes = ["/data"]', "container.volumes", "SOURCE:/container/path"),
    ('volumes = ["/srv/../etc:/x"]', "container.volumes", "not a plain absolute path"),
    ('volumes = ["/srv/a b:/x"]', "container.volumes", "not a plain absolute path"),
    ('volumes = ["/srv/a:/x/"]', "container.volumes", "not a plain absolute path"),
    ('volumes = ["/srv/a,type=tmpfs:/x"]', "container.volumes", "not a plain absolute path"),
    ('volumes = ["d:/x"]', "container.volumes", "neither an absolute host path nor a volume"),
    ('volumes = ["aa:/x", "/b:/x"]', "container.volumes", "/x is mounted twice"),
    ('volumes = "data:/data"', "container.volumes", "must be a list"),
    # The host's root, kernel interfaces and device nodes: never an app's storage, and
    # /proc/sys or /sys written by a root container reconfigures the host's kernel.
    ('volumes = ["/:/host"]', "container.volumes", "the whole host"),
    ('volumes = ["/proc:/host/proc"]', "container.volumes", "/proc"),
    ('volumes = ["/sys/fs/cgroup:/cg:ro"]', "container.volumes", "/sys"),
    ('volumes = ["/dev/sda:/disk"]', "container.volumes", "/dev"),
    ('command = "npm start"', "container.command", "['npm', 'start']"),
    ('entrypoint = [1]', "container.entrypoint", "list of strings"),
    ('memory = "lots"', "container.memory", 'like "512m"'),
    ('memory = "1t"', "container.memory", 'like "512m"'),
    ('memory = "4m"', "container.memory", "at least 6m"),
    ("memory = 512", "container.memory", "at least 6m"),
    ("cpus = -1", "container.cpus", "0 (no limit) or between 0.01 and 1024"),
    ("cpus = 0.001", "container.cpus", "between 0.01"),
    ('cpus = "2"', "container.cpus", "must be a number"),
    ('labels = { "zdagent.slot" = "blue" }', "container.labels", "zdagent's own"),
    ('labels = { "ZDAGENT.app" = "x" }', "container.labels", "zdagent's own"),
    ('labels = { zdagent = "1" }', "container.labels", "zdagent's own"),
    ('labels = { "bad key" = "1" }', "container.labels", "not a label key"),
    ("labels = { team = true }", "container.labels", "string or number"),
    ('user = "1000:1000:1"', "container.user", "a user or uid"),
    ('user = "root; id"', "container.user", "a user or uid"),
    ('log_driver = "Json File"', "container.log_driver", "logging driver"),
    ('log_options = { "max size" = "1m" }', "container.log_options", "log option name"),
    ('log_options = ["max-size=1m"]', "container.log_options", "table of strings"),
])
def test_bad_settings_name_the_key(tmp_path, setting, key, fragment):
    message = error_of(tmp_path, MINIMAL.replace("port = 8080", f"port = 8080\n{setting}"))
    assert f": {key}:" in message
    assert fragment in message


@pytest.mark.parametrize("user", ["1000", "1000:1000", "app", "app:staff", "www-data"])
def test_good_users(tmp_path, user):
    assert with_settings(tmp_path, f'user = "{user}"\n').container.user == user


def test_zdagent_is_fine_inside_another_prefix(tmp_path):
    cfg = with_settings(tmp_path, 'labels = { "com.example.zdagent.note" = "x" }\n')
    assert cfg.container.labels == {"com.example.zdagent.note": "x"}


def test_the_docker_socket_is_allowed_but_warned_about(tmp_path):
    """Mounting the Docker socket (or a directory holding it) hands the app root on this host
    and control of zdagent's own slots: a deliberate choice for a few apps, so it loads, and
    ``config check`` names it."""
    from zdagent.config import risky_volumes

    cfg = with_settings(tmp_path, 'volumes = ["/var/run/docker.sock:/var/run/docker.sock", '
                                  '"/run:/host-run:ro", "/srv/proc:/proc-data", "data:/d"]\n')
    assert risky_volumes(cfg.container) == [
        "/var/run/docker.sock:/var/run/docker.sock", "/run:/host-run:ro"]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert risky_volumes(with_settings(plain).container) == []
    import os
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "zdagent", "config", "check", "--config",
                        str(cfg.path)], capture_output=True, text=True, timeout=60,
                       check=False, env={**os.environ, "NO_COLOR": "1"})
    assert p.returncode == 0, p.stderr
    assert "container.volumes: /var/run/docker.sock:/var/run/docker.sock reaches the " \
           "Docker socket" in p.stderr


def test_config_check_all_warns_like_the_single_app_check(tmp_path):
    """`config check --all` is what an operator runs for the daemon: the same warnings."""
    import json

    from tests.unit.test_config import app_file, config_check_all

    path = app_file(tmp_path, "web", 18001, 18002)
    text = path.read_text().replace(
        "port = 8080", 'port = 8080\nvolumes = ["/var/run/docker.sock:/var/run/docker.sock"]')
    path.write_text(text + '\n[hooks]\npost_deploy = ["zdagent-no-such-program"]\n')
    app_file(tmp_path, "www", 18003, 18004)

    p = config_check_all(tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("ok    web: ") and lines[-1].startswith("ok    www: ")
    assert any(line.startswith("warn  web: hooks.post_deploy: zdagent-no-such-program is not "
                               "an executable file") for line in lines), lines
    assert any(line.startswith("warn  web: container.volumes: /var/run/docker.sock:")
               for line in lines), lines
    data = json.loads(config_check_all(tmp_path, "--json").stdout)["apps"]
    assert len(data["web"]["warnings"]) == 2 and data["www"]["warnings"] == []
