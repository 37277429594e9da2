"""Soak: hundreds of operations through a real daemon under continuous load, both switch modes.

    python -m benchmarks.soak                       # 200 operations per mode, reload and njs
    python -m benchmarks.soak --ops 20 --modes njs  # what tests/integration/test_soak.py runs

Per mode: a private Nginx on 127.0.0.1, zdagentd on a temp socket watching one app, and the
three client kinds of benchmarks/loadgen.py (x GET/POST) running all the time. The driver
sends a fixed cycle of operations through the daemon's API — good deploys, rollbacks,
candidates that answer 500 or crash at start (must fail cleanly: error, live slot and version
unchanged, no candidate container left), and watchdog reverts (stop or kill the live
container, then wait for the daemon to revert). Every step waits for a state (the daemon's
answer, its status or history), never a sleep, and every wait is bounded.

It reports operations per kind and their outcomes, failed requests per client kind, the
daemon's RSS and open fds at start and end, and leftovers: what the app holds beyond its two
slots during the run, and anything at all once the run has cleaned up (containers, images,
Nginx master and files, daemon, socket, state and temp dirs). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import psutil

from benchmarks.harness import NginxServer, app_config, build_image, free_port, make_context
from benchmarks.loadgen import KINDS, METHODS, Load, Record

REPO = "zdsoak"
GOOD = ("v1", "v2", "v3")
BAD = {"fail500": "fail", "crash": "crash"}  # op kind -> image tag
# One cycle keeps a standby wherever the next step needs one: a failed candidate or a watchdog
# revert leaves none (or a dead one) and is followed by a deploy or a rollback that restarts it.
CYCLE = ("deploy", "rollback", "fail500", "deploy", "revert-stop", "rollback", "deploy",
         "crash", "deploy", "revert-kill")
MODES = ("reload", "njs")
OP_TIMEOUT = 90.0  # seconds any one operation (or wait for a state) may take
FD_NOISE = 4

WATCHDOG = """
[watchdog]
interval = 0.2
failures = 2
cooldown = 0
max_reverts = 100
window = 1
"""


def plan(ops: int) -> list[str]:
    return [CYCLE[i % len(CYCLE)] for i in range(ops)]


def build_images(repo: str = REPO) -> None:
    """The soak's images, built once per host (cached, fixed tags)."""
    client = docker.from_env()
    try:
        with tempfile.TemporaryDirectory(prefix="zdsoak-ctx-") as tmp:
            ctx = make_context(Path(tmp) / "app")
            for tag, mode in [*((v, "ok") for v in GOOD), *((t, t) for t in BAD.values())]:
                build_image(client, ctx, f"{repo}:{tag}", ZDAGENT_VERSION=tag, MODE=mode)
    finally:
        client.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = OP_TIMEOUT) -> Any:
    """Poll ``check`` until it returns something truthy; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


# --- the daemon, through its socket -----------------------------------------------------------

class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path_ = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path_))
        self.sock = sock


@dataclass
class Daemon:
    """zdagentd as a subprocess over one config dir, spoken to over its socket (HTTP/NDJSON)."""

    config_dir: Path
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        code = "from zdagent.daemon import main; main()"  # zdagentd's entry point
        argv = [sys.executable, "-c", code, "--config-dir", str(self.config_dir),
                "--socket", str(self.socket)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log,
                                         cwd=Path(__file__).resolve().parent.parent)
        wait_for("the daemon to answer", self._up, 60)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited: {self.log.read_text()[-2000:]}")
        try:
            self.get("/v1/status", timeout=2)
            return True
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def _request(self, method: str, url: str, body: dict[str, Any] | None,
                 timeout: float) -> http.client.HTTPResponse:
        conn = _Unix(self.socket, timeout)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, url, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        return conn.getresponse()

    def get(self, url: str, timeout: float = 30) -> dict[str, Any]:
        r = self._request("GET", url, None, timeout)
        try:
            return dict(json.loads(r.read() or b"{}"))
        finally:
            r.close()

    def operate(self, app: str, what: str, body: dict[str, Any]) -> dict[str, Any]:
        """A deploy or rollback to its end: the last line (``result`` or ``error``)."""
        r = self._request("POST", f"/v1/apps/{app}/{what}", body, OP_TIMEOUT)
        last: dict[str, Any] = {}
        try:
            for line in r:
                if line.strip():
                    last = json.loads(line)
        finally:
            r.close()
        return last

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def usage(self) -> dict[str, float]:
        p = psutil.Process(self.pid)
        return {"rss_mb": round(p.memory_info().rss / 2**20, 1), "fds": p.num_fds(),
                "threads": p.num_threads()}

    def stop(self) -> int | None:
        """SIGTERM, bounded; SIGKILL if it will not go. Returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# --- one app under soak -----------------------------------------------------------------------

