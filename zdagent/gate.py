"""The SSH gate: the only thing a deploy key can run.

Installed as an ``authorized_keys`` forced command
(``command="zdagent ssh-gate --apps web --verbs status,history",restrict ssh-ed25519 …``), it
reads ``SSH_ORIGINAL_COMMAND`` and allows exactly::

    deploy <app> <ref-or-version> [--canary]
    rollback <app> [--to VERSION]
    status <app> [--json]
    history <app> [--json]
    logs <app> [--slot S] [-f] [--since 10m] [--tail N]   only with --verbs naming logs
    exec <app> CMD [ARG...]                                only with --verbs naming exec
    promote <app> / abort <app>        (a running canary)  only with --verbs naming them

``--apps`` and ``--verbs`` (comma-separated) narrow one key to some apps and verbs, e.g. a
read-only key for a dashboard. Without them a key may run the four deploy verbs on every app;
``logs`` and ``exec`` (which read the app's output or run code with its secrets) need a key
scoped for them explicitly (``--verbs logs,exec``).

Parsing is pure (``parse``) and strict: a small character set, length limits, a known app, and
per-argument patterns. Anything else is refused with one line and exit code 2, before anything
runs, and every verdict is logged. An allowed command runs the same CLI command in-process: no
shell ever sees the input.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zdagent.config import APP_NAME_RE, VERSION_RE, AppConfig, GitSource
from zdagent.errors import ZdError
from zdagent.gitsource import check_ref

MAX_COMMAND = 256
ALLOWED_CHARS = re.compile(r"^[A-Za-z0-9 ._/@:=-]*$")
DEFAULT_VERBS = ("deploy", "rollback", "status", "history")
EXPLICIT_VERBS = ("logs", "exec", "promote", "abort")  # only for a key whose --verbs names them
CANARY_VERBS = ("promote", "abort")  # steer a running canary: the daemon's, like deploy
VERBS = DEFAULT_VERBS + EXPLICIT_VERBS
DEFAULT_LOG = Path("/var/log/zdagent/ssh-gate.log")
LOG_ENV = "ZDAGENT_GATE_LOG"


class GateRefused(Exception):
    """The command is not allowed; the message is safe to show the client."""


@dataclass(frozen=True)
class Scope:
    """What one key may do: None means any app / any verb."""

    apps: frozenset[str] | None = None
    verbs: frozenset[str] | None = None


def parse_scope(apps: str | None, verbs: str | None) -> Scope:
    """Parse the key's ``--apps``/``--verbs`` lists; a malformed list refuses everything."""
    def items(raw: str | None, what: str, ok: Callable[[str], bool]) -> frozenset[str] | None:
        if raw is None:
            return None
        names = [n.strip() for n in raw.split(",")]
        bad = [n for n in names if not ok(n)]
        if bad or not names:
            raise GateRefused(f"this key's --{what} list is invalid ({bad[0][:40]!r}); "
                              "ask the operator to fix authorized_keys")
        return frozenset(names)

    return Scope(items(apps, "apps", lambda n: bool(APP_NAME_RE.fullmatch(n))),
                 items(verbs, "verbs", lambda n: n in VERBS))


@dataclass(frozen=True)
class GateCommand:
    verb: str
    app: str
    args: tuple[str, ...]  # validated CLI arguments after the verb (without --config)


