"""The ``zdagent`` command: parse, call the engine, render its events and results.

The console script enters through :mod:`zdagent.thin`, which serves ``--version`` and the
daemon's common commands without importing this module (Typer, Rich); everything else lands
here. No deploy logic lives here. Errors the engine expects print as one line plus a hint and exit
with their documented code; anything unexpected prints one line and the path of a log holding
the traceback (exit 70).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zdagent import __version__, render
from zdagent.config import AppConfig, config_path, load_config
from zdagent.errors import UsageError, ZdError, as_known
from zdagent.events import Event

EXIT_INTERNAL = 70

HELP = """Zero-downtime blue-green deploys of one containerised app with Docker and Nginx.

\b
Exit codes:
  0  success
  1  the deploy/rollback failed; the live app is unchanged or was restored
  2  usage or config error; nothing was changed
  3  environment problem (Docker unreachable, Nginx missing or not running, disk full)
  70 internal error (a bug); the message names a log with details
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None)
config_app = typer.Typer(help="Validate or print app configs.", no_args_is_help=True)
nginx_app = typer.Typer(help="Render the Nginx files zdagent manages.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(nginx_app, name="nginx")
notify_app = typer.Typer(help="Notification channels ([[notify]] in the app config): send a "
                              "test, show the outbox.", no_args_is_help=True)
app.add_typer(notify_app, name="notify")
tls_app = typer.Typer(help="HTTPS: obtain and renew the site's certificate with certbot "
                           "(webroot), reload Nginx once per new certificate.",
                      no_args_is_help=True)
app.add_typer(tls_app, name="tls")

# Piped output (CI logs, ssh) is not squeezed into 80 columns.
err = Console(stderr=True, highlight=False, soft_wrap=True,
              width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)

ConfigOpt = Annotated[str | None, typer.Option(
    "--config", "-c", envvar="ZDAGENT_CONFIG", show_envvar=True,
    help="App config (TOML). Default: /etc/zdagent/zdagent.toml")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
NoWaitOpt = Annotated[bool, typer.Option(
    "--no-wait", help="Fail at once if another deploy of this app holds the lock.")]
LocalOpt = Annotated[bool, typer.Option(
    "--local", help="Run in this process even when the daemon runs (same engine, same "
                    "per-app lock).")]
SocketOpt = Annotated[str | None, typer.Option(
    "--socket", envvar="ZDAGENT_SOCKET", show_envvar=True,
    help="The daemon's control socket. Default: /run/zdagent/zdagent.sock")]


def _fail(message: str, hint: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}")
    raise typer.Exit(code)


@contextmanager
def _guard() -> Iterator[None]:
    """Turn known errors into one line + hint; log unexpected ones."""
    try:
        yield
    except ZdError as e:
        _fail(e.message, e.hint, e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", "the next command reconciles any half-done deploy", 130)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:
        known = as_known(e)  # a full disk is the operator's to fix, not a bug
        if known is not None:
            _fail(known.message, known.hint, known.exit_code)
        with tempfile.NamedTemporaryFile("w", prefix="zdagent-error-", suffix=".log",
                                         delete=False) as f:
            traceback.print_exc(file=f)
        _fail(f"unexpected error: {type(e).__name__}: {e}",
              f"this is a bug; details in {f.name}", EXIT_INTERNAL)


def _load(config: str | None) -> AppConfig:
    return load_config(config_path(config))


class ProgressRenderer:
    """Renders engine events on stderr: a line per phase, a spinner while it runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.spinner: Any = None

    def __call__(self, ev: Event) -> None:
        if ev.kind == "phase-start":
            self._stop()
            self.console.print(f"[bold cyan]▸[/] {escape(ev.message)}")
            if self.console.is_terminal:
                self.spinner = self.console.status(escape(ev.message))
                self.spinner.start()
        elif ev.kind == "phase-end":
            self._stop()
            self.console.print(f"  [green]✓[/] {escape(ev.message)}")
        elif ev.kind == "log":
            self.console.print(f"    [dim]{escape(ev.message)}[/]")
        elif ev.kind == "warn":
            self.console.print(f"[yellow]![/] {escape(ev.message)}")
        else:
            self.console.print(escape(ev.message))

    def _stop(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()
            self.spinner = None

    def close(self) -> None:
        self._stop()


def _with_engine(cfg: AppConfig, fn: Callable[[Any], Any]) -> Any:
    from zdagent.deploy import Engine

    renderer = ProgressRenderer(err)
    try:
        with Engine(cfg, renderer) as engine:
            return fn(engine)
    finally:
        renderer.close()


def _daemon(cfg: AppConfig, socket: str | None, local: bool, quiet: bool = False) -> Any:
    """A client for the running daemon that manages ``cfg``'s app, else None (run locally).

    The same stdlib client as the thin path: no engine, Docker SDK or httpx on this path.
    """
    from zdagent.client import DEFAULT_SOCKET, DaemonClient

    if local:
        return None
    path = socket or DEFAULT_SOCKET
    client = DaemonClient(path)
    try:
        info = client.get("/v1/status")
    except PermissionError:
        _fail(f"no permission to use the daemon socket {path}",
              "join the socket's group (see `zdagent daemon --help`), or pass --local", 3)
    except (OSError, ValueError, ZdError):
        if not quiet:
            err.print(f"[dim]note: the zdagent daemon is not running ({path}); running in this "
                      "process. Start it with `systemctl start zdagent`, or pass --local.[/]")
        return None
    if cfg.name not in info.get("apps", {}):
        if not quiet:
            err.print(f"[dim]note: the daemon does not manage {cfg.name}; running in this "
                      "process.[/]")
        return None
    return client


@contextmanager
def _daemon_link() -> Iterator[None]:
    """The daemon going away (or garbling) mid-request: exit 3 with a hint, not a bug."""
    from zdagent.client import LOST_HINT

    try:
        yield
    except (OSError, ValueError) as e:
        from zdagent.errors import EnvironmentProblem

        raise EnvironmentProblem(f"lost the connection to the daemon: "
                                 f"{e or type(e).__name__}", LOST_HINT) from None


def _ask(client: Any, url: str) -> Any:
    """A read from the daemon, with the same timeout as the thin client's."""
    from zdagent.client import READ_TIMEOUT

    with _daemon_link():
        return client.get(url, timeout=READ_TIMEOUT)


def _stream(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Render a daemon operation's events live; return its result (a dict) or raise."""
    from zdagent.client import DaemonError
    from zdagent.errors import DeployFailed

    renderer = ProgressRenderer(err)
    try:
        with _daemon_link():
            for item in client.stream(url, body):
                if "event" in item:
                    ev = item["event"]
                    renderer(Event(ev["kind"], ev["message"], ev.get("phase")))
                elif "result" in item:
                    return dict(item["result"])
                elif "error" in item:
                    raise DaemonError.from_reply(item["error"])
    finally:
        renderer.close()
    raise DeployFailed("the daemon closed the connection without a result",
                       hint="check the daemon's log (journalctl -u zdagent)")


def _operate(config: str | None, socket: str | None, local: bool, what: str,
             body: dict[str, Any], in_process: Callable[[Any], Any]) -> Any:
    """Run a deploy/rollback through the daemon when it manages the app, else in-process."""
    cfg = _load(config)
    client = _daemon(cfg, socket, local)
    if client is not None:
        return _stream(client, f"/v1/apps/{cfg.name}/{what}", body)
    try:
        return _with_engine(cfg, in_process)
    finally:
        _flush_notifications(cfg)


FLUSH_SECONDS = 5.0


def _flush_notifications(cfg: AppConfig) -> None:
    """In-process: deliver what the operation queued, bounded; the rest waits in the outbox
    for the daemon or the next run (a deploy never fails for a notification)."""
    if not cfg.notify:
        return
    from zdagent.notifications.deliver import flush

    done = flush(cfg, FLUSH_SECONDS)
    if done is not None and (done.left or done.failed):
        why = "; ".join(f"{name}: {error}" for name, error in done.failed.items())
        err.print(f"[yellow]![/] {done.left or 'some'} notification(s) not delivered yet"
                  + (f" ({escape(why)})" if why else "")
                  + "; kept in the outbox: the daemon or the next run retries")


def _print_result(result: Any, as_json: bool, verb: str) -> None:
    """A Result from the engine, or its dict from the daemon."""
    data = result if isinstance(result, dict) else result.to_dict()
    if as_json:
        out.print_json(json.dumps(data))
        return
    err.file.write(render.result_line(render.Painter(err.file), data, verb) + "\n")


@app.command()
def deploy(
    version: Annotated[str, typer.Argument(
        metavar="VERSION", help="The image tag to build or pull (e.g. v2), or for a git "
                                "source a branch, tag or sha.")],
    config: ConfigOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
    socket: SocketOpt = None,
    canary: Annotated[bool, typer.Option(
        "--canary", help="Move traffic step by step ([canary] steps, step_seconds), judging "
                         "each step by its traffic; needs the daemon, which owns the steps. "
                         "`zdagent promote` / `zdagent abort` steer it.")] = False,
) -> None:
    """Deploy VERSION into the inactive slot and switch to it with zero downtime.

    Steps: build or pull -> start the candidate on 127.0.0.1 -> probe until healthy ->
    render the upstream, nginx -t, reload, verify -> drain the old slot, keep it as standby.
    Any failure before the switch leaves the live slot serving untouched. A git-source app
    takes a ref (branch, tag or sha) and deploys the commit it names.
    """
    with _guard():
        if canary:
            result = _through_daemon(config, socket, local, "deploy",
                                     {"version": version, "no_wait": no_wait, "canary": True},
                                     "a canary runs for minutes and takes promote/abort")
        else:
            result = _operate(config, socket, local, "deploy",
                              {"version": version, "no_wait": no_wait},
                              lambda e: e.deploy(version, wait=not no_wait))
        _print_result(result, as_json, "deployed")


def _through_daemon(config: str | None, socket: str | None, local: bool, what: str,
                    body: dict[str, Any], why: str) -> dict[str, Any]:
    """An operation only the daemon can own: refused (exit 3) without it, never run here."""
    cfg = _load(config)
    client = None if local else _daemon(cfg, socket, local, quiet=True)
    if client is None:
        _fail(f"{why}: the zdagent daemon must own it, and it does not run {cfg.name}"
              + (" (--local)" if local else ""),
              "start the daemon (`systemctl start zdagent`) with this app in its config "
              "directory, then run the same command (without --local)", 3)
    return _stream(client, f"/v1/apps/{cfg.name}/{what}", body)


@app.command()
def promote(config: ConfigOpt = None, as_json: JsonOpt = False,
            socket: SocketOpt = None) -> None:
    """Promote the running canary now: the candidate takes all traffic (verified switch)."""
    with _guard():
        result = _through_daemon(config, socket, False, "promote", {},
                                 "promote steers a running canary")
        _steered(result, as_json, "promote: the candidate takes all traffic now "
                                  "(`zdagent status` shows the outcome)")


@app.command()
def abort(config: ConfigOpt = None, as_json: JsonOpt = False,
          socket: SocketOpt = None) -> None:
    """Abort the running canary now: all traffic back to the stable slot (verified), the
    candidate removed, the abort recorded in history."""
    with _guard():
        result = _through_daemon(config, socket, False, "abort", {},
                                 "abort steers a running canary")
        _steered(result, as_json, "abort: all traffic goes back to the stable slot now "
                                  "(`zdagent status` shows the outcome)")


def _steered(result: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        out.print_json(json.dumps(result))
    else:
        err.print(line)


@app.command()
def maintenance(
    state: Annotated[str, typer.Argument(metavar="on|off", help="on: Nginx answers 503 with "
                                         "a page and Retry-After; off: the app again.")],
    message: Annotated[str | None, typer.Option(
        "--message", help="The page's text (HTML-escaped; at most 500 characters).")] = None,
    retry_after: Annotated[int, typer.Option(
        "--retry-after", min=1, max=86400, help="Seconds for the Retry-After header.")
    ] = 120,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
    socket: SocketOpt = None,
) -> None:
    """Maintenance mode: Nginx answers every request with 503, a small page and
    Retry-After. The slots keep running and being probed; deploys still work; in njs mode
    no reload happens. `zdagent status` shows it."""
    from zdagent.nginx.maintenance import MAX_MESSAGE

    with _guard():
        if state not in ("on", "off"):
            _fail(f"maintenance takes on or off, not {state!r}", "zdagent maintenance on", 2)
        if message is not None and (not message.strip() or len(message) > MAX_MESSAGE):
            _fail(f"--message must hold 1 to {MAX_MESSAGE} characters",
                  "shorten the message; nothing was changed", 2)
        body: dict[str, Any] = {"on": state == "on", "retry_after": retry_after}
        if message is not None:
            body["message"] = message
        result = _operate(config, socket, local, "maintenance", body,
                          lambda e: {"maintenance": e.maintenance(
                              state == "on", *([message] if message else []),
                              retry_after=retry_after)})
        if as_json:
            out.print_json(json.dumps(result))
        elif result.get("maintenance"):
            err.print(f"maintenance is on: Nginx answers 503 (Retry-After {retry_after}s)")
        else:
            err.print("maintenance is off: Nginx serves the app")


@app.command()
def rollback(
    to: Annotated[str | None, typer.Option("--to", help="Redeploy this version from history "
                                                        "instead of switching to the standby.")
                  ] = None,
    config: ConfigOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
    socket: SocketOpt = None,
) -> None:
    """Switch traffic back to the standby slot (started and probed first if stopped)."""
    with _guard():
        result = _operate(config, socket, local, "rollback", {"to": to, "no_wait": no_wait},
                          lambda e: e.rollback(to=to, wait=not no_wait))
        _print_result(result, as_json, "rolled back to")


@app.command()
def status(config: ConfigOpt = None, as_json: JsonOpt = False, local: LocalOpt = False,
           socket: SocketOpt = None) -> None:
    """Show both slots, which one Nginx routes to (confirmed live), the last deploy, and
    (from the daemon) its own state and the app's watchdog."""
    with _guard():
        cfg = _load(config)
        client = _daemon(cfg, socket, local, quiet=as_json)
        if client is not None:
            data = _ask(client, f"/v1/apps/{cfg.name}/status")
        else:
            from zdagent.status import collect  # the engine: only when run in-process

            data = _with_engine(cfg, collect)
            data["daemon"] = None
        if as_json:
            out.print_json(json.dumps(data))
            return
        _render_status(data)


def _render_status(data: dict[str, Any]) -> None:
    """The thin client's plain renderer, so both paths print the same."""
    out.file.write(render.status_text(render.Painter(out.file), data) + "\n")


@app.command()
def history(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="How many entries.")] = 20,
    local: LocalOpt = False,
    socket: SocketOpt = None,
) -> None:
    """List past deploys and rollbacks, newest first, with outcome and phase timings.

    Read from the daemon when it manages the app (a deploy user needs no access to the
    state dir), else from the state dir directly."""
    with _guard():
        cfg = _load(config)
        client = _daemon(cfg, socket, local, quiet=True)
        if client is not None:
            records = _ask(client, f"/v1/apps/{cfg.name}/history?limit={limit}")["history"]
        else:
            records = _history_local(cfg, limit)
        if as_json:
            out.print_json(json.dumps(records))
            return
        _render_history(cfg.name, records)


def _history_local(cfg: AppConfig, limit: int) -> list[dict[str, Any]]:
    from zdagent.store import read_history

    return read_history(cfg.state_dir, cfg.name, limit)


def _render_history(name: str, records: list[dict[str, Any]]) -> None:
    table = Table(title=f"zdagent history: {name}", title_justify="left")
    for col in ("#", "when", "kind", "version", "slot", "outcome", "took", "by",
                "error / reason"):
        table.add_column(col, overflow="fold")
    for r in records:
        started, finished = r["started_at"], r.get("finished_at")
        took = f"{finished - started:.1f}s" if finished else "-"
        table.add_row(str(r["id"]), time.strftime("%m-%d %H:%M:%S", time.localtime(started)),
                      r["kind"], r.get("version") or "-",
                      f"{r.get('from_slot') or '-'}→{r.get('slot')}", r["outcome"], took,
                      r.get("user") or "-",
                      r.get("error") or (f"note: {r['notes']}" if r.get("notes") else "")
                      or r.get("reason") or "")
    out.print(table)


ConfigDirOpt = Annotated[str | None, typer.Option(
    "--config-dir", envvar="ZDAGENT_CONFIG_DIR", show_envvar=True,
    help="Directory of app configs, one <app>.toml each. Default: /etc/zdagent/apps")]


@app.command("ssh-gate")
def ssh_gate(
    config_dir: ConfigDirOpt = None,
    apps: Annotated[str | None, typer.Option(
        "--apps", help="Comma-separated apps this key may use (default: every app).")] = None,
    verbs: Annotated[str | None, typer.Option(
        "--verbs", help="Comma-separated verbs this key may run, e.g. status,history for a "
                        "read-only key (default: deploy,rollback,status,history; logs and "
                        "exec only when named here).")] = None,
    socket: SocketOpt = None,
) -> None:
    """Forced command for a deploy key: run only what SSH_ORIGINAL_COMMAND allows.

    \b
    In ~/.ssh/authorized_keys of the deploy user:
      command="zdagent ssh-gate --apps web",restrict ssh-ed25519 AAAA... github-actions
    Allowed: deploy <app> <ref-or-version> | rollback <app> [--to VERSION]
             status <app> [--json] | history <app> [--json]
             logs <app> [--slot S] [-f] [--since D] [--tail N] | exec <app> CMD [ARG...]
             (logs and exec only for a key with --verbs naming them)
    --apps / --verbs narrow the key. Anything else (shell syntax, an unknown or out-of-scope
    verb or app, an interactive session) is refused with exit code 2 and logged to
    /var/log/zdagent/ssh-gate.log ($ZDAGENT_GATE_LOG). A user who cannot read the app
    configs (not in the zdagent group) gets exit code 3.
    """
    from zdagent import gate
    from zdagent.config import DEFAULT_CONFIG_DIR, app_config_path

    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    directory = Path(config_dir) if config_dir else DEFAULT_CONFIG_DIR
    with _guard():
        def load(name: str) -> AppConfig | None:
            path = app_config_path(directory, name)
            return load_config(path) if path else None

        if not os.access(directory, os.R_OK | os.X_OK):
            gate.log_verdict(original, f"refused: cannot read {directory}")
            _fail(f"refused: this user cannot read the app configs in {directory}",
                  "add the deploy user to the daemon's group (zdagent init --group), "
                  "then log in again", 3)
        try:
            cmd = gate.parse(original, load, gate.parse_scope(apps, verbs))
        except gate.GateRefused as e:
            gate.log_verdict(original, f"refused: {e}")
            _fail(f"refused: {e}", "", 2)
        gate.log_verdict(original, "allowed")
        path = app_config_path(directory, cmd.app)
        argv = [cmd.verb, "--config", str(path)]
        if socket and cmd.verb in (*gate.DEFAULT_VERBS, *gate.CANARY_VERBS):
            argv += ["--socket", socket]
        argv += cmd.args  # last: exec's command follows its `--`
        code = _run_in_process(argv)
        gate.log_verdict(original, f"exit={code}")
        raise typer.Exit(code)


def _run_in_process(argv: list[str]) -> int:
    """Run one zdagent command here and return its exit code (no click import needed:
    standalone mode ends every command, success included, with SystemExit)."""
    try:
        app(argv, prog_name="zdagent", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


@app.command()
def daemon(
    config_dir: ConfigDirOpt = None,
    socket: SocketOpt = None,
    socket_group: Annotated[str | None, typer.Option(
        help="Group that owns the control socket (mode 0660); its members may deploy.")
    ] = None,
    http: Annotated[str | None, typer.Option(
        metavar="ADDR:PORT", envvar="ZDAGENT_HTTP",
        help="Serve the status page and Prometheus /metrics there, e.g. 127.0.0.1:9361 "
             "(off by default). A non-loopback address needs --http-token-file.")] = None,
    http_token_file: Annotated[Path | None, typer.Option(
        envvar="ZDAGENT_HTTP_TOKEN_FILE",
        help="File holding the bearer token that /api/status and /metrics ask for.")
    ] = None,
) -> None:
    """Run the daemon: watchdog + control socket for every app in the config directory.

    Meant for systemd (Type=notify, see systemd/zdagent.service): READY=1 once every app
    was reconciled, STATUS= kept current, WATCHDOG=1 from the main loop. With --http, a
    read-only status page and Prometheus metrics (reach 127.0.0.1 with `ssh -L`).
    """
    from zdagent import daemon as daemon_mod
    from zdagent.client import DEFAULT_SOCKET
    from zdagent.config import DEFAULT_CONFIG_DIR

    with _guard():
        daemon_mod.run(Path(config_dir) if config_dir else DEFAULT_CONFIG_DIR,
                       Path(socket or DEFAULT_SOCKET), socket_group, http, http_token_file)


@app.command()
def init(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The new app's name.")],
    image: Annotated[str | None, typer.Option(help="Pull source: image repository.")] = None,
    build_context: Annotated[str | None, typer.Option(help="Build source: context dir.")
                             ] = None,
    git_repo: Annotated[str | None, typer.Option(help="Git source: repository on this host.")
                        ] = None,
    port: Annotated[int, typer.Option(help="Port the app listens on in the container.")
                    ] = 8080,
    blue_port: Annotated[int | None, typer.Option(
        help="Host port of the blue slot (127.0.0.1). Default: the first port from 18001 "
             "that no other app uses and nothing has bound.")] = None,
    green_port: Annotated[int | None, typer.Option(
        help="Host port of the green slot (127.0.0.1). Default: the next such port.")
    ] = None,
    listen: Annotated[str, typer.Option(help="Nginx listen (port or address:port).")] = "80",
    server_name: Annotated[str, typer.Option(help="Nginx server_name.")] = "_",
    health_path: Annotated[str, typer.Option(help="Health check path.")] = "/",
    root: Annotated[str, typer.Option(help="Install everything under this directory "
                                           "instead of / (paths inside the files too).")
                    ] = "/",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files (never "
                                                        "the live upstream).")] = False,
    group: Annotated[str, typer.Option(
        help="Group allowed to use the daemon's socket and read app configs (created if "
             "missing); put the deploy user in it.")] = "zdagent",
    switch_mode: Annotated[str | None, typer.Option(
        help="reload or njs. Default: njs where Nginx's njs module is installed "
             "(no reload, nothing dropped), else reload.")] = None,
    tls: Annotated[bool, typer.Option(
        "--tls", help="HTTPS with a certbot certificate for --server-name: the site serves "
                      "ACME challenges now; `zdagent tls issue` obtains the certificate and "
                      "turns on the HTTPS server and the redirect.")] = False,
    https_listen: Annotated[str, typer.Option(
        help="With --tls: Nginx's HTTPS listen (port or address:port).")] = "443",
    tls_email: Annotated[str, typer.Option(
        help="With --tls: the ACME account's e-mail (expiry notices).")] = "",
) -> None:
    """Write a new app's config, Nginx site and placeholder upstream, and install the
    daemon's systemd unit; set up the deploy group. Prints each file; refuses to overwrite
    without --force."""
    import shutil as _shutil

    from zdagent import scaffold

    with _guard():
        sources = [(k, v) for k, v in (("image", image), ("build", build_context),
                                       ("git", git_repo)) if v]
        if len(sources) != 1:
            raise UsageError("give exactly one of --image, --build-context, --git-repo")
        kind, value = sources[0]
        if switch_mode not in (None, "reload", "njs"):
            raise UsageError(f"--switch-mode must be reload or njs, got {switch_mode!r}")
        if kind != "image":
            value = str(Path(value).resolve())
        options = scaffold.InitOptions(
            app=app_name, root=Path(root).resolve(), source=kind, source_value=value,
            port=port, blue_port=blue_port, green_port=green_port, listen=listen,
            server_name=server_name, health_path=health_path, force=force, group=group,
            switch_mode=switch_mode,
            tls=scaffold.TlsOptions(https_listen, tls_email) if tls else None)
        # The unit runs the zdagentd of this installation (the venv it lives in), not
        # whichever one PATH finds first.
        beside = Path(sys.executable).parent / "zdagent"
        executable = (str(beside) if beside.with_name("zdagentd").exists()
                      else _shutil.which("zdagent") or str(Path(sys.argv[0]).resolve()))
        for line in scaffold.write(options, executable):
            out.print(line, markup=False)
        out.print(scaffold.enable_unit(options.root), markup=False)
        app_config = f"{options.root}/etc/zdagent/apps/{app_name}.toml"
        out.print("next: check the config, `nginx -t && nginx -s reload`, "
                  + (f"`zdagent tls issue --config {app_config}`, " if tls else "")
                  + f"then `zdagent deploy <version> --config {app_config}`", markup=False)


@config_app.command("check")
def config_check(
    config: ConfigOpt = None,
    all_apps: Annotated[bool, typer.Option(
        "--all", help="Check every app of the config directory, also against each other "
                      "(ports, upstream files), as the daemon does.")] = False,
    config_dir: ConfigDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate the config file and touch nothing (exit 2 with file and key on error)."""
    from zdagent.config import DEFAULT_CONFIG_DIR, load_app_dir

    with _guard():
        if not all_apps:
            cfg = _load(config)
            where = "swarm services on *:" if cfg.backend == "swarm" else "127.0.0.1:"
            err.print(f"[green]ok[/] {cfg.path}: app {cfg.name}, slots {where}"
                      f"{cfg.slots.blue_port}/{cfg.slots.green_port}")
            for warning in _config_warnings(cfg):
                err.print(f"[yellow]![/] {escape(warning)}")
            return
        directory = Path(config_dir) if config_dir else DEFAULT_CONFIG_DIR
        if not directory.is_dir():
            raise UsageError(f"config directory not found: {directory}",
                             hint="pass --config-dir DIR or set ZDAGENT_CONFIG_DIR")
        result = load_app_dir(directory)
        if as_json:
            out.print_json(json.dumps({
                "apps": {n: {"ok": True, "path": str(c.path), "warnings": _config_warnings(c)}
                         for n, c in result.apps.items()}
                | {n: {"ok": False, "error": m} for n, m in result.errors.items()}}))
        else:
            for name in sorted({*result.apps, *result.errors}):
                if name in result.apps:
                    c = result.apps[name]
                    out.print(f"ok    {name}: {c.path}, slots 127.0.0.1:{c.slots.blue_port}/"
                              f"{c.slots.green_port}, nginx {c.nginx.listen}", markup=False)
                    for warning in _config_warnings(c):
                        out.print(f"warn  {name}: {warning}", markup=False)
                else:
                    out.print(f"error {name}: {result.errors[name]}", markup=False)
            if not result.apps and not result.errors:
                err.print(f"no *.toml in {directory}")
        if result.errors:
            raise typer.Exit(2)


def _config_warnings(cfg: AppConfig) -> list[str]:
    """What loads but will bite: hooks that fail when they run, the Docker socket mounted."""
    from zdagent.config import risky_volumes
    from zdagent.hooks import hook_problems

    return [*(f"{problem} (the hook fails when it runs)" for problem in hook_problems(cfg.hooks)),
            *(f"container.volumes: {volume} reaches the Docker socket: the app gets root on "
              "this host and control of its slots" for volume in risky_volumes(cfg.container)),
            *(["swarm: the slot ports are published on every interface of every node (Swarm "
               "cannot bind 127.0.0.1): firewall them (`zdagent doctor` checks; "
               "docs/scaling.md)"] if cfg.backend == "swarm" else []),
            *(["swarm: publish_mode = \"task-ports\": each task publishes on a port Docker "
               "picks (its ephemeral range, every interface), its tasks run on this node only, "
               "and Nginx lists every running task (the slot ports are not published)"]
              if cfg.backend == "swarm" and cfg.swarm.task_ports else [])]


@config_app.command("example")
def config_example() -> None:
    """Print the annotated example config (every key, with its default)."""
    out.print((Path(__file__).resolve().parent / "example.toml").read_text(), markup=False,
              end="")


@nginx_app.command("render")
def nginx_render(
    config: ConfigOpt = None,
    site: Annotated[bool, typer.Option("--site", help="Render the site block to install "
                                                      "once, instead of the upstream.")] = False,
    live: Annotated[str, typer.Option(
        help="Slot to render as live: blue, green, or none for the placeholder to install "
             "before the first deploy (upstream only).")] = "none",
) -> None:
    """Print the rendered upstream (or, with --site, the server block) without writing.

    First-time setup: install the site block once, and the placeholder upstream
    (`--live none`, Nginx answers 502 until the first deploy) at nginx.upstream_file.
    """
    from zdagent.nginx import render_site, render_upstream

    with _guard():
        if live not in ("blue", "green", "none"):
            raise UsageError(f"--live must be blue, green or none, got {live!r}")
        cfg = _load(config)
        if site:
            text = render_site(cfg)
        elif live == "none":
            text = render_upstream(cfg, None, None)
        elif cfg.swarm.task_ports and cfg.backend == "swarm":  # the tasks' ports, now
            from zdagent.services import ServiceSlots
            from zdagent.slots import connect

            client = connect()
            try:
                text = render_upstream(cfg, live, "green" if live == "blue" else "blue",
                                       ServiceSlots(cfg, client).ports)
            finally:
                client.close()
        else:
            text = render_upstream(cfg, live, "green" if live == "blue" else "blue")
        out.print(text, markup=False, end="")


@notify_app.command("test")
def notify_test(config: ConfigOpt = None, as_json: JsonOpt = False, local: LocalOpt = False,
                socket: SocketOpt = None) -> None:
    """Send a test event to every channel now (whatever its events filter) and report each.

    Sent by the daemon when it manages the app (it reads the webhook secrets), else by this
    process. Exit 0 when every channel took it, 1 when any did not, 2 when there is none.
    """
    with _guard():
        cfg = _load(config)
        client = _daemon(cfg, socket, local, quiet=as_json)
        if client is not None:
            with _daemon_link():
                report = next(iter(client.stream(f"/v1/apps/{cfg.name}/notify-test", {})))
        else:
            from zdagent.notifications.deliver import send_test

            if not cfg.notify:
                raise UsageError(f"{cfg.name} has no notification channel",
                                 hint="add a [[notify]] table to its config (see `zdagent "
                                      "config example`)")
            report = send_test(cfg)
        if as_json:
            out.print_json(json.dumps(report))
        else:
            for ch in report["channels"]:
                out.print(f"ok     {ch['target']}" if ch["ok"] else
                          f"failed {ch['target']}: {ch['error']}", markup=False)
        failed = [ch["name"] for ch in report["channels"] if not ch["ok"]]
        if failed:
            raise ZdError(f"{len(failed)} of {len(report['channels'])} channel(s) did not "
                          f"take the test event: {', '.join(failed)}",
                          hint="check each channel's URL, secret and receiver; "
                               "`zdagent notify status` shows the outbox")


@notify_app.command("status")
def notify_status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show each channel and its outbox: pending, delivered, given up, last error."""
    with _guard():
        from zdagent.notifications.deliver import status as outbox_status

        cfg = _load(config)
        data = outbox_status(cfg)
        if as_json:
            out.print_json(json.dumps(data))
            return
        if not data["channels"]:
            err.print(f"{cfg.name} has no notification channel ([[notify]] in its config)")
        for ch in data["channels"]:
            out.print(f"{ch['target']}: {ch['pending']} pending, {ch['delivered']} delivered, "
                      f"{ch['given_up']} given up; events: {', '.join(ch['events'])}"
                      + (f"; last error: {ch['last_error']}" if ch["last_error"] else ""),
                      markup=False)


def _tls_run(config: str | None, action: Callable[[AppConfig, Any], Any]) -> Any:
    with _guard():
        cfg = _load(config)
        renderer = ProgressRenderer(err)
        try:
            return action(cfg, renderer)
        finally:
            renderer.close()


@tls_app.command("issue")
def tls_issue(config: ConfigOpt = None) -> None:
    """Obtain the certificate for nginx.server_name with certbot --webroot.

    Nginx must already serve the site (its plain-HTTP server answers the ACME challenge from
    tls.webroot). certbot's deploy hook, `zdagent tls deployed`, then installs the HTTPS
    server and the redirect (tls.site_file), tests and reloads Nginx once. Rerunning it while
    the certificate is valid changes nothing.
    """
    from zdagent import tls

    def run(cfg: AppConfig, emit: Any) -> None:
        tls.run_certbot(cfg, emit)
        if tls.install_needed(cfg):  # a certificate kept from before: no hook ran
            tls.deployed(cfg, emit)

    _tls_run(config, run)


@tls_app.command("renew")
def tls_renew(
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Renew now even if the certificate "
                                                        "is not due (certbot --force-renewal).")
                     ] = False,
) -> None:
    """Renew the certificate if due (certbot renew); the deploy hook reloads Nginx once.

    Needed only by hand: Debian's certbot package renews every certificate from its own
    timer (certbot.timer, twice a day) and runs the same deploy hook.
    """
    from zdagent import tls

    _tls_run(config, lambda cfg, emit: tls.run_certbot(cfg, emit, renew=True, force=force))


@tls_app.command("deployed")
def tls_deployed(config: ConfigOpt = None,
                 as_json: JsonOpt = False) -> None:
    """certbot's deploy hook: install the HTTPS site if missing, nginx -t, reload Nginx once,
    and check that Nginx serves the new certificate (exit 1 if it does not)."""
    from zdagent import tls

    result = _tls_run(config, tls.deployed)
    if as_json:
        out.print_json(json.dumps({"site_written": result.site_written,
                                   "sha256": result.fingerprint}))


@app.command()
def runbook(
    section: Annotated[str | None, typer.Argument(
        help="The section a hint named (e.g. nginx-down); none lists them.")] = None,
) -> None:
    """Print a section of the operations runbook: what a state means, what zdagent already
    did, what to do. Hints end with `(runbook: zdagent runbook SECTION)`."""
    from zdagent import runbook as book

    text = book.document()
    if text is None:
        _fail("the runbook is missing from this install",
              "reinstall zdagent (`pip install --force-reinstall`)", 3)
    parts = book.sections(text)
    if section is None:
        out.print("sections: " + ", ".join(parts), markup=False)
        return
    if section not in parts:
        _fail(f"no runbook section {section!r}", "sections: " + ", ".join(parts), 2)
    out.print(parts[section], markup=False, end="")


@app.command()
def doctor(
    config_dir: ConfigDirOpt = None,
    socket: SocketOpt = None,
    socket_group: Annotated[str | None, typer.Option(
        help="Group the control socket should belong to. Default: the unit's "
             "--socket-group, else zdagent")] = None,
    root: Annotated[str, typer.Option(
        envvar="ZDAGENT_ROOT", help="Look for the systemd unit under this directory "
                                    "instead of / (as `init --root`).")] = "/",
    as_json: JsonOpt = False,
) -> None:
    """Check the host setup: one line per check, ok / warn / fail with a hint.

    \b
    Checks: Docker reachable (API version) and live-restore; free disk for images;
    Nginx running, including each app's upstream file, njs module; slot ports free or
    held by the app's own slot; control socket mode, group and reachability; state
    dirs writable by the daemon's user; systemd unit installed and enabled; each app's
    config and switch mode (and why); for `backend = "swarm"` apps: a manager, IPVS
    for the routing mesh, and the slot ports dropped in DOCKER-USER (Swarm publishes them on
    every interface).
    --json prints a list of {check, status, message, hint}.
    \b
    Exit codes: 0 no check failed (warnings allowed), 1 at least one check failed.
    """
    from zdagent import doctor as doctor_mod

    with _guard():
        results = doctor_mod.run(doctor_mod.Options(
            config_dir=Path(config_dir) if config_dir else None,
            socket=Path(socket) if socket else None, socket_group=socket_group,
            root=Path(root)))
        if as_json:
            out.print_json(json.dumps(doctor_mod.as_json(results)))
        else:
            colors = {"ok": "green", "warn": "yellow", "fail": "bold red"}
            for r in results:
                out.print(f"[{colors[r.status]}]{r.status:<4}[/]  "
                          + escape(doctor_mod.render_line(r)[6:]))
            counts = {s: sum(r.status == s for r in results) for s in colors}
            err.print(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
        raise typer.Exit(doctor_mod.exit_code(results))


@app.command()
def logs(
    slot: Annotated[str, typer.Option(
        "--slot", help="live, standby, blue or green.")] = "live",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new lines.")
                      ] = False,
    since: Annotated[str | None, typer.Option(
        help="Only lines newer than this: 10m, 90s, 2h, 1d or an ISO time.")] = None,
    tail: Annotated[int | None, typer.Option(
        min=0, max=1_000_000, help="Only the last N lines (default: all).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print a slot's output (stdout and stderr), from Docker: its container's, or for a
    swarm app its service's (every task's)."""
    from zdagent import oneoff

    with _guard():
        cfg = _load(config)
        since_ts = oneoff.parse_since(since) if since else None
        if slot not in oneoff.SLOT_CHOICES:
            raise UsageError(f"--slot must be one of {', '.join(oneoff.SLOT_CHOICES)}, "
                             f"got {slot!r}")

        def show(engine: Any) -> None:
            target = oneoff.resolve_slot(slot, engine.live_slot())
            oneoff.stream_logs(engine.slots, target, sys.stdout.buffer, follow=follow,
                               since=since_ts, tail=tail)

        try:
            _with_engine(cfg, show)
        except (KeyboardInterrupt, BrokenPipeError):
            raise typer.Exit(0) from None  # Ctrl-C ends -f; `| head` closes the pipe


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    command: Annotated[list[str], typer.Argument(
        metavar="CMD...", help="The command and its arguments (argv, no shell).")],
    tty: Annotated[bool, typer.Option(
        "--tty", "-t", help="Interactive: attach this terminal (e.g. a console).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Run a command in a NEW container of the live slot's image, then remove it.

    \b
    The container gets the app's env (container.env + env_file, read now), network,
    volumes, user, memory and cpus, ZDAGENT_VERSION, no published port, and labels marking
    it a one-off. Exits with the command's exit code. Piped stdin is forwarded (EOF
    included); a terminal only with --tty.  Examples:  zdagent exec -- bin/migrate
    zdagent exec -- bin/import < data.csv
    """
    from zdagent import oneoff

    with _guard():
        cfg = _load(config)
        code = _with_engine(cfg, lambda e: oneoff.run_oneoff(
            e.slots, e.live_slot(), command, tty=tty, stdout=sys.stdout.buffer,
            stderr=sys.stderr.buffer))
    raise typer.Exit(code)


@app.command()
def prune(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would go; remove nothing.")] = False,
    config: ConfigOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove this app's images beyond app.retain (as after every deploy), and the bytes
    freed. Never the live's, the standby's, or an image any container uses."""
    from zdagent import retention
    from zdagent.lock import app_lock

    with _guard():
        cfg = _load(config)

        def run(engine: Any) -> Any:
            with app_lock(cfg.state_dir, cfg.name, "prune", engine.emit, wait=not no_wait):
                return retention.run(cfg, engine.slots, engine.store, engine.live_slot(),
                                     engine.emit, dry_run=dry_run)

        plan = _with_engine(cfg, run)
        if as_json:
            out.print_json(json.dumps({"dry_run": dry_run, **plan.to_dict()}))
            return
        for c in plan.remove:
            out.print(f"{'would remove' if dry_run else 'removed'}  {c.image_id[7:19]}  "
                      f"{', '.join(c.versions) or '-'}  {retention.human_bytes(c.size)}  "
                      f"({c.reason})", markup=False)
        for c in plan.keep:
            out.print(f"kept          {c.image_id[7:19]}  {', '.join(c.versions) or '-'}  "
                      f"({c.reason})", markup=False)
        for d in plan.builds_remove:
            out.print(f"{'would remove' if dry_run else 'removed'}  build dir {d}",
                      markup=False)
        for cid in plan.containers_remove:
            out.print(f"{'would remove' if dry_run else 'removed'}  stopped task container "
                      f"{cid[:12]} (Swarm's task history of an image that goes)", markup=False)
        verb = "would free" if dry_run else "freed"
        err.print(f"{len(plan.remove)} image(s), {verb} "
                  f"{retention.human_bytes(plan.bytes_freed)} (retain = {cfg.retain})")


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"zdagent {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print the version.")] = False,
) -> None:
    """Zero-downtime blue-green deploys of one containerised app with Docker and Nginx."""


def main() -> None:
    app()
    sys.exit(0)
