"""Plain-text rendering shared by the thin client and the full CLI: no Rich, no Typer.

Importing Rich costs ~60 ms, more than the whole thin client may spend. Colour (ANSI) only
on a terminal, never with ``NO_COLOR`` or ``TERM=dumb``; piped output is plain text.
"""

from __future__ import annotations

import os
import time

from zdagent.runbook import WATCHDOG_STATES, link

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36",
          "bold red": "1;31", "bold green": "1;32", "bold cyan": "1;36"}


class Painter:
    """Wraps text in ANSI colour when writing to a terminal that wants it."""

    def __init__(self, stream: TextIO) -> None:
        self.on = (stream.isatty() and "NO_COLOR" not in os.environ
                   and os.environ.get("TERM") != "dumb")

    def __call__(self, style: str, text: str) -> str:
        return f"\x1b[{_CODES[style]}m{text}\x1b[0m" if self.on else text


def event_line(paint: Painter, kind: str, message: str) -> str:
    """One progress event as the CLI shows it (the same glyphs as the Rich renderer)."""
    if kind == "phase-start":
        return f"{paint('bold cyan', '▸')} {message}"
    if kind == "phase-end":
        return f"  {paint('green', '✓')} {message}"
    if kind == "log":
        return f"    {paint('dim', message)}"
    if kind == "warn":
        return f"{paint('yellow', '!')} {message}"
    return message


def result_line(paint: Painter, result: dict[str, Any], verb: str) -> str:
    return (f"{paint('bold green', verb)} {result.get('version') or '?'} on the "
            f"{result['slot']} slot in {result['seconds']:.1f}s (#{result['deploy_id']}; "
            f"standby: {result.get('from_slot') or 'none'})")


def error_lines(paint: Painter, message: str, hint: str) -> str:
    text = f"{paint('bold red', 'error:')} {message}"
    return text + (f"\n{paint('dim', 'hint:')} {hint}" if hint else "")


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    secs = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit} ago"
    return f"{secs:.0f}s ago"


def table(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def _canary_lines(paint: Painter, c: dict[str, Any] | None) -> list[str]:
    """A running canary: step, shares and the last step's figures."""
    if not c:
        return []
    if "step" not in c:
        return [paint("yellow", f"canary: {c.get('note', '')}")]
    shares = ", ".join(f"{slot} {pct}%" for slot, pct in (c.get("shares") or {}).items())
    lines = [paint("bold", f"canary: {c['version']} in {c['candidate']}, step {c['step']}/"
                           f"{len(c['steps'])} ({c['percent']}%) since "
                           f"{ago(c['step_started_at'])}; shares: {shares or '-'}")]
    figures = c.get("figures") or {}
    for who in ("candidate", "stable"):
        f = figures.get(who)
        if f:
            p99 = f"{f['p99'] * 1000:.0f}ms" if f.get("p99") is not None else "-"
            lines.append(f"  {who}: {f['requests']} requests, 5xx {f['error_rate']:.1%}, "
                         f"p99 {p99}")
    if figures.get("verdict"):
        lines.append(f"  last step: {figures['verdict']}")
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def traffic_lines(paint: Painter, t: dict[str, Any] | None, daemon: bool) -> list[str]:
    """Per-slot figures of the last minute from Nginx's access log, and the analysis."""
    if not t:
        return [] if daemon else ["traffic: figures need the daemon (`zdagent daemon`)"]
    rows = [["slot", "requests", "5xx", "5xx rate", "p50", "p99"]]
    for slot, f in t["slots"].items():
        rows.append([slot, str(f["requests"]), str(f["errors"]), f"{f['error_rate']:.1%}",
                     _ms(f["p50"]), _ms(f["p99"])])
    out = [f"traffic (last {t['window_seconds']}s, from {t['access_log']}):"]
    if len(rows) > 1:
        out += [f"  {line}" for line in table(rows)]
    else:
        out.append("  no requests yet")
    if t.get("error"):
        out.append(paint("yellow", f"! {t['error']}"))
    a = t.get("analysis")
    if a:
        why = f": {a['reason']}" if a.get("reason") and a["verdict"] != "passed" else ""
        out.append(f"analysis of {a['slot']} since {ago(a['switched_at'])}: "
                   f"{a['verdict']}{why}")
    return out


def _ports(row: dict[str, Any]) -> str:
    """``127.0.0.1:18001``, or a swarm task-ports slot's tasks: ``127.0.0.1:30001,30002``."""
    ports = row.get("task_ports") or [row["port"]]
    return "127.0.0.1:" + ",".join(map(str, ports))


def status_text(paint: Painter, data: dict[str, Any]) -> str:
    """``zdagent status`` for people (``--json`` prints ``data`` itself)."""
    live = data["live_slot"]
    rows = [["slot", "state", "version", "image", "health", "port", "deployed"]]
    for name, row in data["slots"].items():
        mark = " (live)" if name == live else ""
        state = f"{row['state']} ({row['tasks']})" if row.get("tasks") else row["state"]
        rows.append([f"{name}{mark}", state, row["version"] or "-", row["image"] or "-",
                     row["health"], _ports(row), ago(row["deployed_at"])])
    header, *body = table(rows)
    lines = [paint("bold", f"zdagent: {data['app']}"), paint("bold", header), *body]
    r = data["routing"]
    confirmed = "confirmed live" if r["confirmed"] else "NOT confirmed"
    lines.append(f"nginx routes to: {live or 'nothing'} ({confirmed}; answered by "
                 f"{r['served_by'] or 'no slot'}) via {r['upstream_file']}")
    last = data["last_deploy"]
    if last:
        lines.append(f"last deploy: #{last['id']} {last['kind']} {last['version']} -> "
                     f"{last['slot']}: {last['outcome']} {ago(last['started_at'])}"
                     + (f" ({last['error']})" if last["error"] else ""))
    lines.extend(_canary_lines(paint, data.get("canary")))
    m = data.get("maintenance")
    if m:
        lines.append(paint("yellow", f"maintenance: ON since {ago(m['since'])} by {m['by']} "
                                     f"(503, Retry-After {m['retry_after']}s): {m['message']}"))
    lines.extend(paint("yellow", f"! {line}") for line in data["drift"])
    if data["drift"]:
        anchor = "nginx-down" if not r["nginx_running"] else "drift"
        lines.append(paint("dim", f"  ({link(anchor)})"))
    lines.extend(traffic_lines(paint, data.get("traffic"), bool(data.get("daemon"))))
    d, w = data.get("daemon"), data.get("watchdog")
    if d:
        anchor = WATCHDOG_STATES.get(w["status"]) if w else None
        lines.append(f"daemon: up since {ago(d['since'])} (pid {d['pid']}, zdagent "
                     f"{d['version']}); watchdog: {w['status'] if w else '-'}"
                     + (f" ({w['last_reason']})" if w and w.get("last_reason") else "")
                     + (f" ({link(anchor)})" if anchor else ""))
        http = d.get("http")
        if http:
            lines.append(f"status page: {http['url']} (metrics: {http['url']}metrics)"
                         + (f"; not served: {http['error']}" if http.get("error") else ""))
    else:
        lines.append("daemon: not running (no watchdog)")
    return "\n".join(lines)
