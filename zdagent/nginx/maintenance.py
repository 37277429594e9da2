"""Maintenance mode: Nginx answers 503 with a small page and ``Retry-After``.

The state is one JSON file beside the upstream file, present only while maintenance is on
(``<upstream_file>.maintenance.json``): njs mode's ``zdagent.js`` reads it on every request,
so turning it on or off needs no reload. Reload mode renders an include of the site block
(``<upstream_file>.maintenance.conf``) and reloads. Either way the slots keep running and
keep being probed, and zdagent's own checks of the health path from 127.0.0.1 pass through,
so a deploy still verifies its switch while the public sees the page.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zdagent.config import AppConfig
from zdagent.errors import NginxError
from zdagent.nginx import atomic_write

if TYPE_CHECKING:
    from zdagent.nginx import Nginx

MARK_HEADER = "X-Zdagent-Maintenance"
CHECK_PATH = "/.zdagent-maintenance-check"  # any path but the health path shows the page
DEFAULT_MESSAGE = "This service is down for maintenance and will be back shortly."
DEFAULT_RETRY_AFTER = 120  # seconds
MAX_MESSAGE = 500  # characters of a maintenance message


def maintenance_file(cfg: AppConfig) -> Path:
    f = cfg.nginx.upstream_file
    return f.with_name(f.name + ".maintenance.json")


def maintenance_conf(cfg: AppConfig) -> Path:
    f = cfg.nginx.upstream_file
    return f.with_name(f.name + ".maintenance.conf")


def page(app: str, message: str) -> str:
    """The 503 page: the message HTML-escaped, and '$' and '\\' as entities too, so the
    same text is also a safe single-quoted Nginx string (reload mode) - no variables."""
    def esc(text: str) -> str:
        out = html.escape(" ".join(text.split()), quote=True)
        return out.replace("$", "&#36;").replace("\\", "&#92;").replace("'", "&#39;")

    return ("<!doctype html><meta charset=utf-8><title>Maintenance</title>"
            f"<h1>{esc(app)}: maintenance</h1><p>{esc(message)}</p>\n")


def render_conf(page_html: str, retry_after: int, verify_path: str) -> str:
    """Reload mode's include (server level): turn the page on, except for zdagent's checks."""
    return (
        "# Managed by zdagent: present only while maintenance mode is on.\n"
        'set $zdagent_maintenance "1";\n'
        f'set $zdagent_maintenance_retry "{int(retry_after)}";\n'
        f"set $zdagent_maintenance_page '{page_html}';\n"
        'set $zdagent_maintenance_who "$remote_addr $uri";\n'
        f'if ($zdagent_maintenance_who = "127.0.0.1 {verify_path}") {{\n'
        '    set $zdagent_maintenance "";\n'
        "}\n"
    )


def read_state(cfg: AppConfig) -> dict[str, Any] | None:
    """What ``status`` shows: on (message, retry_after, since, by) or None when off."""
    try:
        data = json.loads(maintenance_file(cfg).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: data.get(k) for k in ("message", "retry_after", "since", "by")}


def turn_on(nginx: Nginx, message: str, retry_after: int, by: str) -> dict[str, Any]:
    """Write the state (reload mode: and the include, then reload), verified: a request
    through Nginx gets the page. On failure the previous state is put back."""
    cfg = nginx.cfg
    text = json.dumps({"message": message, "retry_after": retry_after, "since": time.time(),
                       "by": by, "page": page(cfg.name, message)})
    conf = None
    if nginx.switcher.mode == "reload":
        conf = render_conf(page(cfg.name, message), retry_after,
                           cfg.nginx.verify_path.split("?", 1)[0])
    _apply(nginx, text, conf, want_on=True)
    return read_state(cfg) or {}


def turn_off(nginx: Nginx) -> None:
    _apply(nginx, None, None, want_on=False)


def _apply(nginx: Nginx, state: str | None, conf: str | None, *, want_on: bool) -> None:
    cfg = nginx.cfg
    files = [(maintenance_file(cfg), state)]
    if nginx.switcher.mode == "reload":
        files.append((maintenance_conf(cfg), conf))
    previous = [(f, f.read_text() if f.exists() else None) for f, _ in files]
    try:
        _write(files)
        if nginx.switcher.mode == "reload":
            problem = nginx.run_command(cfg.nginx.test_command, "nginx -t")
            if problem:
                raise NginxError(f"nginx -t failed: {problem}")
            nginx.reload(nginx.workers())
        _verify(nginx, want_on)
    except Exception:
        _write(previous)
        if nginx.switcher.mode == "reload":
            nginx.reload(nginx.workers())
        raise


def _write(files: list[tuple[Path, str | None]]) -> None:
    for path, text in files:
        if text is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, text)


def _verify(nginx: Nginx, want_on: bool) -> None:
    """A public request (not the health path) shows the page exactly when it should."""
    url = nginx.cfg.nginx.public_url.rstrip("/") + CHECK_PATH
    deadline = time.monotonic() + nginx.cfg.nginx.reload_timeout
    seen = None
    while True:
        try:
            r = nginx.http.get(url, headers={**nginx.cfg.verify_headers,
                                             "Connection": "close"}, timeout=2)
            seen = f"HTTP {r.status_code}"
            if (r.headers.get(MARK_HEADER) == "on") == want_on and \
                    (not want_on or (r.status_code == 503 and r.headers.get("Retry-After"))):
                return
        except Exception as e:  # httpx errors: try again until the deadline
            seen = type(e).__name__
        if time.monotonic() > deadline:
            state = "on" if want_on else "off"
            raise NginxError(
                f"maintenance is not {state} through Nginx ({url} answered {seen})",
                hint="the site block must come from this zdagent: re-render it with "
                     "`zdagent nginx render --site`, install it and reload Nginx "
                     "(nothing was changed)")
        time.sleep(0.05)