@dataclass
class Soak:
    """One mode's world: Nginx, the app config, the daemon, the Docker client."""

    mode: str
    name: str
    repo: str
    workdir: Path
    sockdir: Path
    docker: Any
    nginx: NginxServer = field(init=False)
    daemon: Daemon = field(init=False)
    ports: dict[str, int] = field(init=False)

    def setup(self) -> None:
        from zdagent.config import load_config
        from zdagent.nginx import render_site, render_upstream

        self.nginx = NginxServer.create(self.workdir / "nginx")
        self.ports = {"blue": free_port(), "green": free_port()}
        extra = ('switch_mode = "njs"\n' if self.mode == "njs" else "") + WATCHDOG
        source = f'[source]\nimage = "{self.repo}"\npull = "never"'
        cfg_dir = self.workdir / "apps"
        cfg_dir.mkdir()
        cfg_path = cfg_dir / f"{self.name}.toml"
        cfg_path.write_text(app_config(self.name, self.workdir / "state", self.nginx,
                                       self.ports["blue"], self.ports["green"], source, extra)
                            .replace("startup_deadline = 15", "startup_deadline = 4"))
        cfg = load_config(cfg_path)
        (self.nginx.prefix / "sites" / f"{self.name}.conf").write_text(render_site(cfg))
        cfg.nginx.upstream_file.write_text(render_upstream(cfg, None, None))
        self.nginx.start()
        self.daemon = Daemon(cfg_dir, self.sockdir / "zd.sock", self.workdir / "daemon.log")
        self.daemon.start()

    # state, as the daemon sees it
    def app_status(self) -> dict[str, Any]:
        return self.daemon.get(f"/v1/apps/{self.name}/status")

    def watchdog(self) -> dict[str, Any]:
        return dict(self.daemon.get("/v1/status")["apps"][self.name])

    def history(self, limit: int = 5) -> list[dict[str, Any]]:
        return list(self.daemon.get(f"/v1/apps/{self.name}/history?limit={limit}")["history"])

    def containers(self) -> list[Any]:
        return list(self.docker.containers.list(
            all=True, filters={"label": f"zdagent.app={self.name}"}))

    def teardown(self) -> dict[str, Any]:
        code = self.daemon.stop() if hasattr(self, "daemon") else None
        for c in self.containers():
            c.remove(force=True)
        if hasattr(self, "nginx"):
            self.nginx.stop()
        return {"daemon_exit": code}


# --- operations -------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str
    ok: bool
    detail: str
    seconds: float
    t_start: float  # wall clock, to attribute failed requests to the operation running then
    t_end: float


def _live(s: Soak) -> tuple[str, str]:
    """(live slot, its version) from the daemon's status of the app."""
    st = s.app_status()
    live = st["live_slot"]
    return live, st["slots"][live].get("version") or "?"


def _next_version(current: str) -> str:
    return GOOD[(GOOD.index(current) + 1) % len(GOOD)] if current in GOOD else GOOD[0]


