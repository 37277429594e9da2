"""``zdagent doctor``: check what operators get wrong, one verdict per line.

Each check is split in two: a small function gathers the facts (Docker, Nginx, sockets,
files) and never raises, and a pure verdict function turns those facts into a ``Result``
(ok / warn / fail + a hint). The verdicts are unit-tested; the gatherers are exercised on
real components by the integration tests. A subject that is missing (Docker down, no Nginx,
no socket) is a verdict, never a traceback.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zdagent import config as config_mod
from zdagent.client import DEFAULT_SOCKET
from zdagent.config import DEFAULT_CONFIG_DIR, AppConfig
from zdagent.errors import ZdError
from zdagent.runbook import with_link

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 1 << 30
MIN_FREE_BYTES = 2 * GIB
MIN_FREE_FRACTION = 0.10
DEFAULT_GROUP = "zdagent"
DEFAULT_PID_FILE = Path("/run/nginx.pid")
NJS_MODULE_NAME = "ngx_http_js_module.so"
NJS_MODULE_DIRS = (Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"),
                   Path("/etc/nginx/modules"), Path("/usr/lib64/nginx/modules"))
UNIT = "etc/systemd/system/zdagent.service"
UNIT_WANTS = "etc/systemd/system/multi-user.target.wants/zdagent.service"
RELOAD_COST = ("each switch reloads Nginx, and raw keep-alive clients of every app on it can "
               "lose a request")


@dataclass(frozen=True)
class Result:
    """One line of the report."""

    check: str
    status: str  # ok | warn | fail
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def exit_code(results: Iterable[Result]) -> int:
    """1 if any check failed, else 0 (warnings do not fail the run)."""
    return 1 if any(r.status == FAIL for r in results) else 0


# --- Docker -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DockerFacts:
    error: str | None = None
    version: str | None = None
    api_version: str | None = None
    live_restore: bool | None = None
    data_root: str | None = None
    # host port -> (container name, its labels) for every running container publishing it
    published: dict[int, tuple[str, dict[str, str]]] = field(default_factory=dict)


def docker_verdict(f: DockerFacts) -> Result:
    if f.error is not None:
        return Result("docker", FAIL, f"cannot reach the Docker engine: {f.error}",
                      with_link("start dockerd (`systemctl start docker`); check DOCKER_HOST "
                                "and access to /var/run/docker.sock", "docker-unreachable"))
    return Result("docker", OK, f"Docker {f.version} reachable (API {f.api_version} "
                                "negotiated)")


def live_restore_verdict(f: DockerFacts) -> Result:
    if f.error is not None:
        return Result("live-restore", WARN, "unknown: Docker is unreachable",
                      "fix the docker check first")
    if f.live_restore:
        return Result("live-restore", OK, "on: a Docker upgrade or restart keeps the apps "
                                          "running")
    return Result("live-restore", WARN, "off: a Docker upgrade or restart stops every app",
                  'add "live-restore": true to /etc/docker/daemon.json, then '
                  "`systemctl reload docker`")


def disk_verdict(path: str, free: int | None, total: int | None, error: str = "") -> Result:
    """Warn below 2 GiB or 10 % free where Docker keeps its images."""
    if free is None or total is None:
        return Result("disk", WARN, f"cannot tell the free space of {path}: {error}",
                      "check `df -h` on Docker's data root")
    text = f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB ({free / max(total, 1):.0%}) " \
           f"on {path}"
    if free < MIN_FREE_BYTES or free < MIN_FREE_FRACTION * total:
        return Result("disk", WARN, f"{text}: a build or pull may fail",
                      with_link("free space: `docker image prune` (unused images), or grow "
                                "the disk", "disk-full"))
    return Result("disk", OK, text)


# --- Nginx ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MasterFacts:
    pid_file: Path
    pid: int | None  # a live master named in the pid file
    other_masters: tuple[int, ...] = ()  # nginx masters running elsewhere


def nginx_running_verdict(f: MasterFacts) -> Result:
    check = f"nginx:{f.pid_file}"
    if f.pid is not None:
        return Result(check, OK, f"running (master pid {f.pid})")
    stopped = f"nginx is not running (no live master in {f.pid_file})"
    if f.other_masters:
        return Result(check, FAIL, f"{stopped}; other nginx masters run (pid "
                                   f"{', '.join(map(str, f.other_masters))})",
                      with_link("start nginx, or point nginx.pid_file at the pid file of "
                                "the master that serves this app", "nginx-down"))
    return Result(check, FAIL, stopped,
                  with_link("start nginx: `systemctl start nginx`", "nginx-down"))


@dataclass(frozen=True)
class NginxDump:
    """``nginx -T``: every file of the config and the modules it loads, or why not."""

    files: frozenset[str] = frozenset()
    modules: tuple[str, ...] = ()
    proxied: frozenset[str] = frozenset()  # names after proxy_pass http://
    error: str | None = None
    denied: bool = False  # could not read the config as this user


_FILE_RE = re.compile(r"^# configuration file (.+):$", re.M)
_MODULE_RE = re.compile(r"^\s*load_module\s+(\S+?);", re.M)
_PROXY_RE = re.compile(r"\bproxy_pass\s+https?://\$?\{?([A-Za-z0-9_]+)")


def parse_dump(text: str) -> NginxDump:
    files = {m.group(1) for m in _FILE_RE.finditer(text)}
    return NginxDump(files=frozenset(files | {os.path.realpath(p) for p in files}),
                     modules=tuple(m.group(1) for m in _MODULE_RE.finditer(text)),
                     proxied=frozenset(m.group(1) for m in _PROXY_RE.finditer(text)))


@dataclass(frozen=True)
class Served:
    """One request through Nginx at the app's verify URL: does the running config route it?"""

    url: str
    header: str | None = None  # X-Zdagent-Upstream, None when absent
    error: str | None = None  # no answer at all


