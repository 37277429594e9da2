"""Progress events: the engine emits them, and every front end renders the same stream.

The engine never prints. The CLI renders events to the terminal; the daemon will stream the
same events over its API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["phase-start", "phase-end", "log", "info", "warn"]


@dataclass(frozen=True)
class Event:
    """One thing that happened during a deploy, rollback or reconcile."""

    kind: EventKind
    message: str
    phase: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "phase": self.phase, "message": self.message, **self.data}


Emit = Callable[[Event], None]


def discard(_event: Event) -> None:
    """An Emit that drops everything (for callers that do not render progress)."""
