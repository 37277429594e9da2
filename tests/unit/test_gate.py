"""The SSH gate's parser: what a deploy key may run, and everything it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from zdagent.config import GitSource, ImageSource
from zdagent.gate import GateCommand, GateRefused, parse


class _Cfg:
    def __init__(self, source):
        self.source = source


APPS = {
    "web": _Cfg(ImageSource("registry.local/web", "missing")),
    "site": _Cfg(GitSource(Path("/srv/site.git"), "", "Dockerfile", "site", {}, True)),
}


def gate(cmd):
    return parse(cmd, APPS.get)


@pytest.mark.parametrize(("cmd", "expected"), [
    ("deploy web v2", GateCommand("deploy", "web", ("v2",))),
    ("deploy site main", GateCommand("deploy", "site", ("main",))),
    ("deploy site feature/login-2", GateCommand("deploy", "site", ("feature/login-2",))),
    ("deploy site 3f9a1c2b7d4e", GateCommand("deploy", "site", ("3f9a1c2b7d4e",))),
    ("rollback web", GateCommand("rollback", "web", ())),
    ("rollback web --to v1", GateCommand("rollback", "web", ("--to", "v1"))),
    ("status web", GateCommand("status", "web", ())),
    ("status web --json", GateCommand("status", "web", ("--json",))),
    ("history web --json", GateCommand("history", "web", ("--json",))),
])
def test_allowed(cmd, expected):
    assert gate(cmd) == expected


@pytest.mark.parametrize(("cmd", "reason"), [
    (None, "interactive sessions are not allowed"),
    ("", "empty command"),
    ("   ", "empty command"),
    ("; rm -rf /", "forbidden character"),
    ("deploy web v1; rm -rf /", "forbidden character"),
    ("deploy web $(id)", "forbidden character"),
    ("deploy web `id`", "forbidden character"),
    ("deploy web v1 && id", "forbidden character"),
    ("deploy web v1 | sh", "forbidden character"),
    ("deploy web v1\nid", "forbidden character"),
    ("deploy ../etc v1", "unknown app"),
    ("deploy site ../etc", "invalid git ref"),
    ("deploy site main..evil", "invalid git ref"),
    ("deploy site -uhelp", "invalid git ref"),
    ("deploy web ../etc", "invalid version"),
    ("deploy web -v1", "invalid version"),
    ("deploy nope v1", "unknown app"),
    ("deploy Web v1", "unknown app"),
    ("deploy web", "usage: deploy"),
    ("deploy web v1 v2", "usage: deploy"),
    ("bash", "unknown command 'bash'"),
    ("sh -c id", "unknown command 'sh'"),
    ("scp -t /root", "unknown command 'scp'"),
    ("rollback web --to", "usage: rollback"),
    ("rollback web --to ../x", "usage: rollback"),
    ("status web --yaml", "usage: status"),
    ("deploy web " + "v" * 300, "longer than 256"),
    ("status", "usage: status <app>"),
])
def test_refused(cmd, reason):
    with pytest.raises(GateRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        gate(cmd)