def includes_verdict(app: str, upstream_file: Path, upstream: str, dump: NginxDump,
                     served: Served | None = None) -> Result:
    """The app's upstream file is part of Nginx's config, a site proxies to it, and (when
    Nginx runs) the running master serves it: its answer names an upstream."""
    check = f"nginx-config:{app}"
    if dump.error is not None:
        if dump.denied:
            return Result(check, WARN, f"cannot read Nginx's config as this user: {dump.error}",
                          "run `zdagent doctor` as root")
        return Result(check, FAIL, f"nginx -T failed: {dump.error}",
                      "fix the Nginx config (`nginx -t` shows where)")
    if str(upstream_file) not in dump.files and \
            os.path.realpath(upstream_file) not in dump.files:
        return Result(check, FAIL, f"{upstream_file} is not part of Nginx's config",
                      "install the site block that includes it: `zdagent nginx render --site`")
    if not any(name.startswith(upstream) for name in dump.proxied):
        return Result(check, WARN, f"{upstream_file} is included but no proxy_pass uses "
                                   f"{upstream}",
                      "the site must proxy to it: `zdagent nginx render --site`")
    if served is not None and served.error is not None:
        return Result(check, WARN, f"{upstream_file} is in the config, but nothing answers "
                                   f"{served.url}: {served.error}",
                      "reload Nginx if the site is new (`nginx -t && nginx -s reload`); "
                      "else check nginx.public_url and the site's listen")
    if served is not None and served.header is None:
        return Result(check, WARN, f"{upstream_file} is in the config on disk, but the answer "
                                   f"at {served.url} carries no X-Zdagent-Upstream: the running "
                                   "Nginx has not loaded it",
                      "reload Nginx (`nginx -t && nginx -s reload`)")
    return Result(check, OK, f"includes {upstream_file}"
                  + (f"; {served.url} is served through it" if served else ""))


def njs_module(dump: NginxDump, search: Iterable[Path] = NJS_MODULE_DIRS
               ) -> tuple[Path | None, bool]:
    """(the njs module file, whether Nginx's config loads it)."""
    loaded = [Path(m) for m in dump.modules if Path(m).name == NJS_MODULE_NAME]
    for path in [*loaded, *(d / NJS_MODULE_NAME for d in search)]:
        if path.is_file():
            return path, bool(loaded)
    return None, bool(loaded)


def njs_verdict(module: Path | None, loaded: bool, njs_apps: list[str],
                dump_error: str | None = None, load_error: str | None = None) -> Result:
    """``dump_error``: ``nginx -T`` failed, so whether Nginx loads the module is unknown;
    ``load_error``: why a test config that loads the module fails."""
    users = f"used by {', '.join(njs_apps)}" if njs_apps else "used by no app"
    if dump_error is not None:
        found = f"installed ({module})" if module else "not installed"
        return Result("njs", FAIL if njs_apps and not module else WARN,
                      f"module {found}, {users}; whether Nginx loads it is unknown: nginx -T "
                      f"failed: {dump_error}",
                      "fix the Nginx config or install nginx" if module else
                      "apt-get install libnginx-mod-http-js")
    if module is not None and loaded:
        return Result("njs", OK, f"module loaded ({module}), {users}")
    if module is not None and load_error is not None:
        return Result("njs", FAIL if njs_apps else WARN,
                      f"module installed ({module}) but this nginx cannot load it, {users}: "
                      f"{load_error}",
                      "install the libnginx-mod-http-js that matches the installed nginx")
    if module is not None:
        return Result("njs", FAIL if njs_apps else WARN,
                      f"module installed ({module}) and loadable, but not loaded by Nginx, "
                      f"{users}",
                      f"add `load_module {module};` at the top of nginx.conf (Debian: "
                      "/etc/nginx/modules-enabled/50-mod-http-js.conf)")
    return Result("njs", FAIL if njs_apps else WARN, f"module not installed, {users}: "
                  + ("those apps cannot switch" if njs_apps else f"reload mode: {RELOAD_COST}"),
                  "apt-get install libnginx-mod-http-js")


