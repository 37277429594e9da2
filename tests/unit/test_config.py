"""Config validation: every error names the file and the key, and the example is valid."""

from __future__ import annotations

import shutil
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


def test_env_file_is_checked_at_load(tmp_path):
    (tmp_path / "env").write_text("GOOD=1\nthis line is wrong\n")
    text = MINIMAL.replace("port = 8080", 'port = 8080\nenv_file = "env"')
    with pytest.raises(ConfigError, match=r"env:2: expected KEY=VALUE"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("good", ["v1", "1.2.3", "a1b2c3d", "release_2026-11-23"])
def test_good_versions(good):
    assert check_version(good) == good


@pytest.mark.parametrize("bad", ["", "-v1", ".v1", "v1;rm", "v 1", "../x", "x" * 129, "$(id)"])
def test_bad_versions(bad):
    with pytest.raises(ConfigError):
        check_version(bad)
