"""docs/operations.md: every anchor a hint or status line links to is a heading there (a renamed
heading fails here), and a full disk is told apart from other failures."""

from __future__ import annotations

import ast
import errno
import io
import re
import sqlite3
from pathlib import Path

import docker.errors
import pytest

from zdagent import render, runbook
from zdagent.api import error_reply
from zdagent.errors import (
    EXIT_ENVIRONMENT,
    BuildFailed,
    DiskFull,
    as_known,
    disk_full,
    is_disk_full,
)
from zdagent.slots import Slots
from zdagent.watchdog import STATES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / runbook.RUNBOOK


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def doc_anchors() -> list[str]:
    in_code = False
    anchors = []
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^#{1,6}\s+(.+?)\s*#*$", line)):
            anchors.append(slug(m.group(1)))
    return anchors


def test_every_anchor_is_one_heading_of_the_runbook():
    anchors = doc_anchors()
    for anchor in runbook.ANCHORS:
        assert anchors.count(anchor) == 1, f"docs/operations.md has no '## {anchor}' heading"


def test_links_inside_the_runbook_resolve():
    anchors = set(doc_anchors())
    for target in re.findall(r"\]\(#([^)]+)\)", DOC.read_text()):
        assert target in anchors, target


def _linked_anchors() -> list[tuple[str, str]]:
    """(file, anchor) of every link(...) / with_link(..., anchor) call and every literal
    'operations.md#anchor' in the package."""
    found = []
    for path in (ROOT / "zdagent").rglob("*.py"):
        text = path.read_text()
        found += [(path.name, a) for a in re.findall(
            r"(?:operations\.md#|zdagent runbook )([a-z0-9-]+)", text)]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                    "link", "with_link") and node.args:
                last = node.args[-1]
                if isinstance(last, ast.Constant) and isinstance(last.value, str):
                    found.append((path.name, last.value))
    return found


def test_every_linked_anchor_exists_in_the_runbook():
    linked = _linked_anchors()
    files = {f for f, _ in linked}
    # the hints named in the runbook's own table do link to it
    assert {"slots.py", "lock.py", "errors.py", "__init__.py", "doctor.py"} <= files, files
    anchors = set(doc_anchors())
    for file, anchor in linked:
        assert anchor in anchors, f"{file} links to docs/operations.md#{anchor}: no such heading"


def test_watchdog_states_link_to_existing_sections():
    assert set(runbook.WATCHDOG_STATES) <= set(STATES)
    assert set(runbook.WATCHDOG_STATES.values()) <= runbook.ANCHORS
    with pytest.raises(ValueError):
        runbook.link("no-such-section")


def _status(watchdog: dict | None, drift: list[str], nginx_running: bool = True) -> str:
    data = {
        "app": "web", "live_slot": "blue",
        "slots": {s: {"state": "running", "version": "v1", "image": "web:v1",
                      "health": "healthy", "port": 18001, "deployed_at": None}
                  for s in ("blue", "green")},
        "routing": {"confirmed": True, "served_by": "blue", "upstream_file": "/u.conf",
                    "nginx_running": nginx_running},
        "last_deploy": None, "drift": drift,
        "daemon": {"since": 0, "pid": 1, "version": "x"}, "watchdog": watchdog,
    }
    return render.status_text(render.Painter(io.StringIO()), data)


@pytest.mark.parametrize(("state", "anchor"), [
    ("degraded", "degraded"), ("nginx-down", "nginx-down"), ("revert-failed", "revert-failed"),
    ("failing", "failing"), ("reverted", "reverted"), ("error", "watchdog-error")])
def test_the_status_line_links_the_watchdog_state(state, anchor):
    text = _status({"status": state, "last_reason": "why"}, [])
    assert f"watchdog: {state} (why) (runbook: zdagent runbook {anchor})" in text


def test_a_healthy_status_has_no_runbook_link():
    assert "runbook" not in _status({"status": "healthy", "last_reason": None}, [])


def test_drift_lines_link_their_section():
    assert "(runbook: zdagent runbook drift)" in _status(None, ["the store says ..."])
    down = _status(None, ["nginx is not running"], nginx_running=False)
    assert "(runbook: zdagent runbook nginx-down)" in down


# --- disk full ---------------------------------------------------------------------------

def _api_error(explanation: str) -> docker.errors.APIError:
    return docker.errors.APIError("500 Server Error", explanation=explanation)