# --- slot ports -------------------------------------------------------------------------

@dataclass(frozen=True)
class PortFacts:
    port: int
    free: bool
    container: tuple[str, dict[str, str]] | None = None  # a running container publishing it
    process: str | None = None  # "name (pid N)" of a listener, when known


def port_verdict(app: str, slot: str, f: PortFacts) -> Result:
    """Free, or held by this app's own labelled container for that slot; anything else fails."""
    check = f"port:{app}/{slot}"
    where = f"127.0.0.1:{f.port}"
    if f.container is not None:
        name, labels = f.container
        if labels.get("zdagent.app") == app and labels.get("zdagent.slot") == slot:
            return Result(check, OK, f"{where} is ours ({name})")
        owner = (f"app {labels['zdagent.app']} slot {labels.get('zdagent.slot', '?')}"
                 if "zdagent.app" in labels else "not a zdagent slot")
        return Result(check, FAIL, f"{where} is published by container {name} ({owner})",
                      f"change slots.{slot}_port, or stop that container")
    if f.free:
        return Result(check, OK, f"{where} is free")
    holder = f.process or "another process"
    return Result(check, FAIL, f"{where} is held by {holder}, not by {app}-{slot}",
                  f"stop it, or change slots.{slot}_port in the app's config")


# --- swarm ------------------------------------------------------------------------------

EPHEMERAL = (32768, 60999)  # Linux's default ephemeral port range


@dataclass(frozen=True)
class SwarmFacts:
    node_state: str | None  # active | inactive | pending | error | locked; None: unknown
    manager: bool
    ipvs: bool  # the kernel can do Swarm's routing mesh
    firewall: str | None  # `iptables -S DOCKER-USER`; None when it cannot be read
    error: str | None = None
    nodes: int | None = None  # nodes ready to run tasks (a manager knows)
    # Where Docker picks a dynamic host port (task-ports): net.ipv4.ip_local_port_range
    ephemeral: tuple[int, int] = EPHEMERAL


PORT_OPTIONS = ("--dport", "--dports", "--destination-port", "--destination-ports",
                "--ctorigdstport")
# Options that say which packets of *every* source a rule is about (not who sends them).
NEUTRAL_OPTIONS = ("-p", "--protocol", "-m", "--match", "--ctdir", "-j", *PORT_OPTIONS)


def _rule_options(line: str) -> list[tuple[bool, str, list[str]]]:
    """One ``iptables -S`` rule as (negated, option, values), in order."""
    try:
        words = shlex.split(line)[2:]  # past "-A <chain>"
    except ValueError:
        return []
    options: list[tuple[bool, str, list[str]]] = []
    negated = False
    for word in words:
        if word == "!":
            negated = True
        elif word.startswith("-"):
            options.append((negated, word, []))
            negated = False
        elif options:
            options[-1][2].append(word)
    return options


def _in_ports(spec: str, port: int) -> bool:
    """``port`` in an iptables port spec: ``80``, ``80:90``, ``80,443,8000:8010``."""
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        if lo.isdigit() and int(lo) <= port <= int(hi if hi.isdigit() else lo):
            return True
    return False


def _rule_covers(options: list[tuple[bool, str, list[str]]], port: int) -> bool:
    """The rule matches TCP packets to ``port`` (some of them, by other criteria)."""
    for negated, option, values in options:
        value = values[0] if values else ""
        if option in ("-p", "--protocol") and (value in ("tcp", "6", "all")) == negated:
            return False
        if option in PORT_OPTIONS and _in_ports(value, port) == negated:
            return False
    return True


def firewalled(rules: str, port: int) -> bool:
    """DOCKER-USER drops (or rejects) TCP to ``port`` before anything lets it through: a
    DROP/REJECT rule covering it that comes before an ACCEPT/RETURN for every source
    (Docker's own last rule is an unconditional RETURN: a DROP appended after it is dead).
    Negations (``! --dport``) and other protocols do not count."""
    for line in rules.splitlines():
        if not line.startswith("-A "):
            continue
        options = _rule_options(line)
        target = next((v[0] for _, o, v in options if o in ("-j", "--jump") and v), "")
        if not _rule_covers(options, port):
            continue
        if target in ("DROP", "REJECT"):
            return True
        if target in ("ACCEPT", "RETURN") and \
                all(o in NEUTRAL_OPTIONS for _, o, _ in options):
            return False
    return False


