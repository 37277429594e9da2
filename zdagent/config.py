"""Typed, frozen app config loaded once from TOML.

Validation happens here and only here: every error names the file and the key
(``web.toml: health.passes: must be an integer >= 1, got 0``), and the rest of the code trusts
the dataclasses it gets.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import posixpath
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from zdagent.errors import ConfigError
from zdagent.notifications.events import check_events, expand

DEFAULT_CONFIG_PATH = Path("/etc/zdagent/zdagent.toml")
CONFIG_ENV = "ZDAGENT_CONFIG"
DEFAULT_CONFIG_DIR = Path("/etc/zdagent/apps")
CONFIG_DIR_ENV = "ZDAGENT_CONFIG_DIR"

APP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# Docker's own tag grammar; versions become image tags and container labels.
VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
IMAGE_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._/:-]{0,254}$")
LISTEN_RE = re.compile(r"^(?:(\[[0-9a-fA-F:]+\]|[0-9.]+|\*|localhost):)?(\d{1,5})$")
# Docker's own grammar for volume names; host and container paths take a conservative set.
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")
MOUNT_PATH_RE = re.compile(r"^/[A-Za-z0-9_.@+=~/-]*$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
LOG_OPTION_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
LOG_DRIVER_RE = re.compile(r"^[a-z0-9][a-z0-9_./:-]{0,127}$")
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"
USER_RE = re.compile(rf"^{_NAME}(?::{_NAME})?$")
MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)b?$", re.IGNORECASE)
MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MIN_MEMORY = 6 * 1024**2  # Docker refuses a smaller limit
# The first line of every upstream file zdagent writes (and of the bundled templates): the
# only proof that a file at nginx.upstream_file is ours to overwrite.
MANAGED_RE = re.compile(r'^# Managed by zdagent for app "([a-z0-9-]+)"')


def managed_header(app: str) -> str:
    """The header line that marks a file as written by zdagent for ``app``."""
    return f'# Managed by zdagent for app "{app}"'


@dataclass(frozen=True)
class BuildSource:
    """Build the image from a local context; the version becomes the tag."""

    context: Path
    dockerfile: str
    tag: str
    args: Mapping[str, str]


@dataclass(frozen=True)
class GitSource:
    """Build from a git repository on this host; ``deploy <ref>`` builds that commit."""

    repo: Path
    subdir: str
    dockerfile: str
    tag: str
    args: Mapping[str, str]
    fetch: bool


@dataclass(frozen=True)
class ImageSource:
    """Use a pre-built image ``<image>:<version>``, pulled per ``pull`` policy."""

    image: str
    pull: str  # always | missing | never


@dataclass(frozen=True)
class Volume:
    """One ``container.volumes`` entry: a named volume or an absolute host path."""

    source: str
    target: str
    mode: str  # ro | rw

    @property
    def named(self) -> bool:
        return not self.source.startswith("/")

    @property
    def bind(self) -> str:
        """Docker's ``source:target:mode`` form (the SDK's ``volumes`` list)."""
        return f"{self.source}:{self.target}:{self.mode}"


@dataclass(frozen=True)
class ContainerConfig:
    port: int
    env: Mapping[str, str]
    env_file: Path | None
    stop_timeout: int
    network: str | None
    volumes: tuple[Volume, ...] = ()
    command: tuple[str, ...] = ()  # empty: the image's CMD
    entrypoint: tuple[str, ...] = ()  # empty: the image's ENTRYPOINT
    memory: int | None = None  # bytes
    cpus: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    log_driver: str | None = None  # None: the daemon's default driver
    log_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SlotsConfig:
    blue_port: int
    green_port: int
    after_switch: str  # standby | stop
    drain_seconds: float


@dataclass(frozen=True)
class HealthConfig:
    path: str
    statuses: tuple[int, ...]
    timeout: float
    interval: float
    startup_deadline: float
    passes: int
    expect_version: str  # none | body | header:<Name>

    @property
    def version_header(self) -> str | None:
        return self.expect_version.split(":", 1)[1] if ":" in self.expect_version else None


@dataclass(frozen=True)
class NginxConfig:
    upstream_file: Path
    upstream_template: Path | None
    site_template: Path | None
    test_command: tuple[str, ...]
    reload_command: tuple[str, ...]
    pid_file: Path
    public_url: str
    verify_path: str
    listen: str
    server_name: str
    standby_as_backup: bool
    reload_timeout: float
    switch_mode: str  # reload | njs
    access_log: Path | None = None  # Nginx's JSON access log of the app (zdagent.traffic)

    @property
    def active_file(self) -> Path:
        """njs mode: the file naming the live upstream group, read on every request.

        Derived from the whole file name, so distinct upstream files never share one.
        """
        return self.upstream_file.with_name(self.upstream_file.name + ".active")

    @property
    def listen_port(self) -> int:
        return listen_port_of(self.listen)

    @property
    def verify_host(self) -> str | None:
        """The ``Host`` to send through Nginx: the first plain ``server_name`` (not ``_``,
        not a wildcard), so the app's own server block answers on a shared port."""
        for name in self.server_name.split():
            if name != "_" and "*" not in name and not name.startswith("~"):
                return name.lstrip(".") or None
        return None


@dataclass(frozen=True)
class TlsConfig:
    """HTTPS for the app's site: certbot (webroot) obtains the certificate (see tls.py)."""

    enabled: bool
    listen: str
    domains: tuple[str, ...]  # the plain names of nginx.server_name; the first names the cert
    certificate: Path
    certificate_key: Path
    webroot: Path
    email: str
    acme_server: str
    certbot_command: tuple[str, ...]
    site_file: Path | None

    @property
    def listen_port(self) -> int:
        return listen_port_of(self.listen)

    @property
    def ready(self) -> bool:
        """HTTPS is on and its certificate exists: only then is the HTTPS server rendered
        (Nginx refuses a config naming missing files) and are switches verified over it."""
        return self.enabled and self.certificate.is_file() and self.certificate_key.is_file()


@dataclass(frozen=True)
class WatchdogConfig:
    """The daemon's watch on the live slot (see docs in example.toml)."""

    enabled: bool
    interval: float
    failures: int
    cooldown: float
    max_reverts: int
    window: float


@dataclass(frozen=True)
class HooksConfig:
    """What runs around a deploy (zdagent.hooks): argv lists, never a shell; () = none."""

    release: tuple[str, ...] = ()          # in a one-off container of the candidate image
    release_timeout: float = 300.0
    pre_deploy: tuple[str, ...] = ()       # host executables from here on
    post_switch: tuple[str, ...] = ()
    post_deploy: tuple[str, ...] = ()
    post_rollback: tuple[str, ...] = ()
    post_revert: tuple[str, ...] = ()
    timeout: float = 60.0                  # per host hook


HOST_HOOKS = ("pre_deploy", "post_switch", "post_deploy", "post_rollback", "post_revert")


@dataclass(frozen=True)
class SmokeCheck:
    """One HTTP check on the healthy candidate before the switch."""

    name: str
    method: str
    path: str
    status: int
    contains: str
    max_latency: float | None
    host: str | None


