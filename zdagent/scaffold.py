"""``zdagent init``: the files a new app needs, written once, nothing half-written.

For app ``web`` under root ``/``:

    /etc/zdagent/apps/web.toml                       the app config (0640 root:<group>)
    /etc/nginx/sites-available/zdagent-web.conf      the site block (+ a sites-enabled link)
    /etc/nginx/zdagent/web.upstream.conf             the placeholder upstream (kept if present)
    /etc/systemd/system/zdagent.service              the daemon's unit (+ its enable link)
    /etc/systemd/system/zdagent.service.d/git-web.conf   git source only: lets the sandboxed
                                                     daemon fetch into the repository
    /var/log/zdagent/ssh-gate.log                    the SSH gate's log (0660 root:<group>)

The config is rendered and validated by the same loader as every other command before any
file is written; existing files are refused without ``force`` (the live upstream file is never
overwritten). With another ``root`` every path, written or referred to, lives under it. The
group (``zdagent`` unless told otherwise) is created if missing: its members may use the
daemon's socket and read the app configs, never the env files or the state dir.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from zdagent.config import APP_NAME_RE, default_access_log, load_config
from zdagent.errors import ConfigError, EnvironmentProblem, UsageError
from zdagent.nginx import atomic_write, render_site, render_upstream

# Files shipped in the wheel under zdagent/share/, found beside the package in a checkout.
SHARED = {
    "zdagent.service": "systemd/zdagent.service",
    "shared-services.yml": "compose/shared-services.yml",
    "github-actions-deploy.yml": "examples/github-actions/deploy.yml",
}
NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
DEFAULT_GROUP = "zdagent"
FIRST_SLOT_PORT = 18001
LAST_SLOT_PORT = 18999
GATE_LOG = "var/log/zdagent/ssh-gate.log"


def shared_file(name: str) -> Path:
    """A file shipped with zdagent (unit, compose file, example workflow)."""
    packaged = resources.files("zdagent") / "share" / name
    if packaged.is_file():
        return Path(str(packaged))
    source = Path(__file__).resolve().parent.parent / SHARED[name]
    if not source.is_file():
        raise EnvironmentProblem(f"zdagent's bundled file {name} is missing",
                                 hint="reinstall zdagent (`pip install --force-reinstall`)")
    return source


def njs_available() -> bool:
    """Debian's libnginx-mod-http-js installs the module Nginx can load_module."""
    return NJS_MODULE.is_file()


@dataclass(frozen=True)
class TlsOptions:
    """``init --tls``: HTTPS with a certbot certificate for the server name."""

    listen: str = "443"
    email: str = ""


@dataclass(frozen=True)
class InitOptions:
    app: str
    root: Path
    source: str  # image | build | git
    source_value: str
    port: int
    blue_port: int | None  # None: the first free pair
    green_port: int | None
    listen: str
    server_name: str
    health_path: str
    force: bool
    group: str = DEFAULT_GROUP
    switch_mode: str | None = None  # None: njs where the module exists, else reload
    tls: TlsOptions | None = None


@dataclass(frozen=True)
class Planned:
    path: Path
    text: str | None  # None: a symlink to ``link``
    link: str | None = None
    keep_existing: bool = False  # the live upstream: never overwritten
    group_readable: bool = False  # 0640 root:<group>, else 0644 root:root


def _q(value: str) -> str:
    return json.dumps(value)  # a TOML basic string


def listen_port(listen: str) -> int | None:
    """The port of an Nginx ``listen`` value ("80", "127.0.0.1:8080", "[::1]:8080")."""
    m = re.fullmatch(r"(?:.*:)?(\d{1,5})", listen)
    return int(m.group(1)) if m else None


def public_url(listen: str) -> str:
    """Where the switch is verified: Nginx's own listen address, seen from this host."""
    port = listen_port(listen) or 80
    host = "127.0.0.1"
    if m := re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[0-9.]+):\d+", listen):
        host = m.group(1)
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
    return f"http://{host}/" if port == 80 else f"http://{host}:{port}/"


def ports_in_use(config_dir: Path) -> set[int]:
    """Slot and Nginx listen ports named by the other apps' configs (unparsable ones skipped)."""
    used: set[int] = set()
    for path in sorted(config_dir.glob("*.toml")) if config_dir.is_dir() else []:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        slots, ngx = data.get("slots", {}), data.get("nginx", {})
        used.update(p for p in (slots.get("blue_port"), slots.get("green_port"))
                    if isinstance(p, int))
        port = listen_port(str(ngx.get("listen", "80")))
        if port:
            used.add(port)
    return used