def swarm_verdicts(cfg: AppConfig, f: SwarmFacts) -> list[Result]:
    """A swarm app needs a manager, a mesh that works (ingress), and firewalled slot ports:
    Swarm publishes on every interface of every node and cannot bind 127.0.0.1."""
    check = f"swarm:{cfg.name}"
    if f.error is not None or f.node_state != "active":
        return [Result(check, FAIL, f"app.backend = \"swarm\" but this engine is not in an "
                                    f"active swarm ({f.error or f.node_state})",
                       "`docker swarm init --advertise-addr <private IP>` (docs/scaling.md)")]
    out = [Result(check, OK, "this engine is a swarm manager") if f.manager else
           Result(check, FAIL, "this node is a swarm worker: services are managed from a "
                               "manager", "run zdagent on a manager node")]
    if cfg.swarm.publish_mode == "ingress" and not f.ipvs:
        out.append(Result(f"{check}/mesh", FAIL, "publish_mode = \"ingress\" needs the "
                          "routing mesh, and this kernel has no IPVS (no /proc/net/ip_vs, no "
                          "ip_vs module)",
                          "use a kernel with the ip_vs module; or set swarm.publish_mode = "
                          "\"task-ports\" (several tasks on this node) or \"host\" (one task "
                          "per node)"))
    if cfg.swarm.publish_mode == "host" and f.nodes is not None and \
            cfg.swarm.replicas > f.nodes:
        out.append(Result(f"{check}/placement", FAIL, f"publish_mode = \"host\" runs one task "
                          f"per node: replicas = {cfg.swarm.replicas} needs as many nodes, the "
                          f"swarm has {f.nodes} ready", "add nodes (docs/scaling.md) or lower "
                          "swarm.replicas; a deploy would wait for tasks that cannot be placed"))
    if cfg.swarm.task_ports:  # Docker picks each task's port from the ephemeral range
        ports = list(f.ephemeral)
        exposure = (f"task ports are picked from {ports[0]}-{ports[1]} "
                    "(net.ipv4.ip_local_port_range) and published on every interface of "
                    "this node (Swarm cannot bind them to 127.0.0.1)")
    else:
        ports = [cfg.slot_port(s) for s in ("blue", "green")]
        exposure = (f"slot ports {'/'.join(map(str, ports))} are published on every "
                    "interface (Swarm cannot bind them to 127.0.0.1)")
    open_ = [p for p in ports if f.firewall is None or not firewalled(f.firewall, p)]
    if not open_:
        out.append(Result(f"{check}/exposure", OK,
                          f"{exposure}, and DOCKER-USER drops them from outside"))
    else:
        seen = "cannot read the DOCKER-USER chain" if f.firewall is None else \
            f"no DROP rule for {'/'.join(map(str, open_))} in DOCKER-USER"
        spans = [f"{min(ports)}:{max(ports)}"] if max(ports) - min(ports) == 1 or \
            cfg.swarm.task_ports else [str(p) for p in open_]
        rules = " && ".join(f"iptables -I DOCKER-USER -i <public interface> -p tcp -m conntrack "
                            f"--ctorigdstport {span} --ctdir ORIGINAL -j DROP" for span in spans)
        out.append(Result(f"{check}/exposure", WARN, f"{exposure}; {seen}",
                          f"{rules} (on every node; docs/scaling.md)"))
    return out


def swarm_facts() -> SwarmFacts:
    import docker

    from zdagent.services import no_ipvs  # with docker: only when a swarm app is checked

    ipvs = not no_ipvs()  # loaded, or a module Docker loads when the mesh first needs it
    try:
        rules: str | None = subprocess.run(
            ["iptables", "-S", "DOCKER-USER"], capture_output=True, text=True, timeout=10,
            check=True).stdout
    except (OSError, subprocess.SubprocessError):
        rules = None
    try:
        client = docker.from_env(timeout=10)
        try:
            sw = client.info().get("Swarm", {})
            nodes = None
            if sw.get("ControlAvailable"):
                nodes = sum(n.attrs["Status"]["State"] == "ready" and
                            n.attrs["Spec"].get("Availability") == "active"
                            for n in client.nodes.list())
        finally:
            client.close()
    except Exception as e:
        return SwarmFacts(None, False, ipvs, rules, _short(e))
    return SwarmFacts(sw.get("LocalNodeState"), bool(sw.get("ControlAvailable")), ipvs, rules,
                      nodes=nodes, ephemeral=_ephemeral_range())


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range: Docker's dynamic host ports come from it."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return EPHEMERAL


# --- control socket ---------------------------------------------------------------------

@dataclass(frozen=True)
class SocketFacts:
    path: Path
    group: str  # the configured group
    group_exists: bool
    exists: bool
    is_socket: bool = False
    mode: int = 0
    owner_group: str | None = None
    reach_error: str | None = None  # None: the daemon answered
    denied: bool = False
    user: str = ""