@pytest.mark.parametrize("problem", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    sqlite3.OperationalError("database or disk is full"),
    _api_error("write /var/lib/docker/tmp/GetImageBlob1: no space left on device"),
    "failed to register layer: Error processing tar file(exit status 1): write /app/x: "
    "no space left on device",
    "mkdir /var/lib/docker/overlay2/abc: No Space Left On Device",
])
def test_disk_full_is_recognised(problem):
    assert is_disk_full(problem)


@pytest.mark.parametrize("problem", [
    OSError(errno.EACCES, "Permission denied"),
    _api_error("driver failed programming external connectivity: port is already allocated"),
    "manifest for web:v9 not found",
    sqlite3.OperationalError("database is locked"),
])
def test_other_failures_are_not_disk_full(problem):
    assert not is_disk_full(problem)


def test_disk_full_error_is_an_environment_problem_with_the_runbook_link():
    e = disk_full("pull of web:v2 failed", "write /var/lib/docker/x: no space left on device")
    assert isinstance(e, DiskFull) and e.exit_code == EXIT_ENVIRONMENT
    assert e.message.startswith("pull of web:v2 failed: the disk is full (")
    assert e.hint.endswith("(runbook: zdagent runbook disk-full)")
    assert "the live slot is untouched" in e.hint


def test_a_full_disk_anywhere_is_explained_not_reported_as_a_bug():
    known = as_known(OSError(errno.ENOSPC, "No space left on device", "/var/lib/zdagent/x"))
    assert isinstance(known, DiskFull)
    assert as_known(RuntimeError("boom")) is None
    status, body = error_reply(sqlite3.OperationalError("database or disk is full"))
    assert status == 503 and body["error"]["exit_code"] == EXIT_ENVIRONMENT
    assert "runbook disk-full" in body["error"]["hint"]
    assert error_reply(RuntimeError("boom"))[0] == 500


class _Api:
    """Docker's build stream as data: the chunks the engine sends, then the end."""

    def __init__(self, chunks: list[dict]) -> None:
        self.chunks = chunks

    def build(self, **_: object):
        yield from self.chunks


class _Client:
    def __init__(self, chunks: list[dict]) -> None:
        self.api = _Api(chunks)


def _build(tmp_path, chunks: list[dict]):
    from tests.unit.test_config import MINIMAL, write
    from zdagent.config import load_config

    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    cfg = load_config(write(tmp_path, MINIMAL.replace(
        '[source]\nimage = "registry.local/web"', '[source.build]\ncontext = "ctx"')))
    return Slots(cfg, _Client(chunks)).build("v2", tmp_path / "ctx", lambda _: None)


def test_a_build_that_runs_out_of_disk_says_so(tmp_path):
    chunks = [{"stream": "Step 1/2 : FROM scratch"}, {"stream": "Step 2/2 : COPY app /app"},
              {"errorDetail": {"message": "write /var/lib/docker/overlay2/x/app: no space "
                                          "left on device"}, "error": "..."}]
    with pytest.raises(DiskFull) as e:
        _build(tmp_path, chunks)
    assert "build failed at step 2/2" in e.value.message and "runbook disk-full" in e.value.hint


def test_any_other_build_error_stays_a_build_failure(tmp_path):
    chunks = [{"stream": "Step 1/1 : RUN false"},
              {"errorDetail": {"message": "The command '/bin/sh -c false' returned a non-zero "
                                          "code: 1"}}]
    with pytest.raises(BuildFailed) as e:
        _build(tmp_path, chunks)
    assert not isinstance(e.value, DiskFull)


class _RefusingContainers:
    def create(self, **_: object):
        raise docker.errors.APIError("500 Server Error", explanation="mkdir /var/lib/docker/"
                                     "overlay2/x-init: no space left on device")


class _RefusingClient:
    containers = _RefusingContainers()


def test_a_one_off_refused_for_a_full_disk_says_so(tmp_path):
    """The release command's container (and exec's) is refused like a slot's: a full disk
    is DiskFull (exit 3, runbook link), not a generic deploy failure."""
    from tests.unit.test_config import MINIMAL, write
    from zdagent.config import load_config
    from zdagent.oneoff import oneoff_container

    slots = Slots(load_config(write(tmp_path, MINIMAL)), _RefusingClient())
    with pytest.raises(DiskFull) as e, oneoff_container(slots, {"image": "x"}):
        pass
    assert "runbook disk-full" in e.value.hint


def test_each_section_prints_from_the_document_alone():
    """`zdagent runbook SECTION` prints exactly that heading's section, for every anchor."""
    parts = runbook.sections(runbook.document())
    assert runbook.ANCHORS <= set(parts) <= set(doc_anchors())
    for anchor in runbook.ANCHORS:
        text = parts[anchor]
        assert text.startswith(f"## {anchor}\n") and text.count("\n## ") == 0
