"""Error messages keep their cause: long Docker/git messages are cut in the middle."""

from __future__ import annotations

import docker.errors
import pytest

from zdagent.errors import shorten
from zdagent.slots import _short

DOCKER = ("500 Server Error for http+docker://localhost/v1.41/containers/" + "a" * 64
          + "/start: Internal Server Error (\"driver failed programming external connectivity "
            "on endpoint web-green (" + "b" * 64 + "): Bind for 127.0.0.1:18002 failed: port "
            "is already allocated\")")


def test_a_long_message_keeps_its_end_and_its_start():
    text = shorten(DOCKER)
    assert len(text) == 300
    assert text.endswith("port is already allocated\")")
    assert text.startswith("500 Server Error")
    assert " … " in text


@pytest.mark.parametrize("n", [0, 1, 299, 300, 301, 1000])
def test_never_longer_than_the_limit_and_short_text_unchanged(n):
    text = "x" * n
    assert len(shorten(text)) <= 300
    if n <= 300:
        assert shorten(text) == text


def test_one_line():
    assert shorten("fatal: could not read\n  from remote\n") == "fatal: could not read from remote"


def test_docker_errors_use_the_explanation_and_keep_the_cause():
    explanation = DOCKER.split("(\"", 1)[1].rstrip("\")")
    e = docker.errors.APIError(DOCKER, explanation=explanation)
    assert _short(e).endswith("port is already allocated")
    assert _short(docker.errors.DockerException("x" * 500 + " the cause")).endswith("the cause")