def socket_verdicts(f: SocketFacts) -> list[Result]:
    out = [Result("socket-group", OK, f"group {f.group} exists")
           if f.group_exists else
           Result("socket-group", FAIL if f.exists else WARN,
                  f"group {f.group} does not exist: no non-root user can deploy",
                  f"`groupadd --system {f.group}` and add the deploy user to it")]
    if not f.exists:
        out.append(Result("socket", WARN, f"{f.path} does not exist: the daemon is not running "
                                          "(no watchdog; commands run in-process)",
                          "`systemctl start zdagent`"))
        return out
    if not f.is_socket:
        out.append(Result("socket", FAIL, f"{f.path} is not a socket",
                          "remove it and restart the daemon"))
        return out
    if f.mode & stat.S_IWOTH:
        out.append(Result("socket", FAIL, f"{f.path} is world-writable "
                                          f"({stat.filemode(f.mode)}): anyone can deploy",
                          "restart the daemon (it creates the socket 0660)"))
        return out
    if f.owner_group != f.group:
        out.append(Result("socket", WARN, f"{f.path} belongs to group {f.owner_group}, not "
                                          f"{f.group}: members of {f.group} cannot deploy",
                          f"run the daemon with --socket-group {f.group}"))
        return out
    if f.reach_error is not None:
        if f.denied:
            out.append(Result("socket", FAIL, f"{f.user} cannot reach {f.path}: "
                                              f"{f.reach_error}",
                              f"add {f.user} to group {f.group} (`usermod -aG {f.group} "
                              f"{f.user}`, then log in again)"))
        else:
            out.append(Result("socket", FAIL, f"{f.path} exists but no daemon answers: "
                                              f"{f.reach_error}",
                              "`systemctl restart zdagent`; see `journalctl -u zdagent`"))
        return out
    out.append(Result("socket", OK, f"{f.path} ({stat.filemode(f.mode)}, group {f.group}) "
                                    f"answers {f.user}"))
    return out


# --- state dir --------------------------------------------------------------------------

@dataclass(frozen=True)
class Who:
    """A user: uid and every group id (primary included)."""

    name: str
    uid: int
    gids: frozenset[int]


def writable_by(mode: int, uid: int, gid: int, who: Who) -> bool:
    """Can ``who`` create files in a directory with this mode and ownership?"""
    if who.uid == 0:
        return True
    if who.uid == uid:
        return bool(mode & stat.S_IWUSR and mode & stat.S_IXUSR)
    if gid in who.gids:
        return bool(mode & stat.S_IWGRP and mode & stat.S_IXGRP)
    return bool(mode & stat.S_IWOTH and mode & stat.S_IXOTH)


def state_dir_verdict(path: Path, who: Who | None, who_name: str, existing: Path | None,
                      mode: int, uid: int, gid: int, read_only: bool) -> Result:
    """``existing``: ``path`` or its nearest existing parent (then ``path`` will be created)."""
    check = f"state-dir:{path}"
    if who is None:
        return Result(check, FAIL, f"the daemon's user {who_name} does not exist",
                      "fix User= in zdagent.service, or create the user")
    if existing is None:
        return Result(check, FAIL, f"{path}: no existing parent", "create it")
    if read_only:
        return Result(check, FAIL, f"{existing} is on a read-only file system",
                      "put app.state_dir on a writable disk")
    if not writable_by(mode, uid, gid, who):
        return Result(check, FAIL, f"{existing} is not writable by {who.name} (the daemon's "
                                   "user)",
                      f"`chown {who.name} {existing}` or change app.state_dir")
    if existing != path:
        return Result(check, OK, f"{path} will be created by {who.name} (the daemon's user)")
    return Result(check, OK, f"writable by {who.name} (the daemon's user)")


# --- systemd unit -----------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """What doctor reads from the installed unit."""

    path: Path
    exists: bool
    enabled: bool
    user: str = "root"
    socket_group: str | None = None
    socket: str | None = None
    config_dir: str | None = None


def parse_unit(text: str) -> dict[str, str | None]:
    user, start = "root", ""
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "User" and value:
            user = value.strip()
        elif key == "ExecStart":
            start = value
    args = start.split()
    opts = {o: args[args.index(o) + 1] for o in ("--socket-group", "--socket", "--config-dir")
            if o in args[:-1]}
    return {"user": user, **{k.lstrip("-"): v for k, v in opts.items()}}


def read_unit(root: Path) -> Unit:
    path, wants = root / UNIT, root / UNIT_WANTS
    enabled = wants.is_symlink() or wants.exists()
    try:
        found = parse_unit(path.read_text())
    except OSError:
        return Unit(path, exists=False, enabled=enabled)
    return Unit(path, exists=True, enabled=enabled, user=found["user"] or "root",
                socket_group=found.get("socket-group"), socket=found.get("socket"),
                config_dir=found.get("config-dir"))


def unit_verdict(u: Unit) -> Result:
    if not u.exists:
        return Result("systemd", WARN, f"{u.path} is not installed: no daemon, no watchdog",
                      "`zdagent init` installs it, or copy systemd/zdagent.service there")
    if not u.enabled:
        return Result("systemd", WARN, f"{u.path} is installed but not enabled: the daemon "
                                       "does not start at boot",
                      "`systemctl enable --now zdagent`")
    return Result("systemd", OK, f"{u.path} installed and enabled (runs as {u.user})")


# --- apps -------------------------------------------------------------------------------

