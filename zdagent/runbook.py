"""Where each state and error zdagent reports is explained: docs/operations.md, one heading
(= anchor) per state. Hints and status lines link here with ``link(anchor)``; a unit test
checks every anchor against the document's headings, so a renamed heading fails the tests.
"""

from __future__ import annotations

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


def link(anchor: str) -> str:
    """``runbook: docs/operations.md#<anchor>`` (an unknown anchor is a bug: ValueError)."""
    if anchor not in ANCHORS:
        raise ValueError(f"no runbook section {anchor!r}")
    return f"runbook: {RUNBOOK}#{anchor}"


def with_link(hint: str, anchor: str) -> str:
    """A hint followed by its runbook section in parentheses."""
    return f"{hint} ({link(anchor)})"
