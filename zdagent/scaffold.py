"""``zdagent init``: the files a new app needs, written once, nothing half-written.

For app ``web`` under root ``/``:

    /etc/zdagent/apps/web.toml                       the app config
    /etc/nginx/sites-available/zdagent-web.conf      the site block (+ a sites-enabled link)
    /etc/nginx/zdagent/web.upstream.conf             the placeholder upstream (kept if present)
    /etc/systemd/system/zdagent.service              the daemon's unit (+ its enable link)

The config is rendered and validated by the same loader as every other command before any
file is written; existing files are refused without ``force`` (the live upstream file is never
overwritten). With another ``root`` every path, written or referred to, lives under it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zdagent.config import APP_NAME_RE, load_config
from zdagent.errors import ConfigError, UsageError
from zdagent.nginx import atomic_write, render_site, render_upstream

UNIT_SOURCE = Path(__file__).resolve().parent.parent / "systemd" / "zdagent.service"


@dataclass(frozen=True)
class InitOptions:
    app: str
    root: Path
    source: str  # image | build | git
    source_value: str
    port: int
    blue_port: int
    green_port: int
    listen: str
    server_name: str
    health_path: str
    force: bool


@dataclass(frozen=True)
class Planned:
    path: Path
    text: str | None  # None: a symlink to ``link``
    link: str | None = None
    keep_existing: bool = False  # the live upstream: never overwritten


def _q(value: str) -> str:
    return json.dumps(value)  # a TOML basic string


def render_config(o: InitOptions) -> str:
    r = o.root
    if o.source == "image":
        source = f"[source]\nimage = {_q(o.source_value)}\npull = \"missing\""
    elif o.source == "build":
        source = f"[source.build]\ncontext = {_q(o.source_value)}"
    else:
        source = f"[source.git]\nrepo = {_q(o.source_value)}"
    return f"""\
# zdagent config for {o.app}, written by `zdagent init`. Reference: `zdagent config example`.
[app]
name = {_q(o.app)}
state_dir = {_q(str(r / 'var/lib/zdagent'))}

{source}

[container]
port = {o.port}

[slots]
blue_port = {o.blue_port}
green_port = {o.green_port}

[health]
path = {_q(o.health_path)}

[nginx]
upstream_file = {_q(str(r / f'etc/nginx/zdagent/{o.app}.upstream.conf'))}
listen = {_q(o.listen)}
server_name = {_q(o.server_name)}
public_url = "http://127.0.0.1/"
"""


def unit_text(executable: str) -> str:
    """The unit with ExecStart pointing at zdagentd installed beside ``executable``."""
    return UNIT_SOURCE.read_text().replace("/usr/local/bin/",
                                           str(Path(executable).parent) + "/")


def plan(o: InitOptions, executable: str) -> list[Planned]:
    """Every file init would write, rendered and validated; raises before touching disk."""
    if not APP_NAME_RE.fullmatch(o.app):
        raise UsageError(f"invalid app name {o.app!r}",
                         hint="use lowercase letters, digits and '-' (max 40)")
    config_text = render_config(o)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / f"{o.app}.toml"
        probe.write_text(config_text)
        try:
            cfg = load_config(probe)
        except ConfigError as e:  # name init's own options, not the scratch file
            raise UsageError(e.message.replace(f"{probe}: ", "zdagent init: "),
                             hint="fix the option; nothing was written") from None
    r = o.root
    site = r / f"etc/nginx/sites-available/zdagent-{o.app}.conf"
    unit = r / "etc/systemd/system/zdagent.service"
    return [
        Planned(r / f"etc/zdagent/apps/{o.app}.toml", config_text),
        Planned(site, render_site(cfg)),
        Planned(r / f"etc/nginx/sites-enabled/zdagent-{o.app}.conf", None,
                link=f"../sites-available/zdagent-{o.app}.conf"),
        Planned(cfg.nginx.upstream_file, render_upstream(cfg, None, None), keep_existing=True),
        Planned(unit, unit_text(executable)),
        Planned(r / "etc/systemd/system/multi-user.target.wants/zdagent.service", None,
                link="/etc/systemd/system/zdagent.service"),
    ]


def _same(p: Planned) -> bool:
    if p.text is None:
        return p.path.is_symlink() and os.readlink(p.path) == p.link
    return p.path.is_file() and p.path.read_text() == p.text


def write(o: InitOptions, executable: str) -> list[str]:
    """Write the planned files; return one line per file ("wrote", "kept", "unchanged")."""
    planned = plan(o, executable)
    clashes = [p.path for p in planned
               if (p.path.exists() or p.path.is_symlink()) and not p.keep_existing
               and not _same(p)]
    if clashes and not o.force:
        raise UsageError(f"{clashes[0]} exists" + (f" (and {len(clashes) - 1} more)"
                                                   if len(clashes) > 1 else ""),
                         hint="nothing was written; pass --force to overwrite")
    lines = []
    for p in planned:
        if p.keep_existing and p.path.exists():
            lines.append(f"kept      {p.path} (live; never overwritten)")
        elif _same(p):
            lines.append(f"unchanged {p.path}")
        elif p.text is None:
            p.path.parent.mkdir(parents=True, exist_ok=True)
            if p.path.is_symlink() or p.path.exists():
                p.path.unlink()
            p.path.symlink_to(p.link or "")
            lines.append(f"linked    {p.path} -> {p.link}")
        else:
            atomic_write(p.path, p.text)
            lines.append(f"wrote     {p.path}")
    return lines


def enable_unit(root: Path) -> str:
    """Tell a running systemd about the unit (only for the real root)."""
    if root != Path("/") or not Path("/run/systemd/system").is_dir() \
            or shutil.which("systemctl") is None:
        return "systemd is not running here: enable later with " \
               "`systemctl daemon-reload && systemctl enable --now zdagent`"
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "zdagent.service"]):
        p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if p.returncode != 0:
            return f"`{' '.join(argv)}` failed: {p.stderr.strip()[:200]}"
    return "enabled zdagent.service; start it with `systemctl start zdagent`"
