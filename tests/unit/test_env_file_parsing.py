"""Env files: read only when a container is created, errors name the key, exposure warned."""

from __future__ import annotations

import os

import pytest

from zdagent.config import env_file_exposed, read_env_file
from zdagent.errors import ConfigError


def test_reads_keys_and_quoted_values(tmp_path):
    env = tmp_path / "web.env"
    env.write_text("# comment\n\nA=1\nexport B='two words'\nC=\"x=y\"\n")
    assert read_env_file(env) == {"A": "1", "B": "two words", "C": "x=y"}


@pytest.mark.parametrize(("content", "why"), [
    (None, "No such file"),
    (b"A=\xff\xfe\n", "not UTF-8"),
    (b"A=1\nnot a pair\n", ":2: expected KEY=VALUE"),
])
def test_errors_name_the_key_and_never_the_values(tmp_path, content, why):
    env = tmp_path / "web.env"
    if content is not None:
        env.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_env_file(env)
    assert info.value.message.startswith("container.env_file ")
    assert why in info.value.message
    assert info.value.exit_code == 2
    assert "\xff" not in info.value.message and "A=1" not in info.value.message


def test_a_directory_is_an_error_not_a_crash(tmp_path):
    with pytest.raises(ConfigError, match=r"container\.env_file"):
        read_env_file(tmp_path)


def test_exposed_when_group_or_world_may_read(tmp_path):
    env = tmp_path / "web.env"
    env.write_text("A=1\n")
    for mode, exposed in ((0o600, False), (0o640, True), (0o604, True), (0o400, False)):
        os.chmod(env, mode)
        assert env_file_exposed(env) is exposed, oct(mode)
    assert env_file_exposed(tmp_path / "missing") is False
