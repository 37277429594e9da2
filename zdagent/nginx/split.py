"""A canary's share of traffic as Nginx sees it: pure builders and parsers (unit-tested).

During a canary step both slots serve: reload mode weights the two servers of the upstream
group, njs mode writes a JSON active file that ``zdagent.js`` reads per request (no reload).
``Split`` is that state; the switchers install it, verified, and read it back.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass

from zdagent import config as _config

FORCE_HEADER = "X-Zdagent-Slot"  # njs: zdagent's verification asks for a pool (127.0.0.1 only)
_CANARY_RE = re.compile(r"^# zdagent: live=(\w+) standby=\w+ canary=(\w+) percent=(\d+)", re.M)


@dataclass(frozen=True)
class Split:
    """``percent`` % of requests to ``candidate``, the rest to ``stable``."""

    stable: str
    candidate: str
    percent: int
    step: int = 1
    cookie: str | None = None  # njs: the sticky cookie's name, None when not sticky

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def weights(percent: int) -> tuple[int, int]:
    """Reload mode's (stable, candidate) server weights for ``percent``, smallest terms."""
    if not 0 < percent < 100:
        raise ValueError(f"a split needs 1..99 %, got {percent}")
    g = math.gcd(100 - percent, percent)
    return (100 - percent) // g, percent // g


def cookie_name(app: str) -> str:
    """The sticky cookie of ``app``'s canary: ``zdagent_<app>_v`` (Nginx variable syntax)."""
    return f"zdagent_{app.replace('-', '_')}_v"


def active_text(app: str, split: Split) -> str:
    """njs mode's active file during a step (pools, not slots: what the js proxies to)."""
    return json.dumps({
        "live": _config.pool_name(app, split.stable),
        "canary": _config.pool_name(app, split.candidate),
        "percent": split.percent, "step": split.step, "cookie": split.cookie or "",
    }) + "\n"


def parse_active(app: str, text: str) -> tuple[str | None, Split | None]:
    """njs mode's active file: (the stable/live slot, the split if one is on)."""
    text = text.strip()
    pools = {_config.pool_name(app, s, alone=a): s for s in ("blue", "green")
             for a in (False, True)}
    if not text.startswith("{"):
        return pools.get(text), None
    try:
        data = json.loads(text)
        live, canary = pools.get(data["live"]), pools.get(data["canary"])
        percent, step = int(data["percent"]), int(data["step"])
    except (ValueError, KeyError, TypeError):
        return None, None
    if live is None or canary is None:
        return live, None
    return live, Split(live, canary, percent, step, data.get("cookie") or None)


def parse_upstream(text: str) -> Split | None:
    """Reload mode's upstream file: the split its header names, if any."""
    m = _CANARY_RE.search(text)
    if m is None:
        return None
    return Split(m.group(1), m.group(2), int(m.group(3)))