def parse(original: str | None, load_app: Callable[[str], AppConfig | None],
          scope: Scope | None = None) -> GateCommand:
    """Validate an SSH_ORIGINAL_COMMAND; raise GateRefused with a one-line reason.

    The key's scope is checked before the app's config is read, so an out-of-scope app
    learns nothing (not even whether it exists)."""
    scope = scope or Scope()
    if original is None:
        raise GateRefused("interactive sessions are not allowed: this key only runs "
                          "`deploy|rollback|status|history <app> …`")
    if not original.strip():
        raise GateRefused("empty command")
    if len(original) > MAX_COMMAND:
        raise GateRefused(f"command longer than {MAX_COMMAND} characters")
    bad = sorted({c for c in original if not ALLOWED_CHARS.fullmatch(c)})
    if bad:
        shown = " ".join(repr(c) for c in bad[:5])
        raise GateRefused(f"forbidden character(s) {shown}")
    words = original.split()
    verb, rest = words[0], words[1:]
    if verb not in VERBS:
        raise GateRefused(f"unknown command {verb[:32]!r}; allowed: {', '.join(VERBS)}")
    allowed = scope.verbs if scope.verbs is not None else frozenset(DEFAULT_VERBS)
    if verb not in allowed:
        hint = (f" ({', '.join(EXPLICIT_VERBS)} need a key scoped for them: ssh-gate "
                f"--verbs ...,{verb})" if verb in EXPLICIT_VERBS else "")
        raise GateRefused(f"this key may not run {verb!r}; allowed: "
                          f"{', '.join(sorted(allowed))}{hint}")
    if not rest:
        raise GateRefused(f"usage: {verb} <app> …")
    app = rest[0]
    if scope.apps is not None and app not in scope.apps:
        raise GateRefused(f"this key may not touch app {app[:40]!r}")
    cfg = load_app(app) if APP_NAME_RE.fullmatch(app) else None
    if cfg is None:
        raise GateRefused(f"unknown app {app[:40]!r}")
    return GateCommand(verb, app, _arguments(verb, rest[1:], cfg))


def _arguments(verb: str, args: list[str], cfg: AppConfig) -> tuple[str, ...]:
    if verb == "deploy":
        canary = args[1:] == ["--canary"]
        if len(args) != 1 and not (len(args) == 2 and canary):
            raise GateRefused("usage: deploy <app> <ref-or-version> [--canary]")
        target = args[0]
        if isinstance(cfg.source, GitSource):
            try:
                check_ref(target)
            except ZdError as e:
                raise GateRefused(e.message) from None
        elif not VERSION_RE.fullmatch(target):
            raise GateRefused(f"invalid version {target[:40]!r}")
        return (target, "--canary") if canary else (target,)
    if verb == "rollback":
        if not args:
            return ()
        if len(args) == 2 and args[0] == "--to" and VERSION_RE.fullmatch(args[1]):
            return ("--to", args[1])
        raise GateRefused("usage: rollback <app> [--to VERSION]")
    if verb == "logs":
        return _logs_arguments(args)
    if verb == "exec":
        if args[:1] == ["--"]:
            args = args[1:]
        if not args or args[0].startswith("-"):
            raise GateRefused("usage: exec <app> CMD [ARG...]")
        return ("--", *args)  # argv of a new container: no shell here, none there
    if args in ([], ["--json"]):
        return tuple(args)
    raise GateRefused(f"usage: {verb} <app> [--json]")


_LOGS_VALUES = {
    "--slot": re.compile(r"^(live|standby|blue|green)$"),
    "--since": re.compile(r"^(\d{1,9}[smhd]|\d{4}-\d{2}-\d{2}(T[0-9:]{2,8})?)$"),
    "--tail": re.compile(r"^\d{1,6}$"),
}


def _logs_arguments(args: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    it = iter(args)
    for a in it:
        if a in ("-f", "--follow") and "-f" not in out:
            out.append("-f")
            continue
        pattern = _LOGS_VALUES.get(a)
        value = next(it, "") if pattern else ""
        if pattern is None or a in out or not pattern.fullmatch(value):
            raise GateRefused("usage: logs <app> [--slot live|standby|blue|green] [-f] "
                              "[--since 10m] [--tail N]")
        out += [a, value]
    return tuple(out)


def log_verdict(original: str | None, verdict: str) -> None:
    """Append one line per gate call: time, client address, command (repr, capped), verdict."""
    path = Path(os.environ.get(LOG_ENV) or DEFAULT_LOG)
    client = (os.environ.get("SSH_CLIENT") or "local").split(" ")[0]
    shown = "<interactive>" if original is None else repr(original[:300])
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} client={client} command={shown} {verdict}\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line)
    except OSError:
        pass  # a refusal must never turn into a traceback because the log is unwritable
