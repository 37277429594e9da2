"""The control API's routes: validate strictly, then read, or queue an operation.

Knows nothing about how deploys work: reads go to ``Engines`` in a thread, operations to the
app's ``Queue``. Any zdagent error a handler raises is answered by the API layer with its exit
code (Docker down: 3).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zdagent import api
from zdagent.canary import Control
from zdagent.config import AppConfig, GitSource, check_version
from zdagent.daemon.queue import AppRuntime, Operation
from zdagent.errors import ConfigError
from zdagent.events import Event
from zdagent.gitsource import check_ref
from zdagent.nginx.maintenance import DEFAULT_MESSAGE, DEFAULT_RETRY_AFTER, MAX_MESSAGE
from zdagent.notifications.deliver import send_test
from zdagent.runbook import with_link

if TYPE_CHECKING:
    from zdagent.daemon.server import Daemon

MAX_HISTORY = 10000
LIMIT_RE = re.compile(r"[0-9]{1,5}")  # ASCII digits only


class Routes:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    async def handle(self, req: api.Request) -> api.Reply:
        if req.path == "/v1/status":
            _method(req, "GET")
            return self.d.status()
        m = api.ROUTE.match(req.path)
        if not m:
            raise api.ApiError(404, f"no such endpoint: {req.method} {req.path}")
        name, what = m.groups()
        rt = self.d.apps.get(name)
        if rt is None:
            bad = self.d.config_errors.get(name)
            raise api.ApiError(404, f"unknown app {name!r}" + (f": {bad}" if bad else ""),
                               hint="the daemon serves the apps in its config directory; "
                                    "`systemctl reload zdagent` re-reads it")
        if what == "status":
            _method(req, "GET")
            pools = self.d.pools
            data = await pools.run(pools.reads, self.d.engines.status, rt.cfg)
            data["watchdog"] = self.d.app_status(name, rt)
            data["traffic"] = data["watchdog"].get("traffic")
            data["daemon"] = self.d.status()["daemon"]
            return data
        if what == "history":
            _method(req, "GET")
            pools = self.d.pools
            return {"history": await pools.run(pools.reads, self.d.engines.history, rt.cfg,
                                               _limit(req.query))}
        _method(req, "POST")
        if what == "notify-test":
            return await self._notify_test(rt.cfg, req)
        if what in ("promote", "abort"):
            return self._steer(rt, what, req)
        if what == "maintenance":
            return await self._maintenance(rt, req)
        if self.d.stopping():
            raise api.ApiError(503, "the daemon is stopping", exit_code=3,
                               hint="retry once it is back")
        args = validate(rt.cfg, what, req.body)
        if args["no_wait"] and (rt.busy() or rt.queued):
            raise api.ApiError(409, f"{name} is busy: another operation is running",
                               exit_code=1, hint=with_link("retry later, or drop --no-wait "
                                                           "to queue", "lock-held"))
        if args.pop("canary", False):
            what = "canary"
        op = Operation(what, args.get("version") or args.get("to"), req.peer.user, req.gone)
        engines, figures = self.d.engines, self.d.canary_figures(name)

        def work(cfg: AppConfig, emit: Callable[[Event], None]) -> dict[str, Any]:
            if what != "canary":
                return engines.operate(cfg, emit, what, args, op.performer)
            rt.canary = control = Control()  # promote / abort reach it from now on
            try:
                return engines.operate(cfg, emit, what, {**args, "control": control,
                                                         "figures": figures}, op.performer)
            finally:
                rt.canary = None

        return self.d.queue.submit(rt, op, work)

    @staticmethod
    def _steer(rt: AppRuntime, what: str, req: api.Request) -> dict[str, Any]:
        """``promote`` / ``abort``: a word to the running canary, which acts on it at once."""
        if req.body:
            raise api.ApiError(400, f"{what} takes no arguments")
        control = rt.canary
        if control is None:
            raise api.ApiError(409, f"no canary of {rt.cfg.name} is running", exit_code=1,
                               hint="`zdagent deploy VERSION --canary` starts one; "
                                    "`zdagent status` shows the last outcome")
        if not control.request(what, req.peer.user):
            raise api.ApiError(409, f"the canary of {rt.cfg.name} is already asked to "
                                    f"{control.action} (by {control.by})", exit_code=1)
        return {"result": {"app": rt.cfg.name, "requested": what, "by": req.peer.user}}

    async def _maintenance(self, rt: AppRuntime, req: api.Request) -> dict[str, Any]:
        """On or off at once: no queue, so it works while a deploy or canary runs."""
        on, message, retry_after = validate_maintenance(req.body)
        pools = self.d.pools
        state = await pools.run(pools.reads, self.d.engines.maintenance, rt.cfg, on, message,
                                retry_after, req.peer.user)
        return {"result": {"app": rt.cfg.name, "maintenance": state}}

    async def _notify_test(self, cfg: AppConfig, req: api.Request) -> dict[str, Any]:
        """Send the test event from here: the daemon reads secrets its clients may not."""
        if req.body:
            raise api.ApiError(400, "notify-test takes no fields")
        if not cfg.notify:
            raise api.ApiError(400, f"{cfg.name} has no notification channel", exit_code=2,
                               hint="add a [[notify]] table to its config")
        pools = self.d.pools
        return await pools.run(pools.notify, send_test, cfg)


def _method(req: api.Request, want: str) -> None:
    if req.method != want:
        raise api.ApiError(405, f"{req.method} not allowed on {req.path}")


def _limit(query: dict[str, list[str]]) -> int:
    raw = query.get("limit", ["20"])[0]
    if not LIMIT_RE.fullmatch(raw) or not 0 < int(raw) <= MAX_HISTORY:  # not isdigit: '²'
        raise api.ApiError(400, f"limit must be an integer from 1 to {MAX_HISTORY}")
    return int(raw)


def validate(cfg: AppConfig, what: str, body: dict[str, Any]) -> dict[str, Any]:
    """The operation's arguments, checked as strictly as the CLI checks them."""
    allowed = {"deploy": {"version", "no_wait", "canary"}, "rollback": {"to", "no_wait"}}[what]
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise api.ApiError(400, f"unknown field(s) for {what}: {', '.join(unknown)}")
    no_wait = body.get("no_wait", False)
    if not isinstance(no_wait, bool):
        raise api.ApiError(400, "'no_wait' must be true or false")
    try:
        if what == "deploy":
            version = body.get("version")
            if not isinstance(version, str):
                raise api.ApiError(400, "deploy needs a string 'version'")
            (check_ref if isinstance(cfg.source, GitSource) else check_version)(version)
            canary = body.get("canary", False)
            if not isinstance(canary, bool):
                raise api.ApiError(400, "'canary' must be true or false")
            return {"version": version, "no_wait": no_wait, "canary": canary}
        to = body.get("to")
        if to is not None and not isinstance(to, str):
            raise api.ApiError(400, "'to' must be a string or null")
        if to is not None:
            check_version(to)
        return {"to": to, "no_wait": no_wait}
    except ConfigError as e:
        raise api.ApiError(400, e.message) from None



def validate_maintenance(body: dict[str, Any]) -> tuple[bool, str, int]:
    """``{"on": bool, "message": str, "retry_after": int}``, checked like the CLI does."""
    unknown = sorted(set(body) - {"on", "message", "retry_after"})
    if unknown:
        raise api.ApiError(400, f"unknown field(s) for maintenance: {', '.join(unknown)}")
    on, message = body.get("on"), body.get("message") or DEFAULT_MESSAGE
    retry_after = body.get("retry_after", DEFAULT_RETRY_AFTER)
    if not isinstance(on, bool):
        raise api.ApiError(400, "maintenance needs 'on': true or false")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE:
        raise api.ApiError(400, f"'message' must be a string of at most {MAX_MESSAGE} "
                                "characters")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) \
            or not 1 <= retry_after <= 86400:
        raise api.ApiError(400, "'retry_after' must be whole seconds from 1 to 86400")
    return on, message, retry_after