def app_verdict(name: str, cfg: AppConfig | None, error: str | None,
                njs_loaded: bool | None) -> Result:
    """Config valid, and which switch mode is used and why (``njs_loaded`` None: unknown)."""
    check = f"app:{name}"
    if cfg is None:
        return Result(check, FAIL, f"invalid config: {error}",
                      "fix it and run `zdagent config check`; the daemon skips this app")
    if njs_loaded is None:
        return Result(check, WARN, f"config valid; switch mode {cfg.nginx.switch_mode}; "
                                   "whether Nginx loads the njs module is unknown",
                      f"see the nginx-config:{name} line")
    if cfg.nginx.switch_mode == "njs":
        if njs_loaded:
            return Result(check, OK, "config valid; switch mode njs (reload-free: the njs "
                                     "module is loaded)")
        return Result(check, FAIL, "config valid; switch mode njs, but Nginx does not load "
                                   "the njs module: switches will fail",
                      'install libnginx-mod-http-js, or set nginx.switch_mode = "reload"')
    if njs_loaded:
        return Result(check, WARN, f"config valid; switch mode reload: {RELOAD_COST}",
                      'the njs module is loaded: set nginx.switch_mode = "njs" for '
                      "zero drops")
    return Result(check, OK, f"config valid; switch mode reload (Nginx does not load the njs "
                             f"module: {RELOAD_COST})")


def no_apps_verdict(directory: Path, exists: bool) -> Result:
    if not exists:
        return Result("apps", FAIL, f"config directory {directory} does not exist",
                      "`zdagent init APP` writes the first app's config")
    return Result("apps", WARN, f"no app configs (*.toml) in {directory}",
                  "`zdagent init APP` writes one")


# --- gathering (I/O; never raises) ------------------------------------------------------

def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def docker_facts() -> DockerFacts:
    import docker

    try:
        client = docker.from_env(timeout=10)
    except Exception as e:  # any failure to reach the engine is the verdict itself
        return DockerFacts(error=_short(e))
    try:
        info = client.info()
        version = client.version()
        published: dict[int, tuple[str, dict[str, str]]] = {}
        # One list call (no per-container inspect that a removal in between would break).
        for c in client.api.containers():
            name = (c.get("Names") or ["?"])[0].lstrip("/")
            for p in c.get("Ports") or []:
                if p.get("PublicPort"):
                    published[int(p["PublicPort"])] = (name, dict(c.get("Labels") or {}))
        return DockerFacts(version=version.get("Version"), api_version=client.api.api_version,
                           live_restore=bool(info.get("LiveRestoreEnabled")),
                           data_root=info.get("DockerRootDir"), published=published)
    except Exception as e:
        return DockerFacts(error=_short(e))
    finally:
        client.close()


def disk_result(data_root: str | None) -> Result:
    """Free space on Docker's data root (its default when Docker cannot say)."""
    path = data_root or "/var/lib/docker"
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as e:
        return disk_verdict(path, None, None, _short(e))
    return disk_verdict(path, usage.free, usage.total)


def master_facts(pid_file: Path) -> MasterFacts:
    import psutil

    pid = None
    try:
        candidate = int(pid_file.read_text().strip())
        proc = psutil.Process(candidate)
        if proc.status() != psutil.STATUS_ZOMBIE and "nginx" in proc.name():
            pid = candidate
    except (OSError, ValueError, psutil.Error):
        pass
    others: list[int] = []
    if pid is None:
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if cmd.startswith("nginx: master process"):
                others.append(p.pid)
    return MasterFacts(pid_file, pid, tuple(others[:5]))


def dump_argv(test_command: tuple[str, ...]) -> list[str]:
    """The app's test command turned into ``nginx -T`` (same binary, prefix and conf)."""
    argv = list(test_command)
    if "-t" in argv:
        argv[argv.index("-t")] = "-T"
    else:
        argv.append("-T")
    return argv


def nginx_dump(test_command: tuple[str, ...]) -> NginxDump:
    argv = dump_argv(test_command)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        return NginxDump(error=f"command not found: {argv[0]}")
    except (OSError, subprocess.TimeoutExpired) as e:
        return NginxDump(error=_short(e))
    if p.returncode != 0:
        lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
        important = [ln for ln in lines if "[emerg]" in ln] or lines or [f"exit {p.returncode}"]
        return NginxDump(error=important[0][:300], denied="Permission denied" in p.stderr)
    return parse_dump(p.stdout)


def served(cfg: AppConfig) -> Served:
    """One GET through Nginx at the verify URL, with the app's server name as Host."""
    import httpx

    from zdagent.nginx import UPSTREAM_HEADER
    from zdagent.probe import sni, tls_context

    headers = {"Connection": "close", "User-Agent": "zdagent-doctor", **cfg.verify_headers}
    try:
        with httpx.Client(verify=tls_context()) as client:
            r = client.get(cfg.verify_url, headers=headers, timeout=3,
                           extensions=sni(cfg.verify_url, cfg.verify_headers))
    except httpx.HTTPError as e:
        return Served(cfg.verify_url, error=_short(e) or type(e).__name__)
    return Served(cfg.verify_url, header=r.headers.get(UPSTREAM_HEADER))