def op_deploy(s: Soak) -> tuple[bool, str]:
    _, current = _live(s)
    version = _next_version(current)
    last = s.daemon.operate(s.name, "deploy", {"version": version})
    if "result" not in last:
        return False, f"deploy {version}: {last.get('error', last)}"
    live, served = _live(s)
    return served == version, f"deploy {version} -> {live} serving {served}"


def op_rollback(s: Soak) -> tuple[bool, str]:
    live0, _ = _live(s)
    last = s.daemon.operate(s.name, "rollback", {"to": None})
    if "result" not in last:
        return False, f"rollback: {last.get('error', last)}"
    live, served = _live(s)
    return live != live0, f"rollback {live0} -> {live} ({served})"


def op_bad(s: Soak, kind: str) -> tuple[bool, str]:
    """A failing candidate must fail cleanly: exit 1, live untouched, no candidate left."""
    live0, version0 = _live(s)
    candidate = "green" if live0 == "blue" else "blue"
    last = s.daemon.operate(s.name, "deploy", {"version": BAD[kind]})
    err = last.get("error")
    if not err:
        return False, f"{kind}: the deploy did not fail: {last}"
    st = s.app_status()
    problems = []
    if err.get("exit_code") != 1:
        problems.append(f"exit code {err.get('exit_code')}")
    if st["live_slot"] != live0 or st["slots"][live0].get("version") != version0:
        problems.append(f"live moved to {st['live_slot']}")
    if st["slots"][candidate]["state"] != "missing":
        problems.append(f"candidate {candidate} left {st['slots'][candidate]['state']}")
    if st["drift"]:
        problems.append(f"drift {st['drift']}")
    if s.history(1)[0]["outcome"] != "failed":
        problems.append("history does not say failed")
    return not problems, f"{kind}: {err.get('message', '')[:80]}" + (
        f" UNCLEAN: {'; '.join(problems)}" if problems else "")


def op_revert(s: Soak, how: str) -> tuple[bool, str]:
    """Stop or kill the live container; the daemon's watchdog must switch to the standby."""
    wait_for("the watchdog to see the live slot healthy",
             lambda: s.watchdog()["status"] == "healthy")
    live0, _ = _live(s)
    before = {h["id"] for h in s.history(20)}
    c = s.docker.containers.get(f"{s.name}-{live0}")
    if how == "stop":
        c.stop(timeout=2)
    else:
        c.kill()

    def finished() -> dict[str, Any] | None:
        return next((h for h in s.history(5) if h["id"] not in before
                     and h["kind"] == "auto-revert" and h["outcome"] != "running"), None)

    rec = wait_for("the daemon's revert", finished)
    live, served = _live(s)
    ok = rec["outcome"] == "succeeded" and live != live0
    return ok, f"revert-{how} {live0} -> {live} ({served}): {rec['outcome']}"


def run_op(s: Soak, kind: str) -> Outcome:
    t0, wall = time.monotonic(), time.time()
    try:
        if kind == "deploy":
            ok, detail = op_deploy(s)
        elif kind == "rollback":
            ok, detail = op_rollback(s)
        elif kind in BAD:
            ok, detail = op_bad(s, kind)
        else:
            ok, detail = op_revert(s, kind.removeprefix("revert-"))
    except (TimeoutError, OSError, KeyError, ValueError, http.client.HTTPException,
            docker.errors.APIError) as e:
        ok, detail = False, f"{kind}: {type(e).__name__}: {e}"
    return Outcome(kind, ok, detail, round(time.monotonic() - t0, 2), wall, time.time())


# --- leftovers --------------------------------------------------------------------------------

