"""Retention decisions, and the pure parts of logs/exec and their SSH gate rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from zdagent.config import ImageSource
from zdagent.errors import DeployFailed, UsageError
from zdagent.gate import GateCommand, GateRefused, parse, parse_scope
from zdagent.oneoff import oneoff_labels, parse_since, resolve_slot
from zdagent.retention import Deployed, ImageFacts, builds_to_remove, choose


def img(n: int, *, foreign: tuple[str, ...] = ()) -> ImageFacts:
    return ImageFacts(id=f"sha256:{n}", tags=(f"web:v{n}",), foreign_tags=foreign,
                      created=float(n), size=100 * n, version=f"v{n}")


def deployed(*ns: int, ok: bool = True) -> list[Deployed]:
    return [Deployed(f"v{n}", f"sha256:{n}", 1000.0 + n, ok) for n in ns]


def ids(choices) -> list[int]:
    return sorted(int(c.image_id.split(":")[1]) for c in choices)


def test_keeps_live_standby_and_the_newest_others_within_retain():
    plan = choose(deployed(*range(1, 9)), [img(n) for n in range(1, 9)], {},
                  {"sha256:8": "live", "sha256:7": "standby"}, retain=3)
    assert ids(plan.keep) == [6, 7, 8]
    assert ids(plan.remove) == [1, 2, 3, 4, 5]
    assert plan.bytes_freed == 100 * (1 + 2 + 3 + 4 + 5)
    assert plan.kept_versions == {"v6", "v7", "v8"}


def test_an_image_in_use_by_any_container_is_never_removed():
    plan = choose(deployed(*range(1, 9)), [img(n) for n in range(1, 9)],
                  {"sha256:2": "stopped-thing"}, {"sha256:8": "live"}, retain=2)
    assert ids(plan.keep) == [2, 7, 8]
    assert "stopped-thing" in next(c.reason for c in plan.keep if c.image_id == "sha256:2")


def test_live_and_standby_survive_even_when_old_and_beyond_retain():
    # rolled back to v1 long ago: v1 is live although the newest deploys are v5..v9
    plan = choose(deployed(*range(1, 10)), [img(n) for n in range(1, 10)], {},
                  {"sha256:1": "live", "sha256:2": "standby"}, retain=1)
    assert ids(plan.keep) == [1, 2]


def test_order_is_by_last_successful_deploy_not_build_time():
    history = [*deployed(1, 2, 3), Deployed("v1", "sha256:1", 2000.0, True),
               Deployed("v2", "sha256:2", 3000.0, False)]
    plan = choose(history, [img(1), img(2), img(3)], {}, {}, retain=1)
    assert ids(plan.keep) == [1]  # redeployed last; v2's later attempt failed


def test_a_version_that_never_went_live_goes_before_older_good_ones():
    history = [*deployed(1, 2), *deployed(3, ok=False)]  # v3's candidate failed
    plan = choose(history, [img(1), img(2), img(3)], {}, {"sha256:2": "live"}, retain=2)
    assert ids(plan.keep) == [1, 2] and ids(plan.remove) == [3]


def test_images_with_a_foreign_tag_are_left_alone():
    plan = choose([], [img(1, foreign=("other:latest",)), img(2), img(3)], {}, {}, retain=1)
    assert ids(plan.remove) == [2]


def test_build_dirs_follow_the_kept_versions():
    dirs = [Path("/b") / ("a" * 40), Path("/b") / ("b" * 40)]
    assert builds_to_remove(dirs, {"a" * 12}) == [str(Path("/b") / ("b" * 40))]


def test_since_durations_and_times():
    assert parse_since("10m", now=1000.0) == 400
    assert parse_since("2h", now=10_000.0) == 10_000 - 7200
    assert parse_since("2026-01-31T12:00:00+00:00") == 1769860800
    with pytest.raises(UsageError):
        parse_since("yesterday")


def test_slot_names():
    assert resolve_slot("live", "green") == "green"
    assert resolve_slot("standby", "green") == "blue"
    assert resolve_slot("blue", None) == "blue"
    with pytest.raises(DeployFailed):
        resolve_slot("live", None)
    with pytest.raises(UsageError):
        resolve_slot("purple", "blue")


def test_oneoff_labels_never_name_a_slot():
    labels = oneoff_labels("web", "v2")
    assert labels["zdagent.oneoff"] == "1" and labels["zdagent.app"] == "web"
    assert "zdagent.slot" not in labels


class _Cfg:
    source = ImageSource("registry.local/web", "missing")


APPS = {"web": _Cfg()}


@pytest.mark.parametrize("cmd", ["logs web", "logs web --tail 5", "exec web -- sh",
                                 "exec web rake db:migrate"])
def test_gate_refuses_logs_and_exec_by_default(cmd):
    with pytest.raises(GateRefused, match="may not run"):
        parse(cmd, APPS.get)
    with pytest.raises(GateRefused, match="may not run"):
        parse(cmd, APPS.get, parse_scope(None, "deploy,status"))


@pytest.mark.parametrize(("cmd", "expected"), [
    ("logs web", ()),
    ("logs web --slot standby -f --since 10m --tail 50",
     ("--slot", "standby", "-f", "--since", "10m", "--tail", "50")),
    ("exec web -- bin/migrate --check", ("--", "bin/migrate", "--check")),
    ("exec web /bin/busybox sh -c true", ("--", "/bin/busybox", "sh", "-c", "true")),
])
def test_gate_allows_logs_and_exec_for_a_scoped_key(cmd, expected):
    verb = cmd.split()[0]
    assert parse(cmd, APPS.get, parse_scope(None, "logs,exec")) == \
        GateCommand(verb, "web", expected)


@pytest.mark.parametrize("cmd", ["logs web --slot purple", "logs web --tail x",
                                 "logs web --since soon", "logs web --tail 5 --tail 6",
                                 "logs web --config /etc/passwd", "exec web",
                                 "exec web --tty sh", "exec web -- --config"])
def test_gate_logs_and_exec_arguments_are_strict(cmd):
    with pytest.raises(GateRefused, match="usage"):
        parse(cmd, APPS.get, parse_scope(None, "logs,exec"))


@pytest.mark.parametrize("argv", [["logs", "-f"], ["logs", "--tail", "5"],
                                  ["exec", "--", "sh"], ["prune", "--dry-run"]])
def test_the_fast_path_hands_these_verbs_to_the_full_cli(argv):
    from zdagent.thin import parse as thin_parse

    assert thin_parse(argv) is None