def njs_load_error(nginx: str, module: Path) -> str | None:
    """Can this nginx binary load the module? ``nginx -t`` on a scratch config that does."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="zdagent-doctor-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(f"load_module {module};\npid {tmp}/nginx.pid;\n"
                        f"error_log {tmp}/error.log;\nevents {{}}\n")
        try:
            p = subprocess.run([nginx, "-t", "-p", tmp, "-c", str(conf), "-e",
                                f"{tmp}/error.log"], capture_output=True, text=True,
                               timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return _short(e)
    if p.returncode == 0:
        return None
    lines = [ln.strip() for ln in p.stderr.splitlines() if "[emerg]" in ln]
    return (lines or [f"nginx -t exit {p.returncode}"])[0][:300]


def port_facts(port: int, docker: DockerFacts) -> PortFacts:
    if port in docker.published:
        return PortFacts(port, free=False, container=docker.published[port])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return PortFacts(port, free=True)
        except OSError:
            pass
    return PortFacts(port, free=False, process=_listener(port))


def _listener(port: int) -> str | None:
    import psutil

    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                try:
                    return f"{psutil.Process(c.pid).name()} (pid {c.pid})"
                except psutil.Error:
                    return f"pid {c.pid}"
    except (psutil.Error, OSError):
        pass
    return None


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def socket_facts(path: Path, group: str) -> SocketFacts:
    try:
        grp.getgrnam(group)
        group_exists = True
    except KeyError:
        group_exists = False
    user = current_user()
    try:
        st = path.stat()
    except PermissionError as e:
        return SocketFacts(path, group, group_exists, exists=True, is_socket=True,
                           owner_group=group, reach_error=_short(e), denied=True, user=user)
    except OSError:
        return SocketFacts(path, group, group_exists, exists=False, user=user)
    try:
        owner = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        owner = str(st.st_gid)
    error, denied = None, False
    if stat.S_ISSOCK(st.st_mode):
        error, denied = _reach(path)
    return SocketFacts(path, group, group_exists, exists=True,
                       is_socket=stat.S_ISSOCK(st.st_mode), mode=st.st_mode, owner_group=owner,
                       reach_error=error, denied=denied, user=user)


def _reach(path: Path) -> tuple[str | None, bool]:
    from zdagent.client import DaemonClient

    try:
        DaemonClient(str(path), timeout=5).get("/v1/status")
        return None, False
    except PermissionError as e:
        return _short(e), True
    except (OSError, ValueError, ZdError) as e:
        return _short(e) or type(e).__name__, False


def who(name: str) -> Who | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
    return Who(name, pw.pw_uid, frozenset(gids))


def state_dir_result(path: Path, user: str) -> Result:
    existing: Path | None = path
    mode = uid = gid = 0
    read_only = False
    try:
        while existing is not None and not existing.exists():
            existing = None if existing == existing.parent else existing.parent
        if existing is not None:
            st = existing.stat()
            mode, uid, gid = st.st_mode, st.st_uid, st.st_gid
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except PermissionError as e:
        return Result(f"state-dir:{path}", WARN, f"cannot inspect {path} as {current_user()}: "
                                                 f"{_short(e)}", "run `zdagent doctor` as root")
    return state_dir_verdict(path, who(user), user, existing, mode, uid, gid, read_only)


@dataclass(frozen=True)
class Apps:
    configs: dict[str, AppConfig]
    errors: dict[str, str]


def load_apps(directory: Path) -> Apps:
    """Every app in the directory; the cross-app checks too where config.load_app_dir exists."""
    load_dir = getattr(config_mod, "load_app_dir", None)
    if load_dir is not None:
        loaded = load_dir(directory)
        return Apps(dict(loaded.apps), dict(loaded.errors))
    configs: dict[str, AppConfig] = {}
    errors: dict[str, str] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            configs[path.stem] = config_mod.load_config(path)
        except ZdError as e:
            errors[path.stem] = e.message
    return Apps(configs, errors)


# --- the run ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    config_dir: Path | None = None
    socket: Path | None = None
    socket_group: str | None = None
    root: Path = Path("/")


def _guarded(name: str, fn: Callable[[], list[Result]]) -> list[Result]:
    """A check that breaks reports a failed line (a bug in doctor), never a traceback."""
    try:
        return fn()
    except Exception as e:
        return [_bug(name, e)]


def _bug(name: str, e: Exception) -> Result:
    return Result(name, FAIL, f"the check itself failed: {type(e).__name__}: {_short(e)}",
                  "this is a bug in zdagent doctor")


def run(opts: Options) -> list[Result]:
    """Every check, in the order an operator would fix them."""
    unit = read_unit(opts.root)
    directory = opts.config_dir or (Path(unit.config_dir) if unit.config_dir
                                    else DEFAULT_CONFIG_DIR)
    results: list[Result] = []
    docker = DockerFacts(error="not checked")

    def docker_checks() -> list[Result]:
        nonlocal docker
        docker = docker_facts()
        return [docker_verdict(docker), live_restore_verdict(docker),
                disk_result(docker.data_root)]

    results += _guarded("docker", docker_checks)
    apps, problems = _apps(directory)
    results += problems
    njs_loaded: dict[str, bool | None] = {}
    results += _guarded("nginx", lambda: _nginx_checks(apps, njs_loaded))
    results += [app_verdict(cfg.name, cfg, None, njs_loaded.get(cfg.name))
                for _, cfg in sorted(apps.configs.items())]
    results += [app_verdict(stem, None, error, False)
                for stem, error in sorted(apps.errors.items())]
    for name, cfg in sorted(apps.configs.items()):
        if cfg.backend == "swarm":  # Swarm holds the slot ports: the swarm checks say more
            results += _guarded(f"swarm:{name}",
                                lambda cfg=cfg: swarm_verdicts(cfg, swarm_facts()))
            continue
        results += _guarded(f"port:{name}", lambda cfg=cfg: [
            port_verdict(cfg.name, slot, port_facts(cfg.slot_port(slot), docker))
            for slot in ("blue", "green")])
    group = opts.socket_group or unit.socket_group or DEFAULT_GROUP
    path = opts.socket or Path(unit.socket or DEFAULT_SOCKET)
    results += _guarded("socket", lambda: socket_verdicts(socket_facts(path, group)))
    for state_dir in sorted({cfg.state_dir for cfg in apps.configs.values()}):
        results += _guarded(f"state-dir:{state_dir}",
                            lambda d=state_dir: [state_dir_result(d, unit.user)])
    results.append(unit_verdict(unit))
    return results


def _apps(directory: Path) -> tuple[Apps, list[Result]]:
    """The app configs, or the line saying why there are none."""
    if not directory.is_dir():
        return Apps({}, {}), [no_apps_verdict(directory, exists=False)]
    try:
        apps = load_apps(directory)
    except ZdError as e:
        return Apps({}, {}), [Result("apps", FAIL, e.message, e.hint)]
    except Exception as e:
        return Apps({}, {}), [_bug("apps", e)]
    if not apps.configs and not apps.errors:
        return apps, [no_apps_verdict(directory, exists=True)]
    return apps, []


def _nginx_checks(apps: Apps, njs_loaded: dict[str, bool | None]) -> list[Result]:
    """Masters running, each app's files in the config, njs; fills ``njs_loaded`` per app."""
    out: list[Result] = []
    configs = sorted(apps.configs.values(), key=lambda c: c.name)
    for pid_file in sorted({c.nginx.pid_file for c in configs} or {DEFAULT_PID_FILE}):
        out.append(nginx_running_verdict(master_facts(pid_file)))
    dumps: dict[tuple[str, ...], NginxDump] = {}
    for cfg in configs or [None]:
        command = cfg.nginx.test_command if cfg else ("nginx", "-t")
        if command not in dumps:
            dumps[command] = nginx_dump(command)
    loaded: dict[tuple[str, ...], bool] = {}
    module: Path | None = None
    for command, dump in dumps.items():
        found, is_loaded = njs_module(dump)
        module = module or found
        loaded[command] = is_loaded
    from zdagent.config import pool_variable, upstream_name

    running = {r.check for r in out if r.status == OK}
    for cfg in configs:
        dump = dumps[cfg.nginx.test_command]
        probe = served(cfg) if f"nginx:{cfg.nginx.pid_file}" in running else None
        proxied = (pool_variable(cfg.name) if cfg.nginx.switch_mode == "njs"
                   else upstream_name(cfg.name))  # what the site's proxy_pass names
        out.append(includes_verdict(cfg.name, cfg.nginx.upstream_file, proxied, dump, probe))
    njs_apps = [c.name for c in configs if c.nginx.switch_mode == "njs"]
    errors = [dump.error for dump in dumps.values() if dump.error is not None]
    unknown = errors[0] if len(errors) == len(dumps) else None
    load_error = None
    if module is not None and unknown is None and not any(loaded.values()):
        load_error = njs_load_error(configs[0].nginx.test_command[0] if configs else "nginx",
                                    module)
    out.append(njs_verdict(module, any(loaded.values()), njs_apps, unknown, load_error))
    njs_loaded.update({c.name: None if dumps[c.nginx.test_command].error is not None
                       else loaded[c.nginx.test_command] for c in configs})
    return out


def render_line(r: Result) -> str:
    line = f"{r.status:<4}  {r.check}: {r.message}"
    return f"{line}  hint: {r.hint}" if r.hint and r.status != OK else line


def as_json(results: list[Result]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in results]