def app_leftovers(s: Soak) -> dict[str, Any]:
    """What the app holds beyond its two slots while the daemon still runs."""
    names = sorted(c.name for c in s.containers())
    extra = [n for n in names if n not in (f"{s.name}-blue", f"{s.name}-green")]
    images = [i.id for i in s.docker.images.list(filters={"label": f"zdagent.app={s.name}"})]
    nginx_files = sorted(p.name for p in (s.nginx.prefix / "zdagent").iterdir())
    stray_nginx = [n for n in nginx_files if n.startswith(".") or n.endswith(".tmp")]
    state = s.workdir / "state"
    state_files = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
    stray_state = [f for f in state_files if "builds" in f or f.endswith(".tmp")
                   or Path(f).name.startswith(".")]
    return {"containers": names, "extra_containers": extra, "built_images": images,
            "nginx_files": nginx_files, "stray_nginx_files": stray_nginx,
            "state_files": state_files, "stray_state_files": stray_state}


def final_leftovers(s: Soak, nginx_pid: int | None, daemon_pid: int,
                    tmp_before: set[str]) -> dict[str, Any]:
    """Anything at all of this run once it has cleaned up."""
    out: dict[str, Any] = {
        "containers": [c.name for c in s.containers()],
        "images": [i.id for i in s.docker.images.list(filters={"label": f"zdagent.app={s.name}"})],
        "nginx_master": nginx_pid is not None and _running(nginx_pid),
        "daemon": _running(daemon_pid),
        "socket": s.daemon.socket.exists(),
        "workdir": s.workdir.exists(),
        "sockdir": s.sockdir.exists(),
        "tmp": sorted(set(_tmp_entries()) - tmp_before),
    }
    out["any"] = any(bool(v) for v in out.values())
    return out


def _running(pid: int) -> bool:
    try:
        return pid > 0 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tail(path: Path, lines: int = 40) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return [f"{path}: {e}"]


def _tmp_entries() -> list[str]:
    """zdagent's own temp files (e.g. the CLI's error logs); our dirs are checked by name."""
    tmp = Path(tempfile.gettempdir())
    return [p.name for p in tmp.iterdir() if p.name.startswith("zdagent")]


# --- one mode ---------------------------------------------------------------------------------

