"""Where each state and error zdagent reports is explained: docs/operations.md, one heading
(= anchor) per state. Hints and status lines point at ``zdagent runbook <section>`` (the
document ships in the wheel, so the host that shows the error can print the section); a unit
test checks every anchor against the document's headings, so a renamed heading fails the tests.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

RUNBOOK = "docs/operations.md"
ANCHORS = frozenset({
    "degraded", "failing", "reverted", "revert-failed", "nginx-down", "watchdog-error",
    "canary-aborted", "disk-full", "docker-unreachable", "lock-held", "drift",
})
# The watchdog's states that need the operator's eye, and their sections.
WATCHDOG_STATES = {"failing": "failing", "reverted": "reverted",
                   "revert-failed": "revert-failed", "degraded": "degraded",
                   "nginx-down": "nginx-down", "error": "watchdog-error",
                   "restarting": "watchdog-error"}
_HEADING = re.compile(r"^## (\S+)\s*$", re.M)


def link(anchor: str) -> str:
    """``runbook: zdagent runbook <anchor>`` (an unknown anchor is a bug: ValueError)."""
    if anchor not in ANCHORS:
        raise ValueError(f"no runbook section {anchor!r}")
    return f"runbook: zdagent runbook {anchor}"


def with_link(hint: str, anchor: str) -> str:
    """A hint followed by its runbook section in parentheses."""
    return f"{hint} ({link(anchor)})"


def document() -> str | None:
    """The runbook's text: shipped in the wheel (zdagent/share), or beside a checkout."""
    packaged = resources.files("zdagent") / "share" / "operations.md"
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parent.parent / RUNBOOK
    return source.read_text(encoding="utf-8") if source.is_file() else None


def sections(text: str) -> dict[str, str]:
    """Each ``## name`` section of the runbook, heading included, in order."""
    marks = list(_HEADING.finditer(text))
    return {m.group(1): text[m.start():(marks[i + 1].start() if i + 1 < len(marks)
                                          else len(text))].rstrip() + "\n"
            for i, m in enumerate(marks)}