@dataclass(frozen=True)
class CanaryConfig:
    """``zdagent deploy --canary``: the candidate's share per step, and each step's length."""

    steps: tuple[int, ...] = (5, 25, 50, 100)
    step_seconds: float = 60.0
    sticky: bool = False  # njs mode: a cookie keeps a client on one version within a step


@dataclass(frozen=True)
class AnalysisConfig:
    """Judging a release by its real traffic after a switch (zdagent.traffic.analysis).

    Also the canary's policy: each step is judged with the same thresholds."""

    enabled: bool
    window: float  # seconds after a switch during which the new slot is judged
    interval: float  # seconds between two checks
    failures: int  # consecutive failed checks before the revert
    min_requests: int  # fewer requests than this: no verdict yet
    max_error_rate: float  # 5xx answers / requests, 0..1
    max_p99: float  # seconds; 0 = no latency rule
    baseline_factor: float  # new error rate > factor x previous version's; 0 = off
    cooldown: float  # seconds after an analysis revert before the next one


@dataclass(frozen=True)
class NotifyChannel:
    """One ``[[notify]]`` channel: an Apprise URL, or a JSON webhook signed with HMAC-SHA256.

    The URL and the secret never appear in a repr, a log or an error: both may hold tokens.
    The webhook's secret is read only when it is sent (zdagent.notifications.deliver).
    """

    kind: str  # apprise | webhook
    url: str = field(repr=False)
    events: frozenset[str]
    name: str
    secret: str | None = field(default=None, repr=False)
    secret_file: Path | None = None
    secret_env: str | None = None

    @property
    def key(self) -> str:
        """A stable id for the outbox (a hash: the URL itself is a secret)."""
        return hashlib.sha256(f"{self.kind}\0{self.url}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SwarmConfig:
    """``app.backend = "swarm"``: each slot is a Docker Swarm service (zdagent.services)."""

    replicas: int = 1
    # ingress (routing mesh) | host (one task per node, on the slot port) | task-ports (each
    # task on its own host port, picked by Docker; Nginx lists every task: zdagent.services)
    publish_mode: str = "ingress"
    constraints: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()  # Docker secret names, mounted at /run/secrets/<name>
    healthcheck: tuple[str, ...] = ()  # argv run in each task; () = the image's HEALTHCHECK
    min_healthy: int = 0  # the watchdog's floor of running tasks; 0 = replicas
    restart_delay: float = 5.0  # Swarm's pause before it replaces a failed task

    @property
    def floor(self) -> int:
        return self.min_healthy or self.replicas

    @property
    def task_ports(self) -> bool:
        """Nginx reaches each task on its own port (no routing mesh, several per node)."""
        return self.publish_mode == "task-ports"


@dataclass(frozen=True)
class AppConfig:
    """Everything zdagent knows about one app, validated."""

    path: Path
    name: str
    state_dir: Path
    source: BuildSource | ImageSource | GitSource
    container: ContainerConfig
    slots: SlotsConfig
    health: HealthConfig
    nginx: NginxConfig
    watchdog: WatchdogConfig
    retain: int = 5  # image versions kept per app (zdagent.retention)
    hooks: HooksConfig = HooksConfig()
    smoke: tuple[SmokeCheck, ...] = ()
    analysis: AnalysisConfig = field(default_factory=lambda: DEFAULT_ANALYSIS)
    notify: tuple[NotifyChannel, ...] = ()  # [[notify]] channels (zdagent.notifications)
    tls: TlsConfig | None = None  # None: no [tls] enabled
    canary: CanaryConfig = CanaryConfig()

    @property
    def policy(self) -> AnalysisConfig:
        """The traffic analysis policy (``[analysis]``): what ``judge`` applies."""
        return self.analysis
    backend: str = "container"  # container | swarm
    swarm: SwarmConfig = SwarmConfig()

    def slot_port(self, slot: str) -> int:
        return self.slots.blue_port if slot == "blue" else self.slots.green_port

    def slot_for_port(self, port: int) -> str | None:
        return {self.slots.blue_port: "blue", self.slots.green_port: "green"}.get(port)

    @property
    def verify_url(self) -> str:
        """Where switches are verified. With HTTPS live, plain HTTP only redirects: verify
        over HTTPS on the same address (the ``Host`` header doubles as the TLS name)."""
        base = self.nginx.public_url.rstrip("/")
        if self.tls is not None and self.tls.ready:
            u = urlsplit(base)
            port = self.tls.listen_port
            base = f"https://{u.hostname}{'' if port == 443 else f':{port}'}{u.path}"
            if ":" in (u.hostname or ""):  # IPv6 literal
                base = base.replace(f"//{u.hostname}", f"//[{u.hostname}]", 1)
        return base + self.nginx.verify_path

    @property
    def verify_headers(self) -> dict[str, str]:
        """Headers for every request through Nginx (switch verification, watchdog probe)."""
        host = self.nginx.verify_host
        return {"Host": host} if host else {}


# --- the schema --------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # returns an error text or None


@dataclass(frozen=True)
class Key:
    """One allowed key: its default (``REQUIRED`` if none) and its check."""

    default: Any
    check: Check
    doc: str = ""


REQUIRED = object()


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {v!r}"
        if not lo <= v <= hi:
            return f"must be between {lo} and {hi}, got {v}"
        return None

    return check


def _num(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"must be a number, got {v!r}"
        if not lo <= v <= hi:
            return f"must be between {lo:g} and {hi:g}, got {v}"
        return None

    return check


def _str(pattern: re.Pattern[str] | None = None, what: str = "", empty: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"must be a string, got {v!r}"
        if not v and empty:
            return None
        if not v:
            return "must not be empty"
        if pattern and not pattern.fullmatch(v):
            return f"must be {what}, got {v!r}"
        return None

    return check


def _choice(*options: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}; got {v!r}"

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _argv(v: Any) -> str | None:
    if not isinstance(v, list) or not v or not all(isinstance(a, str) and a for a in v):
        return "must be a non-empty list of strings (argv, no shell)"
    if any("\0" in a for a in v):
        return "must not contain a NUL character (no program can receive it)"
    return None


def _optional_argv(v: Any) -> str | None:
    """An argv list, or ``[]`` for none (the image's own command; no hook)."""
    if v == []:
        return None
    if isinstance(v, str):
        return f"must be a list of strings (argv, no shell), e.g. {v.split()!r}; got {v!r}"
    return _argv(v)


def _map(key_re: re.Pattern[str], what: str, reserved: str | None = None) -> Check:
    """A table of strings (numbers allowed, kept as text) whose keys match ``key_re``."""
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"must be a table of strings, got {v!r}"
        for k, val in v.items():
            if not key_re.fullmatch(k):
                return f"key {k!r} is not {what}"
            if reserved and (k.lower() == reserved or k.lower().startswith(reserved + ".")):
                return f"key {k!r}: {reserved}.* labels are zdagent's own; use another prefix"
            if not isinstance(val, str | int | float) or isinstance(val, bool):
                return f"value of {k!r} must be a string or number"
        return None

    return check


_str_map = _map(ENV_KEY_RE, "a valid variable name")


def parse_volume(spec: str) -> Volume:
    """``name:/path[:ro|rw]`` or ``/host/path:/path[:ro|rw]``; ValueError says what is wrong."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{spec!r} must be SOURCE:/container/path or "
                         f"SOURCE:/container/path:ro (or :rw)")
    source, target, mode = parts if len(parts) == 3 else (*parts, "rw")
    if mode not in ("ro", "rw"):
        raise ValueError(f"{spec!r}: the mode must be ro or rw, got {mode!r}")
    if source.startswith("/"):
        _check_mount_path(spec, source, "host path")
        _check_host_source(spec, source)
    elif source.startswith((".", "~")) or "/" in source:
        raise ValueError(f"{spec!r}: the host path {source!r} is relative; write it absolute "
                         f"(a relative path would depend on the daemon's directory)")
    elif not VOLUME_NAME_RE.fullmatch(source):
        raise ValueError(f"{spec!r}: {source!r} is neither an absolute host path nor a volume "
                         f"name (letters, digits, '_', '.', '-'; at least 2 characters)")
    _check_mount_path(spec, target, "container path")
    if target == "/":
        raise ValueError(f"{spec!r}: the container path must not be /")
    return Volume(source, target, mode)


def _check_mount_path(spec: str, path: str, what: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"{spec!r}: the {what} must be absolute, got {path!r}")
    if not MOUNT_PATH_RE.fullmatch(path) or "//" in path or \
            posixpath.normpath(path) != path:
        raise ValueError(f"{spec!r}: the {what} {path!r} is not a plain absolute path "
                         f"(no '..', '.', '//', trailing '/', spaces or special characters)")


# Host paths no app mounts for storage: the whole host, the kernel's interfaces (a root
# container writing /proc/sys or /sys reconfigures the host) and device nodes.
FORBIDDEN_HOST_TREES = ("/proc", "/sys", "/dev")
# The Docker socket (root on this host, and control of zdagent's own slots) and the
# directories that hold it: allowed, as a few apps need it on purpose, but `config check` warns.
DOCKER_SOCKET_PATHS = frozenset({"/var/run/docker.sock", "/run/docker.sock", "/var/run",
                                 "/run", "/var"})


def _check_host_source(spec: str, source: str) -> None:
    if source == "/":
        raise ValueError(f"{spec!r}: mounting / would hand the app the whole host; "
                         f"mount the directory it needs")
    for tree in FORBIDDEN_HOST_TREES:
        if source == tree or source.startswith(tree + "/"):
            raise ValueError(f"{spec!r}: host paths under {tree} (kernel interfaces, devices) "
                             f"are refused")


def risky_volumes(c: ContainerConfig) -> list[str]:
    """The volumes that reach the Docker socket (``config check`` warns about each)."""
    return [v.bind.removesuffix(":rw") for v in c.volumes
            if not v.named and (v.source in DOCKER_SOCKET_PATHS
                                or v.source.endswith("/docker.sock"))]


def _volumes(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        return f"must be a list of strings like \"data:/var/lib/app\", got {v!r}"
    targets: set[str] = set()
    for spec in v:
        try:
            volume = parse_volume(spec)
        except ValueError as e:
            return str(e)
        if volume.target in targets:
            return f"{volume.target} is mounted twice"
        targets.add(volume.target)
    return None


def parse_memory(v: str | int) -> int:
    """``"512m"``, ``"1g"``, ``"1.5g"`` or a number of bytes, as bytes (k = 1024)."""
    if isinstance(v, int):
        return v
    m = MEMORY_RE.fullmatch(v.strip())
    if m is None:
        raise ValueError(v)
    return int(float(m.group(1)) * MEMORY_UNITS[m.group(2).lower()])


def _memory(v: Any) -> str | None:
    if v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, str | int):
        return f"must be a size like \"512m\" or \"1g\", got {v!r}"
    try:
        size = parse_memory(v)
    except ValueError:
        return f"must be a size like \"512m\" or \"1g\" (units b, k, m, g), got {v!r}"
    return None if size >= MIN_MEMORY else f"must be at least 6m (Docker's minimum), got {v!r}"


def _cpus(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"must be a number of CPUs like 0.5 or 2, got {v!r}"
    if v == 0 or 0.01 <= v <= 1024:
        return None
    return f"must be 0 (no limit) or between 0.01 and 1024, got {v}"


def _str_list(pattern: re.Pattern[str], what: str) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not all(isinstance(x, str) and pattern.match(x)
                                              for x in v):
            return f"must be a list of strings, each {what}"
        return None
    return check


def _statuses(v: Any) -> str | None:
    if not isinstance(v, list) or not v:
        return "must be a non-empty list of HTTP status codes"
    if not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in v):
        return f"must hold HTTP status codes (100-599), got {v!r}"
    return None


def _path(v: Any) -> str | None:
    return _str(re.compile(r"^/[^\s]*$"), "an absolute URL path starting with /")(v)


def _url(v: Any) -> str | None:
    """An http(s) URL whose port (if any) is a number from 1 to 65535: the watchdog probes it
    every tick, so a bad port must be refused here, not fail there."""
    problem = _str(re.compile(r"^https?://[^\s/]+(/[^\s]*)?$"), "an http(s):// URL")(v)
    if problem:
        return problem
    try:
        port = urlsplit(v).port
    except ValueError:
        return f"must have a numeric port from 1 to 65535, got {v!r}"
    if port == 0:
        return f"must have a port from 1 to 65535, got {v!r}"
    return None


def _image_repo(v: Any) -> str | None:
    """An image repository without a tag: a ':' may only sit in a registry host:port."""
    problem = _str(IMAGE_REF_RE, "an image reference (lowercase, no tag)")(v)
    if problem:
        return problem
    if ":" in v.rsplit("/", 1)[-1]:
        return (f"must not carry a tag (the version is added as the tag), got {v!r}; "
                f"use {v.rsplit(':', 1)[0]!r}")
    if v.endswith(("/", ":")) or "//" in v:
        return f"must be an image repository name, got {v!r}"
    return None


def listen_port_of(listen: str) -> int:
    """The port of an ``nginx.listen`` value (``80``, ``127.0.0.1:8080``, ``[::]:80``)."""
    m = LISTEN_RE.fullmatch(listen)
    if m is None:
        raise ValueError(f"not a listen value: {listen!r}")
    return int(m.group(2))


def _listen(v: Any) -> str | None:
    problem = _str(LISTEN_RE, "a port or address:port (e.g. 80 or 127.0.0.1:8080)")(v)
    if problem:
        return problem
    port = listen_port_of(v)
    return None if 1 <= port <= 65535 else f"port must be between 1 and 65535, got {port}"


def _expect_version(v: Any) -> str | None:
    if v in ("none", "body"):
        return None
    if isinstance(v, str) and v.startswith("header:") and HEADER_RE.fullmatch(v[7:]):
        return None
    return f"must be none, body or header:<Header-Name>; got {v!r}"


def _secret_url(what: str, pattern: re.Pattern[str]) -> Check:
    """A URL that may hold a token: the error never repeats the value."""
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not pattern.fullmatch(v):
            return f"must be {what} (the value is not shown: it may hold a secret)"
        return None

    return check


def _secret(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string (the value is not shown)"


PORT = _int(1, 65535)
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _steps(v: Any) -> str | None:
    """Canary shares in percent: rising integers from 1 to 100, the last one 100."""
    if not isinstance(v, list) or not v or not all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 100 for s in v):
        return f"must be a non-empty list of percentages (integers 1-100), got {v!r}"
    if any(b <= a for a, b in pairwise(v)):
        return f"must rise step by step, got {v!r}"
    if v[-1] != 100:
        return f"must end with 100 (the promotion), got {v!r}"
    return None

SCHEMA: dict[str, dict[str, Key]] = {
    "app": {
        "name": Key(REQUIRED, _str(APP_NAME_RE, "lowercase letters, digits and '-' (max 40)")),
        "state_dir": Key("/var/lib/zdagent", _str()),
        "retain": Key(5, _int(1, 1000)),
        "backend": Key("container", _choice("container", "swarm")),
    },
    "source": {
        "image": Key(None, _image_repo),
        "pull": Key("missing", _choice("always", "missing", "never")),
    },
    "source.git": {
        "repo": Key(REQUIRED, _str()),
        "subdir": Key("", _str(re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"), "a relative path",
                               empty=True)),
        "dockerfile": Key("Dockerfile", _str()),
        "tag": Key(None, _image_repo),
        "args": Key({}, _str_map),
        "fetch": Key(True, _bool),
    },
    "source.build": {
        "context": Key(REQUIRED, _str()),
        "dockerfile": Key("Dockerfile", _str()),
        "tag": Key(None, _image_repo),
        "args": Key({}, _str_map),
    },
    "container": {
        "port": Key(REQUIRED, PORT),
        "env": Key({}, _str_map),
        "env_file": Key("", _str(empty=True)),
        "stop_timeout": Key(10, _int(0, 3600)),
        "network": Key("", _str(re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"), "a network name",
                                 empty=True)),
        "volumes": Key([], _volumes),
        "command": Key([], _optional_argv),
        "entrypoint": Key([], _optional_argv),
        "memory": Key("", _memory),
        "cpus": Key(0, _cpus),
        "labels": Key({}, _map(LABEL_KEY_RE, "a label key (letters, digits, '.', '-', '_', '/')",
                               reserved="zdagent")),
        "user": Key("", _str(USER_RE, "a user or uid, optionally :group (e.g. 1000:1000, app)",
                             empty=True)),
        "log_driver": Key("", _str(LOG_DRIVER_RE, "a Docker logging driver name (e.g. local)",
                                   empty=True)),
        "log_options": Key({}, _map(LOG_OPTION_RE, "a log option name (e.g. max-size)")),
    },
    "slots": {
        "blue_port": Key(REQUIRED, PORT),
        "green_port": Key(REQUIRED, PORT),
        "after_switch": Key("standby", _choice("standby", "stop")),
        "drain_seconds": Key(10.0, _num(0, 3600)),
    },
    "swarm": {
        "replicas": Key(1, _int(1, 1000)),
        "publish_mode": Key("ingress", _choice("ingress", "host", "task-ports")),
        "constraints": Key([], _str_list(re.compile(r"^[A-Za-z0-9_.-]+ *[!=]= *[^\s].*$"),
                                         "a placement constraint (node.labels.edge == true)")),
        "secrets": Key([], _str_list(re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
                                     "a Docker secret name")),
        "healthcheck": Key([], _optional_argv),
        "min_healthy": Key(0, _int(0, 1000)),
        "restart_delay": Key(5.0, _num(0, 3600)),
    },
    "health": {
        "path": Key("/", _path),
        "statuses": Key([200], _statuses),
        "timeout": Key(2.0, _num(0.05, 300)),
        "interval": Key(1.0, _num(0.05, 300)),
        "startup_deadline": Key(60.0, _num(0.5, 3600)),
        "passes": Key(3, _int(1, 100)),
        "expect_version": Key("none", _expect_version),
    },
    "watchdog": {
        "enabled": Key(True, _bool),
        "interval": Key(1.0, _num(0.1, 3600)),
        "failures": Key(3, _int(1, 100)),
        "cooldown": Key(60.0, _num(0, 86400)),
        "max_reverts": Key(3, _int(1, 100)),
        "window": Key(3600.0, _num(1, 604800)),
    },
    # --- HTTPS (zdagent/tls.py) ---
    "tls": {
        "enabled": Key(False, _bool),
        "listen": Key("443", _listen),
        "certificate": Key("", _str(empty=True)),
        "certificate_key": Key("", _str(empty=True)),
        "webroot": Key("/var/www/zdagent-acme", _str()),
        "email": Key("", _str(re.compile(r"^[^\s@,;'\"]+@[^\s@,;'\"]+$"), "an e-mail address",
                              empty=True)),
        "acme_server": Key("", lambda v: None if v == "" else _url(v)),
        "certbot_command": Key(["certbot"], _argv),
        "site_file": Key("", _str(empty=True)),
    },
    "canary": {
        "steps": Key([5, 25, 50, 100], _steps),
        "step_seconds": Key(60.0, _num(0.5, 86400)),
        "sticky": Key(False, _bool),
    },
    "nginx": {
        "upstream_file": Key(REQUIRED, _str()),
        "upstream_template": Key("", _str(empty=True)),
        "site_template": Key("", _str(empty=True)),
        "test_command": Key(["nginx", "-t"], _argv),
        "reload_command": Key(["nginx", "-s", "reload"], _argv),
        "pid_file": Key("/run/nginx.pid", _str()),
        "public_url": Key("http://127.0.0.1/", _url),
        "verify_path": Key("", lambda v: None if v == "" else _path(v)),
        "listen": Key("80", _listen),
        "server_name": Key("_", _str(re.compile(r"^[A-Za-z0-9_.* -]+$"), "server names")),
        "standby_as_backup": Key(True, _bool),
        "reload_timeout": Key(10.0, _num(0.5, 300)),
        "switch_mode": Key("reload", _choice("reload", "njs")),
        # "" = /var/log/nginx/zdagent-<app>.log, rotated by Debian's logrotate for Nginx.
        "access_log": Key("", _str(re.compile(r"^[^\s;'\"{}$\\]+$"),
                                   "a file path without spaces, quotes, ';', '$' or braces",
                                   empty=True)),
    },
    "analysis": {
        "enabled": Key(True, _bool),
        "window": Key(60.0, _num(1, 86400)),
        "interval": Key(1.0, _num(0.1, 3600)),
        "failures": Key(3, _int(1, 100)),
        "min_requests": Key(20, _int(1, 10**9)),
        "max_error_rate": Key(0.05, _num(0, 1)),
        "max_p99": Key(2.0, _num(0, 3600)),
        "baseline_factor": Key(3.0, _num(0, 1000)),
        "cooldown": Key(300.0, _num(0, 86400)),
    },
    "hooks": {
        "release": Key([], _optional_argv),
        "release_timeout": Key(300.0, _num(1, 86400)),
        **{hook: Key([], _optional_argv) for hook in HOST_HOOKS},
        "timeout": Key(60.0, _num(1, 3600)),
    },
    # [[smoke]]: an array of tables, each read against these keys (_Reader.tables)
    "smoke": {
        "name": Key("", _str(re.compile(r"^[^\x00-\x1f]{1,80}$"), "a one-line name (max 80)",
                             empty=True)),
        "method": Key("GET", _choice(*HTTP_METHODS)),
        "path": Key(REQUIRED, _path),
        "status": Key(200, _int(100, 599)),
        "contains": Key("", _str(empty=True)),
        "max_latency": Key(0.0, _num(0, 300)),
        "host": Key("", _str(re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$"), "a host name",
                             empty=True)),
    },
    # [[notify]]: an array of tables, one per channel (_Reader.tables).
    "notify": {
        "url": Key("", _secret_url("an Apprise URL such as slack://..., mailto://..., "
                                   "ntfys://...", re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$"))),
        "webhook": Key("", _secret_url("an http(s):// URL", re.compile(r"^https?://[^\s/]+\S*$"))),
        "secret": Key("", _secret),
        "secret_file": Key("", _str(empty=True)),
        "secret_env": Key("", _str(ENV_KEY_RE, "an environment variable name", empty=True)),
        "events": Key("all", check_events),
        "name": Key("", _str(re.compile(r"^[A-Za-z0-9_. -]{1,40}$"), "a short label",
                             empty=True)),
    },
}
ARRAYS = frozenset({"smoke", "notify"})  # sections written as [[name]]: a list of tables


def _analysis(values: Mapping[str, Any]) -> AnalysisConfig:
    return AnalysisConfig(
        enabled=values["enabled"], window=float(values["window"]),
        interval=float(values["interval"]), failures=values["failures"],
        min_requests=values["min_requests"], max_error_rate=float(values["max_error_rate"]),
        max_p99=float(values["max_p99"]), baseline_factor=float(values["baseline_factor"]),
        cooldown=float(values["cooldown"]))


DEFAULT_ANALYSIS = _analysis({k: key.default for k, key in SCHEMA["analysis"].items()})


def default_access_log(app: str) -> Path:
    """Where Nginx writes the app's JSON access log unless ``nginx.access_log`` says."""
    return Path(f"/var/log/nginx/zdagent-{app}.log")


class _Reader:
    """Walks the parsed TOML against SCHEMA and collects the first error with its key."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(
            f"{self.path}: {key}: {message}",
            hint="fix the key and run `zdagent config check`; nothing was changed",
        )

    def section(self, name: str) -> dict[str, Any]:
        node: Any = self.data
        for part in name.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise self.fail(name, "must be a table")
        return self._table(name, name, node)

    def tables(self, name: str) -> list[dict[str, Any]]:
        """A ``[[name]]`` array of tables, each checked like a section (``smoke[2].path``)."""
        items = self.data.get(name, [])
        if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
            raise self.fail(name, f"must be an array of tables ([[{name}]])")
        return [self._table(name, f"{name}[{i}]", t) for i, t in enumerate(items)]

    def _table(self, name: str, where: str, node: dict[str, Any]) -> dict[str, Any]:
        schema = SCHEMA[name]
        nested = {s.split(".")[-1] for s in SCHEMA if s.startswith(name + ".")}
        for key in node:
            if key not in schema and key not in nested:
                close = difflib.get_close_matches(key, [*schema, *nested], n=1)
                tip = f" (did you mean '{close[0]}'?)" if close else ""
                raise self.fail(f"{where}.{key}", f"unknown key{tip}")
        out: dict[str, Any] = {}
        for key, spec in schema.items():
            if key in node:
                problem = spec.check(node[key])
                if problem:
                    raise self.fail(f"{where}.{key}", problem)
                out[key] = node[key]
            elif spec.default is REQUIRED:
                raise self.fail(f"{where}.{key}", "is required")
            else:
                out[key] = spec.default
        return out

    def check_top_level(self) -> None:
        tops = {s.split(".")[0] for s in SCHEMA}
        for key in self.data:
            if key not in tops:
                close = difflib.get_close_matches(key, list(tops), n=1)
                tip = f" (did you mean '{close[0]}'?)" if close else ""
                raise self.fail(key, f"unknown section{tip}")


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p).resolve()


def _string_map(raw: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in raw.items()}


def load_config(path: Path | str) -> AppConfig:
    """Load and validate one app config; raise ConfigError naming file and key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path}",
            hint=f"pass --config PATH or set {CONFIG_ENV}; `zdagent config example` prints one",
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", hint="check the syntax") from None
    return _build(path, data)


def _build(path: Path, data: dict[str, Any]) -> AppConfig:
    r = _Reader(path, data)
    r.check_top_level()
    base = path.parent.resolve()
    app = r.section("app")
    source = _source(r, base, app["name"])
    cont = r.section("container")
    slots = r.section("slots")
    health = r.section("health")
    ngx = r.section("nginx")
    wd = r.section("watchdog")
    hooks = _hooks(r.section("hooks"), base)
    smoke = tuple(_smoke_check(t) for t in r.tables("smoke"))
    can = r.section("canary")
    if can["sticky"] and ngx["switch_mode"] != "njs":
        raise r.fail("canary.sticky", "needs nginx.switch_mode = \"njs\" (reload mode splits "
                                      "by upstream weights, with no per-client choice)")
    analysis = r.section("analysis")
    tls = _tls(r, base, ngx, slots)
    swarm = _swarm(r, app["backend"], source, hooks)

    if slots["blue_port"] == slots["green_port"]:
        raise r.fail("slots.green_port", "must differ from slots.blue_port")
    # Secrets are read only when a container is created (read_env_file): status, history
    # and the SSH gate load this config without ever touching the env file.
    env_file = _resolve(base, cont["env_file"]) if cont["env_file"] else None
    listen_port = listen_port_of(ngx["listen"])
    for key in ("blue_port", "green_port"):
        if slots[key] == listen_port:
            raise r.fail(f"slots.{key}", f"must differ from Nginx's listen port "
                                         f"(nginx.listen = {ngx['listen']!r})")
    upstream_file = _resolve(base, ngx["upstream_file"])
    _check_ours(r, upstream_file, app["name"])
    templates = {}
    for key in ("upstream_template", "site_template"):
        t = _resolve(base, ngx[key]) if ngx[key] else None
        if t is not None and not t.is_file():
            raise r.fail(f"nginx.{key}", f"template not found: {t}")
        templates[key] = t
    _task_ports_template(r, swarm, app["backend"], ngx["switch_mode"],
                         templates["upstream_template"])

    return AppConfig(
        path=path.resolve(),
        name=app["name"],
        state_dir=_resolve(base, app["state_dir"]),
        source=source,
        container=ContainerConfig(
            port=cont["port"],
            env=_string_map(cont["env"]),
            env_file=env_file,
            stop_timeout=cont["stop_timeout"],
            network=cont["network"] or None,
            volumes=tuple(parse_volume(v) for v in cont["volumes"]),
            command=tuple(cont["command"]),
            entrypoint=tuple(cont["entrypoint"]),
            memory=parse_memory(cont["memory"]) if cont["memory"] != "" else None,
            cpus=float(cont["cpus"]) or None,
            labels=_string_map(cont["labels"]),
            user=cont["user"] or None,
            log_driver=cont["log_driver"] or None,
            log_options=_string_map(cont["log_options"]),
        ),
        slots=SlotsConfig(
            blue_port=slots["blue_port"],
            green_port=slots["green_port"],
            after_switch=slots["after_switch"],
            drain_seconds=float(slots["drain_seconds"]),
        ),
        health=HealthConfig(
            path=health["path"],
            statuses=tuple(health["statuses"]),
            timeout=float(health["timeout"]),
            interval=float(health["interval"]),
            startup_deadline=float(health["startup_deadline"]),
            passes=health["passes"],
            expect_version=health["expect_version"],
        ),
        nginx=NginxConfig(
            upstream_file=upstream_file,
            upstream_template=templates["upstream_template"],
            site_template=templates["site_template"],
            test_command=tuple(ngx["test_command"]),
            reload_command=tuple(ngx["reload_command"]),
            pid_file=_resolve(base, ngx["pid_file"]),
            public_url=ngx["public_url"],
            verify_path=ngx["verify_path"] or health["path"],
            listen=ngx["listen"],
            server_name=ngx["server_name"],
            standby_as_backup=ngx["standby_as_backup"],
            reload_timeout=float(ngx["reload_timeout"]),
            switch_mode=ngx["switch_mode"],
            access_log=(_resolve(base, ngx["access_log"]) if ngx["access_log"]
                        else default_access_log(app["name"])),
        ),
        watchdog=WatchdogConfig(
            enabled=wd["enabled"], interval=float(wd["interval"]), failures=wd["failures"],
            cooldown=float(wd["cooldown"]), max_reverts=wd["max_reverts"],
            window=float(wd["window"]),
        ),
        retain=app["retain"],
        hooks=hooks,
        smoke=smoke,
        canary=CanaryConfig(steps=tuple(can["steps"]), step_seconds=float(can["step_seconds"]),
                            sticky=can["sticky"]),
        analysis=_analysis(analysis),
        backend=app["backend"],
        swarm=swarm,
        notify=_notify(r, base),
        tls=tls,
    )


LETSENCRYPT_LIVE = Path("/etc/letsencrypt/live")


def _tls(r: _Reader, base: Path, ngx: dict[str, Any],
         slots: dict[str, Any]) -> TlsConfig | None:
    """The [tls] section when enabled; certificate paths default to certbot's live files."""
    t = r.section("tls")
    if not t["enabled"]:
        return None
    # ".example.com" is Nginx's example.com and its subdomains: the certificate names the
    # bare domain (the verify Host, see NginxConfig.verify_host).
    domains = tuple(dict.fromkeys(n.lstrip(".") for n in ngx["server_name"].split()
                                  if n != "_" and "*" not in n and not n.startswith("~")
                                  and n.lstrip(".")))
    if not domains:
        raise r.fail("tls.enabled", "needs nginx.server_name to name the site's domain "
                                    "(not _ or a wildcard): the certificate is issued for it")
    if listen_port_of(t["listen"]) == listen_port_of(ngx["listen"]):
        raise r.fail("tls.listen", f"must differ from nginx.listen ({ngx['listen']!r}), "
                                   "which serves the ACME challenge and the redirect")
    for key in ("blue_port", "green_port"):
        if listen_port_of(t["listen"]) == slots[key]:
            raise r.fail("tls.listen", f"must differ from slots.{key} ({slots[key]})")
    live = LETSENCRYPT_LIVE / domains[0]
    return TlsConfig(
        enabled=True, listen=t["listen"], domains=domains,
        certificate=_resolve(base, t["certificate"]) if t["certificate"]
        else live / "fullchain.pem",
        certificate_key=_resolve(base, t["certificate_key"]) if t["certificate_key"]
        else live / "privkey.pem",
        webroot=_resolve(base, t["webroot"]), email=t["email"], acme_server=t["acme_server"],
        certbot_command=tuple(t["certbot_command"]),
        site_file=_resolve(base, t["site_file"]) if t["site_file"] else None,
    )


def _swarm(r: _Reader, backend: str, source: object, hooks: HooksConfig) -> SwarmConfig:
    """The [swarm] section; a swarm app's nodes pull its image, so it needs a registry."""
    s = r.section("swarm")
    cfg = SwarmConfig(replicas=s["replicas"], publish_mode=s["publish_mode"],
                      constraints=tuple(s["constraints"]), secrets=tuple(s["secrets"]),
                      healthcheck=tuple(s["healthcheck"]), min_healthy=s["min_healthy"],
                      restart_delay=float(s["restart_delay"]))
    if backend != "swarm":
        return cfg
    if not isinstance(source, ImageSource):
        raise ConfigError(
            f"{r.path}: source: app.backend = \"swarm\" needs source.image: every node "
            "pulls the image from a registry, and a local build exists on this host only",
            hint="build and push in CI (docker build -t registry.example.com/app:V . && "
                 "docker push ...), then set source.image = \"registry.example.com/app\"")
    if hooks.release and cfg.secrets:  # zdagent.services.ServiceSlots.oneoff_image
        raise r.fail("hooks.release", "cannot run with swarm.secrets: it runs in a one-off "
                                      "container, and Swarm mounts Docker secrets into "
                                      "service tasks only (run it from CI or a pre_deploy "
                                      "hook)")
    if cfg.min_healthy > cfg.replicas:
        raise r.fail("swarm.min_healthy", f"must be at most swarm.replicas ({cfg.replicas})")
    return cfg


def _task_ports_template(r: _Reader, swarm: SwarmConfig, backend: str, mode: str,
                         template: Path | None) -> None:
    """A task-ports slot has one Nginx server per task: a custom upstream template that
    renders only the single slot port would route to a port nothing listens on."""
    if backend != "swarm" or not swarm.task_ports or template is None:
        return
    wanted = "blue_ports" if mode == "njs" else "live_ports"
    if wanted not in template.read_text(errors="replace"):
        raise r.fail("nginx.upstream_template",
                     f"with swarm.publish_mode = \"task-ports\" it must render every task's "
                     f"port (a loop over {wanted}; see the bundled template)")


def _hooks(h: dict[str, Any], base: Path) -> HooksConfig:
    """Host hooks' programs given as a relative path (``./hooks/x``) resolve from the config's
    directory; a bare name is looked up on PATH when it runs. The release argv runs inside the
    image, so it is kept as written."""
    def host(argv: list[str]) -> tuple[str, ...]:
        if argv and "/" in argv[0]:
            argv = [str(_resolve(base, argv[0])), *argv[1:]]
        return tuple(argv)

    return HooksConfig(release=tuple(h["release"]),
                       release_timeout=float(h["release_timeout"]),
                       timeout=float(h["timeout"]),
                       **{name: host(h[name]) for name in HOST_HOOKS})


def _smoke_check(t: dict[str, Any]) -> SmokeCheck:
    return SmokeCheck(name=t["name"] or f"{t['method']} {t['path']}", method=t["method"],
                      path=t["path"], status=t["status"], contains=t["contains"],
                      max_latency=float(t["max_latency"]) or None, host=t["host"] or None)


def _notify(r: _Reader, base: Path) -> tuple[NotifyChannel, ...]:
    """The ``[[notify]]`` channels: one URL each, a webhook with exactly one secret source."""
    out: list[NotifyChannel] = []
    for i, t in enumerate(r.tables("notify")):
        where = f"notify[{i}]"
        secrets = [k for k in ("secret", "secret_file", "secret_env") if t[k]]
        if bool(t["url"]) == bool(t["webhook"]):
            raise r.fail(where, "set exactly one of url (an Apprise URL) or webhook "
                                "(a signed JSON webhook)")
        if t["url"]:
            if secrets:
                raise r.fail(f"{where}.{secrets[0]}", "belongs to a webhook; an Apprise "
                                                       "url carries its own credentials")
            if not _apprise_knows(t["url"]):
                raise r.fail(f"{where}.url", "is not a URL Apprise understands (the value is "
                                             "not shown); see https://github.com/caronc/"
                                             "apprise/wiki for each service's URL")
        elif len(secrets) != 1:
            raise r.fail(where, "a webhook needs exactly one of secret_file, secret_env or "
                                "secret (the HMAC-SHA256 key)")
        url = t["url"] or t["webhook"]
        channel = NotifyChannel(
            kind="apprise" if t["url"] else "webhook", url=url, events=expand(t["events"]),
            name=t["name"] or f"{url.split(':', 1)[0].lower() if t['url'] else 'webhook'}"
                              f"-{i}",
            secret=t["secret"] or None,
            secret_file=_resolve(base, t["secret_file"]) if t["secret_file"] else None,
            secret_env=t["secret_env"] or None)
        if any(c.key == channel.key for c in out):
            raise r.fail(where, "the same URL is already another channel")
        if any(c.name == channel.name for c in out):
            raise r.fail(f"{where}.name", f"{channel.name!r} is already another channel")
        out.append(channel)
    return tuple(out)


def _apprise_knows(url: str) -> bool:
    """Apprise parses ``url`` into a service (imported here only: most configs have none)."""
    import logging

    import apprise

    logging.getLogger("apprise").addHandler(logging.NullHandler())  # never to stderr
    return apprise.Apprise.instantiate(url, suppress_exceptions=True) is not None


def _check_ours(r: _Reader, path: Path, app: str) -> None:
    """``nginx.upstream_file`` is overwritten on every switch: refuse any existing file that
    does not start with zdagent's header for this app (e.g. /etc/nginx/nginx.conf)."""
    try:
        if not path.exists():
            return
    except PermissionError:
        return  # a deploy user may not see Nginx's directory: not ours to judge either
    if not path.is_file():
        raise r.fail("nginx.upstream_file", f"{path} exists and is not a regular file")
    try:
        with path.open("rb") as f:
            first = f.readline(256).decode("utf-8", "replace")
    except PermissionError:
        return  # not ours to judge as this user; writing it would fail anyway
    except OSError as e:
        raise r.fail("nginx.upstream_file", f"cannot read {path}: {e.strerror}") from None
    if first == "":
        return  # empty: nothing to lose (e.g. `zdagent nginx render > file` opened it first)
    m = MANAGED_RE.match(first)
    if m is None:
        raise ConfigError(
            f"{r.path}: nginx.upstream_file: {path} exists and was not written by zdagent "
            f"(its first line is not '{managed_header(app)}')",
            hint="point nginx.upstream_file at a new file (e.g. /etc/nginx/zdagent/"
                 f"{app}.upstream.conf); zdagent never overwrites a file it did not write")
    if m.group(1) != app:
        raise ConfigError(
            f"{r.path}: nginx.upstream_file: {path} belongs to app {m.group(1)!r}, not {app!r}",
            hint="give each app its own upstream file")


def _source(r: _Reader, base: Path, app: str) -> BuildSource | ImageSource | GitSource:
    src = r.section("source")
    tables = r.data.get("source") if isinstance(r.data.get("source"), dict) else {}
    kinds = [k for k in ("image", "build", "git") if (src["image"] if k == "image" else
                                                         k in tables)]
    if len(kinds) != 1:
        problem = "not several" if kinds else "one is required"
        raise r.fail("source", f"set exactly one of source.image (pull), [source.build] "
                               f"(local context) or [source.git] (git repository): {problem}")
    if src["image"]:
        return ImageSource(image=src["image"], pull=src["pull"])
    if "git" in tables:
        g = r.section("source.git")
        repo = _resolve(base, g["repo"])
        if not (repo / "HEAD").is_file() and not (repo / ".git").exists():
            raise r.fail("source.git.repo", f"not a git repository: {repo}")
        if ".." in g["subdir"].split("/"):
            raise r.fail("source.git.subdir", "must stay inside the repository")
        return GitSource(repo=repo, subdir=g["subdir"], dockerfile=g["dockerfile"],
                         tag=g["tag"] or f"zdagent/{app}", args=_string_map(g["args"]),
                         fetch=g["fetch"])
    b = r.section("source.build")
    context = _resolve(base, b["context"])
    if not context.is_dir():
        raise r.fail("source.build.context", f"directory not found: {context}")
    if not (context / b["dockerfile"]).is_file():
        raise r.fail("source.build.dockerfile", f"not found in the context: {b['dockerfile']}")
    return BuildSource(
        context=context,
        dockerfile=b["dockerfile"],
        tag=b["tag"] or f"zdagent/{app}",
        args=_string_map(b["args"]),
    )


def config_path(explicit: str | None) -> Path:
    """The config to use: --config, then $ZDAGENT_CONFIG, then the system default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def check_version(version: str) -> str:
    """Versions become image tags and labels: reject anything Docker would not accept."""
    if not VERSION_RE.fullmatch(version):
        raise ConfigError(
            f"invalid version {version!r}",
            hint="use letters, digits, '_', '.', '-' (max 128, not starting with '.' or '-')",
        )
    return version


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a KEY=VALUE env file (comments and blank lines allowed); values stay secret."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else (e.strerror or str(e))
        raise ConfigError(f"container.env_file {path}: cannot read it ({why})",
                          hint="the daemon (root) reads it when a container is created; "
                               "keep it root-owned, mode 0600, UTF-8") from None
    env: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not ENV_KEY_RE.fullmatch(key):
            raise ConfigError(f"container.env_file {path}:{n}: expected KEY=VALUE",
                              hint="fix the env file")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def env_file_exposed(path: Path) -> bool:
    """True when the env file's secrets are readable by its group or by everyone."""
    try:
        return bool(path.stat().st_mode & 0o044)
    except OSError:
        return False


def app_config_path(config_dir: Path, app: str) -> Path | None:
    """``<config_dir>/<app>.toml`` if ``app`` is a valid name and the file exists."""
    if not APP_NAME_RE.fullmatch(app):
        return None
    path = config_dir / f"{app}.toml"
    return path if path.is_file() else None


# --- the app directory: every app, checked against each other -----------------------------

@dataclass(frozen=True)
class AppDir:
    """The apps of a config directory: the usable ones, and one line per file that is not.

    ``apps`` is keyed by app name (= file stem), ``errors`` by file stem.
    """

    apps: dict[str, AppConfig]
    errors: dict[str, str]


def nginx_names(app: str) -> frozenset[str]:
    """Every Nginx-level name (upstream groups, njs module and variables) derived from an app.

    Kept here, not in nginx.py, so the cross-app check needs no Nginx code; nginx.py builds
    its names with these functions.
    """
    return frozenset({upstream_name(app), pool_variable(app)} | {
        pool_name(app, slot, alone=alone) for slot in ("blue", "green")
        for alone in (False, True)})


def upstream_name(app: str) -> str:
    """Reload mode's upstream group and njs mode's module: ``zdagent_<app>``.

    App names are ``[a-z0-9-]``; '-' becomes '_' (Nginx variable syntax), which is injective
    because app names hold no '_'. The per-slot names below start ``zdagent__``, which no
    upstream name can (an app name never starts with '-'), so no two apps' names collide.
    """
    return "zdagent_" + app.replace("-", "_")


def pool_name(app: str, slot: str, *, alone: bool = False) -> str:
    """njs mode: the upstream group of one slot, ``zdagent__<slot>_<app>`` (the other slot
    as its backup), or with ``alone`` ``zdagent__alone_<slot>_<app>`` (no backup)."""
    return f"zdagent__{'alone_' if alone else ''}{slot}_" + app.replace("-", "_")


def log_format_name(app: str) -> str:
    """The app's JSON ``log_format``, ``zdagent_json_<app>`` (log formats have their own
    namespace in Nginx, so only other log formats could clash: app names are unique)."""
    return "zdagent_json_" + app.replace("-", "_")


# Nginx 1.22 refuses a variable name longer than 46 characters with the default
# variables_hash_bucket_size (64): "could not build variables_hash". The longest derived
# variable is the pool variable plus "_maintenance".
NGINX_VARIABLE_MAX = 46
_POOL_VARIABLE_SUFFIX = "_maintenance"


def _variable(prefix: str, app: str, suffix: str = "") -> str:
    """``<prefix><app>`` for an Nginx variable that is also used with ``suffix`` appended:
    a long app name is cut and made unique by a hash, so the longest form fits."""
    name = prefix + app.replace("-", "_")
    room = NGINX_VARIABLE_MAX - len(suffix)
    if len(name) <= room:
        return name
    return f"{name[:room - 7]}_{hashlib.sha256(app.encode()).hexdigest()[:6]}"


def pool_variable(app: str) -> str:
    """njs mode: the variable (without '$') naming the live pool, ``zdagent__pool_<app>``
    (with ``_cookie``, ``_request``, ``_maintenance`` appended: the request's other ones)."""
    return _variable("zdagent__pool_", app, _POOL_VARIABLE_SUFFIX)


def own_variable(app: str) -> str:
    """The site's variable marking zdagent's own requests in the access log,
    ``zdagent_json_<app>_own``."""
    return _variable("zdagent_json_", app, "_own") + "_own"


@dataclass
class _Claims:
    """What the apps accepted so far hold, with the owner of each item."""

    slot_ports: dict[int, str]
    listen_ports: dict[int, str]
    https_ports: dict[int, str]
    files: dict[Path, str]
    names: dict[str, str]


def _conflict(cfg: AppConfig, claims: _Claims) -> str | None:
    """The first clash of ``cfg`` with another accepted app: '<key>: <why> (app X)'.

    Items ``cfg``'s own app holds already (its running config) are no clash."""
    def other(owners: Mapping[Any, str], item: Any) -> str | None:
        owner = owners.get(item)
        return owner if owner not in (None, cfg.name) else None

    for key in ("blue_port", "green_port"):
        port = getattr(cfg.slots, key)
        if owner := other(claims.slot_ports, port):
            return f"slots.{key}: port {port} is also a slot port of app {owner}"
        if owner := other(claims.listen_ports, port):
            return f"slots.{key}: port {port} is Nginx's listen port of app {owner}"
        if owner := other(claims.https_ports, port):
            return f"slots.{key}: port {port} is the HTTPS listen port of app {owner}"
    listen = cfg.nginx.listen_port
    if owner := other(claims.slot_ports, listen):
        return f"nginx.listen: port {listen} is a slot port of app {owner}"
    # One port cannot be plain HTTP for one app and TLS for another: Nginx makes it ssl.
    if owner := other(claims.https_ports, listen):
        return f"nginx.listen: port {listen} is the HTTPS listen port of app {owner}"
    if cfg.tls is not None:
        https = cfg.tls.listen_port
        if owner := other(claims.slot_ports, https):
            return f"tls.listen: port {https} is a slot port of app {owner}"
        if owner := other(claims.listen_ports, https):
            return f"tls.listen: port {https} is Nginx's plain-HTTP listen port of app {owner}"
    for key, path in (("upstream_file", cfg.nginx.upstream_file),
                      ("upstream_file", cfg.nginx.active_file)):
        if owner := other(claims.files, path):
            return f"nginx.{key}: {path} is also used by app {owner}"
    for name in sorted(nginx_names(cfg.name)):
        if owner := other(claims.names, name):
            return f"app.name: Nginx name {name} is also used by app {owner}"
    return None


def _claim(cfg: AppConfig, claims: _Claims) -> None:
    claims.slot_ports.update({cfg.slots.blue_port: cfg.name, cfg.slots.green_port: cfg.name})
    claims.listen_ports.setdefault(cfg.nginx.listen_port, cfg.name)
    if cfg.tls is not None:
        claims.https_ports.setdefault(cfg.tls.listen_port, cfg.name)
    claims.files.update({cfg.nginx.upstream_file: cfg.name, cfg.nginx.active_file: cfg.name})
    claims.names.update(dict.fromkeys(nginx_names(cfg.name), cfg.name))


def load_app_dir(directory: Path, running: Mapping[str, AppConfig] | None = None) -> AppDir:
    """Load every ``*.toml`` in ``directory`` and check the apps against each other.

    One bad file never hides the others: it lands in ``errors`` with one line. On a clash
    (shared slot port, a slot port that is an Nginx listen port, a shared upstream/active
    file or Nginx name) an app in ``running`` (the daemon's current apps, on a reload) keeps
    what its running config holds, so adding or editing a file never takes a running app
    away; otherwise the app whose name sorts first wins. Never file times: touching a file
    must not change the verdict.
    """
    running = running or {}
    loaded: list[AppConfig] = []
    errors: dict[str, str] = {}
    for path in sorted(Path(directory).glob("*.toml")):
        try:
            cfg = load_config(path)
        except ConfigError as e:
            errors[path.stem] = e.message
            continue
        if cfg.name != path.stem:
            errors[path.stem] = (f"{path}: app.name: is {cfg.name!r} but the file is "
                                 f"{path.name}; rename it to {cfg.name}.toml")
            continue
        loaded.append(cfg)
    claims = _Claims({}, {}, {}, {}, {})
    present = {cfg.name for cfg in loaded} | set(errors)
    for name, cfg in sorted(running.items()):
        if name in present:  # its running config holds its resources until replaced
            _claim(cfg, claims)
    apps: dict[str, AppConfig] = {}
    for cfg in sorted(loaded, key=lambda c: (c.name not in running, c.name)):
        clash = _conflict(cfg, claims)
        if clash:
            errors[cfg.name] = f"{cfg.path}: {clash}"
            continue
        _claim(cfg, claims)
        apps[cfg.name] = cfg
    return AppDir(apps=dict(sorted(apps.items())), errors=dict(sorted(errors.items())))