def failed_by_client(records: list[Record]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        for method in METHODS:
            rs = [r for r in records if r.kind == kind and r.method == method]
            causes = Counter(r.error or f"HTTP {r.status}" for r in rs if not r.ok)
            out[f"{kind}/{method}"] = {"requests": len(rs), "failed": sum(causes.values()),
                                       "causes": dict(causes)}
    return out


def failed_during(records: list[Record], outcomes: list[Outcome]) -> dict[str, int]:
    """Failed requests per kind of the operation that was running when they started."""
    out: Counter[str] = Counter()
    for r in records:
        if not r.ok:
            op = next((o for o in outcomes if o.t_start <= r.t <= o.t_end), None)
            out[op.kind if op else "between operations"] += 1
    return dict(out)


def run_mode(mode: str, ops: int, *, repo: str = REPO, name: str | None = None,
             rate: float = 20.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Soak one switch mode; always cleans up, then reports what (if anything) was left."""
    tmp_before = set(_tmp_entries())
    name = name or f"zdsoak{os.getpid()}-{mode}"
    workdir = Path(tempfile.mkdtemp(prefix="zdsoak-"))
    sockdir = Path(tempfile.mkdtemp(prefix="zdsoak-sock-"))  # AF_UNIX paths are short
    client = docker.from_env()
    s = Soak(mode, name, repo, workdir, sockdir, client)
    outcomes: list[Outcome] = []
    result: dict[str, Any] = {"mode": mode, "app": name}
    nginx_pid: int | None = None
    try:
        s.setup()
        nginx_pid = int(s.nginx.pid_file.read_text())
        for v in GOOD[:2]:  # a live slot and a warm standby before the load starts
            last = s.daemon.operate(name, "deploy", {"version": v})
            if "result" not in last:
                raise RuntimeError(f"warm-up deploy {v} failed: {last}")
        result["daemon_start"] = s.daemon.usage()
        samples: list[dict[str, Any]] = [{"op": 0, **result["daemon_start"]}]
        result["daemon_samples"] = samples
        t0, t_wall = time.monotonic(), time.time()
        limit = 300 + ops * OP_TIMEOUT / 4
        with Load(s.nginx.port, "/cgi-bin/version", rate, workdir, max_seconds=limit) as load:
            for i, kind in enumerate(plan(ops), 1):
                outcomes.append(run_op(s, kind))
                if not outcomes[-1].ok:
                    log(f"  op {i} {outcomes[-1].detail}")
                if i % 20 == 0 or i == ops:
                    samples.append({"op": i, **s.daemon.usage()})
                    log(f"  {mode}: {i}/{ops} ops, {sum(o.ok for o in outcomes)} as expected, "
                        f"daemon {samples[-1]}")
            wait_for("the watchdog to settle", lambda: s.watchdog()["status"] == "healthy")
        result["seconds"] = round(time.monotonic() - t0, 1)
        result["daemon_end"] = s.daemon.usage()
        result["during_run"] = app_leftovers(s)
        records = load.records()
        faults = [o for o in outcomes if o.kind.startswith("revert")]
        planned = [r for r in records if not any(o.t_start <= r.t <= o.t_end for o in faults)]
        result["clients"] = failed_by_client(records)
        result["clients_planned"] = failed_by_client(planned)
        result["failed_during"] = failed_during(records, outcomes)
        result["failed_sample"] = [
            {"t": round(r.t - t_wall, 3), "client": f"{r.kind}/{r.method}", "status": r.status,
             "error": r.error, "upstream": r.upstream, "ms": round(r.dt * 1000)}
            for r in records if not r.ok][:30]
        result["op_log"] = [{"kind": o.kind, "t": round(o.t_start - t_wall, 3),
                             "s": o.seconds, "detail": o.detail} for o in outcomes]
        if result["failed_sample"]:  # what the daemon and Nginx said, before both go
            result["logs"] = {"daemon": _tail(s.daemon.log), "nginx": _tail(
                s.nginx.prefix / "error.log")}
    finally:
        daemon_pid = s.daemon.pid if hasattr(s, "daemon") and s.daemon.proc else -1
        result.update(s.teardown())
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)
        result["after_cleanup"] = final_leftovers(s, nginx_pid, daemon_pid, tmp_before)
        client.close()
    result["ops"] = summarise(outcomes)
    result["unexpected"] = [o.detail for o in outcomes if not o.ok]
    return result


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in dict.fromkeys(o.kind for o in outcomes):
        mine = [o for o in outcomes if o.kind == kind]
        secs = sorted(o.seconds for o in mine)
        out[kind] = {"done": len(mine), "as_expected": sum(o.ok for o in mine),
                     "median_s": secs[len(secs) // 2], "max_s": secs[-1]}
    return out


# --- report -----------------------------------------------------------------------------------

def report(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    t = Table(title="soak: operations through the daemon (done / as expected, median s)")
    t.add_column("operation")
    for r in results:
        t.add_column(r["mode"])
    for kind in dict.fromkeys(CYCLE):
        t.add_row(kind, *[_op_cell(r, kind) for r in results])
    con.print(t)
    c = Table(title="requests / failed per client (causes)")
    c.add_column("client")
    for r in results:
        c.add_column(r["mode"])
    for key in results[0].get("clients", {}):
        c.add_row(key, *[_client_cell(r, "clients", key) for r in results])
    for key in results[0].get("clients", {}):
        c.add_row(f"{key} outside reverts", *[_client_cell(r, "clients_planned", key)
                                              for r in results])
    con.print(c)
    for r in results:
        con.print(f"[{r['mode']}] failed requests by the operation running: "
                  f"{r.get('failed_during') or 'none'}", markup=False)
    s = Table(title="daemon and leftovers")
    s.add_column("figure")
    for r in results:
        s.add_column(r["mode"])
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("seconds under load", lambda r: str(r.get("seconds", "-"))),
        ("daemon RSS MB start -> end", lambda r: _usage(r, "rss_mb")),
        ("daemon open fds start -> end", lambda r: _usage(r, "fds")),
        ("daemon threads start -> end", lambda r: _usage(r, "threads")),
        ("extra containers during run", lambda r: _list(r.get("during_run", {}),
                                                        "extra_containers")),
        ("stray Nginx / state files", lambda r: _list(r.get("during_run", {}),
                                                      "stray_nginx_files", "stray_state_files")),
        ("daemon exit code on SIGTERM", lambda r: str(r.get("daemon_exit"))),
        ("leftovers after cleanup", lambda r: _after(r["after_cleanup"])),
    ]
    for label, fn in rows:
        s.add_row(label, *[fn(r) for r in results])
    con.print(s)
    for r in results:
        for d in r["unexpected"]:
            con.print(f"[{r['mode']}] unexpected: {d}", markup=False)


def _op_cell(r: dict[str, Any], kind: str) -> str:
    o = r["ops"].get(kind)
    return "-" if o is None else f"{o['done']} / {o['as_expected']} ({o['median_s']} s)"


def _client_cell(r: dict[str, Any], which: str, key: str) -> str:
    if which not in r:
        return "-"
    c = r[which][key]
    causes = ", ".join(f"{k} {v}" for k, v in c["causes"].items())
    return f"{c['requests']} / {c['failed']}" + (f": {causes}" if causes else "")


def _usage(r: dict[str, Any], key: str) -> str:
    if "daemon_start" not in r or "daemon_end" not in r:
        return "-"
    return f"{r['daemon_start'][key]} -> {r['daemon_end'][key]}"


def _list(d: dict[str, Any], *keys: str) -> str:
    items = [x for k in keys for x in d.get(k, [])]
    return ", ".join(items) if items else "none"


def _after(d: dict[str, Any]) -> str:
    bad = [k for k, v in d.items() if v and k != "any"]
    return ", ".join(f"{k}: {d[k]}" for k in bad) if bad else "none"


def problems(r: dict[str, Any]) -> list[str]:
    """The soak's targets for one mode, as sentences (empty = met)."""
    out = [f"unexpected: {d}" for d in r["unexpected"]]
    if "daemon_end" not in r:
        return [*out, "the run did not complete"]
    if r["mode"] == "njs":  # planned operations lose nothing; a killed live slot loses no GET
        out += [f"{k}: {c['failed']} failed {c['causes']}"
                for k, c in r["clients_planned"].items() if c["failed"]]
        out += [f"{k}: {c['failed']} failed while the live slot was killed {c['causes']}"
                for k, c in r["clients"].items() if c["failed"] and k.endswith("/GET")]
    if abs(r["daemon_end"]["fds"] - r["daemon_start"]["fds"]) > FD_NOISE:
        out.append(f"fds grew {r['daemon_start']['fds']} -> {r['daemon_end']['fds']}")
    lo = r["during_run"]
    if lo["extra_containers"] or lo["stray_nginx_files"] or lo["stray_state_files"]:
        out.append(f"leftovers during the run: {lo}")
    if r["after_cleanup"]["any"]:
        out.append(f"leftovers after cleanup: {r['after_cleanup']}")
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=200, help="operations per mode")
    ap.add_argument("--modes", default=",".join(MODES), help="reload,njs")
    ap.add_argument("--rate", type=float, default=20.0,
                    help="requests/s per client process (6 processes)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES) or args.ops < 1:
        ap.error(f"--modes is a comma list of {', '.join(MODES)}; --ops >= 1")
    build_images()
    results = []
    for mode in modes:
        print(f"== {mode}: {args.ops} operations through zdagentd under load", flush=True)
        results.append(run_mode(mode, args.ops, rate=args.rate,
                                log=lambda m: print(m, flush=True)))
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")
    missed = [f"{r['mode']}: {p}" for r in results for p in problems(r)]
    for p in missed:
        print(f"TARGET MISSED {p}")
    if missed:
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
