"""The SSH gate's parser: what a deploy key may run, and everything it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from zdagent.config import GitSource, ImageSource
from zdagent.gate import GateCommand, GateRefused, Scope, parse, parse_scope


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


# --- per-key scope: --apps / --verbs in authorized_keys --------------------------------------

def scoped(cmd, apps=None, verbs=None):
    return parse(cmd, APPS.get, parse_scope(apps, verbs))


def test_scope_parsing():
    assert parse_scope(None, None) == Scope()
    assert parse_scope("web,site", "status, history") == Scope(
        frozenset({"web", "site"}), frozenset({"status", "history"}))


@pytest.mark.parametrize(("apps", "verbs"), [
    ("web,", None), ("", None), ("Web", None), ("../x", None), ("web", "status,shell"),
    (None, ""), (None, "deploy;id"),
])
def test_a_malformed_scope_refuses_everything(apps, verbs):
    with pytest.raises(GateRefused, match="authorized_keys"):
        parse_scope(apps, verbs)


def test_an_app_scope_allows_only_its_apps():
    assert scoped("deploy web v2", apps="web") == GateCommand("deploy", "web", ("v2",))
    with pytest.raises(GateRefused, match="may not touch app 'site'"):
        scoped("deploy site main", apps="web")
    # out of scope and unknown look the same: the key learns nothing about other apps
    with pytest.raises(GateRefused, match="may not touch app 'nope'"):
        scoped("status nope", apps="web")


def test_a_read_only_key():
    assert scoped("status web --json", verbs="status,history").verb == "status"
    assert scoped("history site", verbs="status,history").verb == "history"
    for cmd in ("deploy web v2", "rollback web", "rollback web --to v1"):
        with pytest.raises(GateRefused, match="may not run"):
            scoped(cmd, verbs="status,history")


def test_scope_never_loads_an_out_of_scope_config():
    loaded = []

    def load(name):
        loaded.append(name)
        return APPS.get(name)

    with pytest.raises(GateRefused):
        parse("status site", load, parse_scope("web", None))
    assert loaded == []