def _bound(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def pick_ports(config_dir: Path, app: str, avoid: set[int]) -> tuple[int, int]:
    """The first two ports from 18001 that no other app names and nothing has bound."""
    taken = ports_in_use(config_dir) | avoid
    mine = config_dir / f"{app}.toml"
    if mine.is_file():  # re-running init for the same app keeps its ports
        taken -= ports_in_use_of(mine)
    free: list[int] = []
    for port in range(FIRST_SLOT_PORT, LAST_SLOT_PORT + 1):
        if port not in taken and not _bound(port):
            free.append(port)
            if len(free) == 2:
                return free[0], free[1]
    raise EnvironmentProblem(f"no two free slot ports between {FIRST_SLOT_PORT} and "
                             f"{LAST_SLOT_PORT}", hint="pass --blue-port and --green-port")


def ports_in_use_of(path: Path) -> set[int]:
    try:
        slots = tomllib.loads(path.read_text()).get("slots", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return set()
    return {p for p in (slots.get("blue_port"), slots.get("green_port")) if isinstance(p, int)}


def resolve(o: InitOptions) -> InitOptions:
    """Fill in what init chooses: free slot ports and the switch mode."""
    from dataclasses import replace

    blue, green = o.blue_port, o.green_port
    if blue is None or green is None:
        given = {p for p in (blue, green) if p is not None}
        b, g = pick_ports(o.root / "etc/zdagent/apps", o.app,
                          given | {p for p in (listen_port(o.listen),) if p})
        blue, green = (b, g) if not given else (blue or b, green or b)
    mode = o.switch_mode or ("njs" if njs_available() else "reload")
    return replace(o, blue_port=blue, green_port=green, switch_mode=mode)


def render_config(o: InitOptions) -> str:
    r = o.root
    if o.source == "image":
        source = f"[source]\nimage = {_q(o.source_value)}\npull = \"missing\""
    elif o.source == "build":
        source = f"[source.build]\ncontext = {_q(o.source_value)}"
    else:
        source = f"[source.git]\nrepo = {_q(o.source_value)}"
    why = ("njs: Nginx's njs module is installed, so switches need no reload and drop "
           "nothing" if o.switch_mode == "njs" else
           "reload: each switch reloads Nginx, which can drop raw keep-alive requests of "
           "every app on it; install libnginx-mod-http-js and use njs")
    return f"""\
# zdagent config for {o.app}, written by `zdagent init`. Reference: `zdagent config example`.
[app]
name = {_q(o.app)}
state_dir = {_q(str(r / 'var/lib/zdagent'))}

{source}

[container]
port = {o.port}
# env_file = "/etc/zdagent/env/{o.app}.env"   # secrets: root-owned, mode 0600

[slots]
blue_port = {o.blue_port}
green_port = {o.green_port}

[health]
path = {_q(o.health_path)}

[nginx]
upstream_file = {_q(str(r / f'etc/nginx/zdagent/{o.app}.upstream.conf'))}
listen = {_q(o.listen)}
server_name = {_q(o.server_name)}
public_url = {_q(public_url(o.listen))}
{_access_log_line(o)}# {why}
switch_mode = {_q(o.switch_mode or "reload")}
{render_tls(o)}"""


def render_tls(o: InitOptions) -> str:
    """The [tls] section of ``init --tls``: certbot's files (under ``root`` when not /), the
    site file that `zdagent tls deployed` completes with the HTTPS server."""
    if o.tls is None:
        return ""
    r = o.root
    name = o.server_name.split()[0]
    lines = ["", "# HTTPS: `zdagent tls issue` obtains the certificate (certbot --webroot);",
             "# certbot's timer renews it, its deploy hook reloads Nginx once.",
             "[tls]", "enabled = true", f"listen = {_q(o.tls.listen)}",
             f"webroot = {_q(str(r / 'var/www/zdagent-acme'))}",
             f"site_file = {_q(str(r / f'etc/nginx/sites-available/zdagent-{o.app}.conf'))}"]
    if o.tls.email:
        lines.append(f"email = {_q(o.tls.email)}")
    if r != Path("/"):
        live = r / "etc/letsencrypt/live" / name
        lines += [f"certificate = {_q(str(live / 'fullchain.pem'))}",
                  f"certificate_key = {_q(str(live / 'privkey.pem'))}",
                  "certbot_command = " + json.dumps(
                      ["certbot", "--config-dir", str(r / "etc/letsencrypt"),
                       "--work-dir", str(r / "var/lib/letsencrypt"),
                       "--logs-dir", str(r / "var/log/letsencrypt")])]
    return "\n".join(lines) + "\n"


def _access_log_line(o: InitOptions) -> str:
    """Under a --root other than /, the access log goes there too (else the default)."""
    if o.root == Path("/"):
        return ""
    return f"access_log = {_q(str(o.root / f'var/log/nginx/zdagent-{o.app}.log'))}\n"


def unit_text(executable: str, group: str = DEFAULT_GROUP) -> str:
    """The unit with ExecStart pointing at zdagentd installed beside ``executable`` and
    the socket handed to ``group``."""
    text = shared_file("zdagent.service").read_text()
    text = text.replace("/usr/local/bin/", str(Path(executable).parent) + "/")
    return text.replace(f"--socket-group {DEFAULT_GROUP}", f"--socket-group {group}")


def git_dropin(repo: str) -> str:
    """Lets the sandboxed daemon (ProtectSystem=strict) fetch into a git source's repo.
    (Git trusts the repo through zdagent's own ``-c safe.directory``: an Environment= line
    per app would be overridden by the next app's drop-in.)"""
    return f"""\
# Written by `zdagent init` for a [source.git] app: `deploy <ref>` fetches into this repo.
[Service]
ReadWritePaths={repo}
"""


def plan(o: InitOptions, executable: str) -> list[Planned]:
    """Every file init would write, rendered and validated; raises before touching disk."""
    if not APP_NAME_RE.fullmatch(o.app):
        raise UsageError(f"invalid app name {o.app!r}",
                         hint="use lowercase letters, digits and '-' (max 40)")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", o.group):
        raise UsageError(f"invalid group name {o.group!r}",
                         hint="a system group name: lowercase letters, digits, '_' and '-'")
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
    planned = [
        Planned(r / f"etc/zdagent/apps/{o.app}.toml", config_text, group_readable=True),
        Planned(site, render_site(cfg)),
        Planned(r / f"etc/nginx/sites-enabled/zdagent-{o.app}.conf", None,
                link=f"../sites-available/zdagent-{o.app}.conf"),
        Planned(cfg.nginx.upstream_file, render_upstream(cfg, None, None), keep_existing=True),
        # Nginx opens it at `nginx -t`: its directory must exist; an existing log is kept.
        Planned(cfg.nginx.access_log or default_access_log(o.app), "", keep_existing=True),
        Planned(unit, unit_text(executable, o.group)),
        Planned(r / "etc/systemd/system/multi-user.target.wants/zdagent.service", None,
                link="/etc/systemd/system/zdagent.service"),
    ]
    if o.source == "git":
        planned.append(Planned(r / f"etc/systemd/system/zdagent.service.d/git-{o.app}.conf",
                               git_dropin(o.source_value)))
    return planned


def _same(p: Planned) -> bool:
    if p.text is None:
        return p.path.is_symlink() and os.readlink(p.path) == p.link
    return p.path.is_file() and p.path.read_text() == p.text


def ensure_group(name: str) -> tuple[int, str | None]:
    """The group's gid, creating it (``groupadd --system``) if missing."""
    try:
        return grp.getgrnam(name).gr_gid, None
    except KeyError:
        pass
    if shutil.which("groupadd") is None or os.geteuid() != 0:
        raise EnvironmentProblem(f"group {name!r} does not exist and cannot be created here",
                                 hint=f"run init as root, or `groupadd --system {name}` first")
    p = subprocess.run(["groupadd", "--system", name], capture_output=True, text=True,
                       check=False, timeout=60)
    if p.returncode != 0:
        raise EnvironmentProblem(f"groupadd {name} failed: {p.stderr.strip()[:200]}",
                                 hint="create the group by hand, then rerun init")
    return grp.getgrnam(name).gr_gid, f"created   group {name} (members may deploy)"


def _own(path: Path, gid: int, mode: int) -> None:
    os.chown(path, 0 if os.geteuid() == 0 else -1, gid)
    os.chmod(path, mode)


def write_group_file(path: Path, text: str, gid: int) -> None:
    """Atomically write a root-owned file the group may read (0640)."""
    atomic_write(path, text, mode=0o640, group=gid)


def write(o: InitOptions, executable: str) -> list[str]:
    """Write the planned files; return one line per file ("wrote", "kept", "unchanged")."""
    o = resolve(o)
    planned = plan(o, executable)
    clashes = [p.path for p in planned
               if (p.path.exists() or p.path.is_symlink()) and not p.keep_existing
               and not _same(p)]
    if clashes and not o.force:
        raise UsageError(f"{clashes[0]} exists" + (f" (and {len(clashes) - 1} more)"
                                                   if len(clashes) > 1 else ""),
                         hint="nothing was written; pass --force to overwrite")
    gid, created = ensure_group(o.group)
    lines = [created] if created else []
    apps_dir = o.root / "etc/zdagent/apps"
    apps_dir.mkdir(parents=True, exist_ok=True)
    _own(apps_dir, gid, 0o750)  # the group lists and reads configs; env files live elsewhere
    for p in planned:
        if p.keep_existing and p.path.exists():
            lines.append(f"kept      {p.path} (live; never overwritten)")
        elif _same(p):
            if p.group_readable:
                _own(p.path, gid, 0o640)
            lines.append(f"unchanged {p.path}")
        elif p.text is None:
            p.path.parent.mkdir(parents=True, exist_ok=True)
            if p.path.is_symlink() or p.path.exists():
                p.path.unlink()
            p.path.symlink_to(p.link or "")
            lines.append(f"linked    {p.path} -> {p.link}")
        elif p.group_readable:
            write_group_file(p.path, p.text, gid)
            lines.append(f"wrote     {p.path} (0640 root:{o.group})")
        else:
            atomic_write(p.path, p.text)
            lines.append(f"wrote     {p.path}")
    lines.append(_gate_log(o.root / GATE_LOG, gid, o.group))
    return lines


def _gate_log(path: Path, gid: int, group: str) -> str:
    """The gate runs as the deploy user: its log must be appendable by the group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    path.touch(exist_ok=True)
    _own(path, gid, 0o660)
    return f"{'kept' if existed else 'wrote':<9} {path} (0660 root:{group})"


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
