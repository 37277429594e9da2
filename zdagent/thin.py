"""The ``zdagent`` command's entry point, and its fast path: a thin client of the daemon.

``zdagent --version``, and ``deploy``/``rollback``/``status`` of an app the running daemon
manages, are served here with the standard library only. Importing Typer and Rich, the
Docker SDK, httpx or the engine costs 0.1-0.4 s per command, all of which the daemon has
already paid (docs/benchmarks.md, "CLI latency"). Anything else (help, ``--local``, an
option this parser does not know, no daemon, a config the daemon does not run) goes to the
full CLI, :mod:`zdagent.cli`, which decides exactly as it always did. Nothing is printed
before that hand-over, so the full CLI's output is never doubled.
"""

from __future__ import annotations

import os
import sys

from zdagent.errors import ZdError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from zdagent.client import DaemonClient

CONFIG_ENV, SOCKET_ENV = "ZDAGENT_CONFIG", "ZDAGENT_SOCKET"
DEFAULT_CONFIG = "/etc/zdagent/zdagent.toml"  # zdagent.config.DEFAULT_CONFIG_PATH (tested)

_FLAGS = {"--json": "json", "--no-wait": "no_wait"}
_VALUES = {"--config": "config", "-c": "config", "--socket": "socket", "--to": "to"}
_ALLOWED = {"status": {"config", "socket", "json"},
            "deploy": {"config", "socket", "json", "no_wait"},
            "rollback": {"config", "socket", "json", "no_wait", "to"}}


class Call:
    """A daemon-bound command line this module serves: verb, options, deploy's VERSION."""

    def __init__(self, verb: str, opts: dict[str, Any], version: str | None) -> None:
        self.verb = verb
        self.opts = opts
        self.version = version


def parse(argv: list[str]) -> Call | None:
    """The command line if it is one this module serves exactly, else None (full CLI)."""
    if not argv or argv[0] not in _ALLOWED:
        return None
    verb, opts, positional = argv[0], {}, []
    args = iter(argv[1:])
    for arg in args:
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _FLAGS and not eq:
            key, val = _FLAGS[name], True
        elif name in _VALUES:
            key, val = _VALUES[name], value if eq else next(args, "")
            if not val or val.startswith("-"):
                return None
        else:
            return None  # --help, --local, typos: the full CLI answers them
        if key not in _ALLOWED[verb]:
            return None
        opts[key] = val
    if len(positional) != (1 if verb == "deploy" else 0):
        return None
    return Call(verb, opts, positional[0] if positional else None)


def main() -> None:
    """``zdagent``: the fast path when it applies, otherwise the full Typer CLI.

    Ctrl-C anywhere (even before the full CLI's own handler is set up) is one line, 130."""
    try:
        _main()
    except KeyboardInterrupt:
        _error("interrupted", "the daemon finishes an operation it has started; "
                              "`zdagent status` shows the outcome")
        sys.exit(130)


def _main() -> None:
    argv = sys.argv[1:]
    if argv == ["--version"]:
        from zdagent import __version__

        sys.stdout.write(f"zdagent {__version__}\n")
        sys.exit(0)
    call = parse(argv)
    if call is not None:
        code = serve(call)
        if code is not None:
            sys.exit(code)
    from zdagent.cli import main as full_main

    full_main()


def serve(call: Call) -> int | None:
    """Run ``call`` through the daemon; None (having printed nothing) if it does not apply."""
    from zdagent.client import DEFAULT_SOCKET, DaemonClient

    socket_path = call.opts.get("socket") or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    config = call.opts.get("config") or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    client = DaemonClient(socket_path)
    try:
        apps = client.get("/v1/status").get("apps")
    except (OSError, ValueError, ZdError):
        return None  # not running, no permission, garbage: the full CLI says which
    name = managed_app(apps, config)
    if name is None:
        return None
    try:
        return _run(client, call, name)
    except KeyboardInterrupt:
        _error("interrupted", "the daemon finishes an operation it has started; "
                              "`zdagent status` shows the outcome")
        return 130
    except ZdError as e:
        _error(e.message, e.hint)
        return int(e.exit_code)
    except (OSError, ValueError) as e:
        from zdagent.client import LOST_HINT

        _error(f"lost the connection to the daemon: {e}", LOST_HINT)
        return 3
    except Exception as e:  # a bug: one line, the traceback in a log
        return _bug(e)


def managed_app(apps: Any, config: str) -> str | None:
    """The daemon's app for this config file: the same file, else the same app name."""
    if not isinstance(apps, dict):
        return None
    mine = os.path.realpath(config)
    for name, info in apps.items():
        if isinstance(info, dict) and isinstance(info.get("config"), str) \
                and os.path.realpath(info["config"]) == mine:
            return str(name)
    try:
        import tomllib

        with open(mine, "rb") as f:
            name = tomllib.load(f)["app"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or invalid: the full CLI explains
    return name if isinstance(name, str) and name in apps else None


def _run(client: DaemonClient, call: Call, name: str) -> int:
    import json

    from zdagent import render

    as_json = bool(call.opts.get("json"))
    if call.verb == "status":
        from zdagent.client import READ_TIMEOUT

        data = client.get(f"/v1/apps/{name}/status", timeout=READ_TIMEOUT)
        if as_json:
            sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(render.status_text(render.Painter(sys.stdout), data) + "\n")
        return 0
    no_wait = bool(call.opts.get("no_wait"))
    body: dict[str, Any] = ({"version": call.version, "no_wait": no_wait}
                            if call.verb == "deploy" else
                            {"to": call.opts.get("to"), "no_wait": no_wait})
    paint = render.Painter(sys.stderr)
    for item in client.stream(f"/v1/apps/{name}/{call.verb}", body):
        if "event" in item:
            ev = item["event"]
            _err(render.event_line(paint, ev["kind"], ev["message"]))
        elif "result" in item:
            result = item["result"]
            if as_json:
                sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
            else:
                verb = "deployed" if call.verb == "deploy" else "rolled back to"
                _err(render.result_line(paint, result, verb))
            return 0
        elif "error" in item:
            from zdagent.client import DaemonError

            raise DaemonError.from_reply(item["error"])
    from zdagent.errors import DeployFailed

    raise DeployFailed("the daemon closed the connection without a result",
                       hint="check the daemon's log (journalctl -u zdagent)")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _error(message: str, hint: str) -> None:
    from zdagent import render

    _err(render.error_lines(render.Painter(sys.stderr), message, hint))


def _bug(e: Exception) -> int:
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="zdagent-error-", suffix=".log",
                                     delete=False) as f:
        traceback.print_exc(file=f)
    _error(f"unexpected error: {type(e).__name__}: {e}", f"this is a bug; details in {f.name}")
    return 70
