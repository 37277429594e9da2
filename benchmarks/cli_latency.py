"""CLI latency from a shell: the real ``zdagent`` executable talking to a real daemon.

    .venv/bin/python -m benchmarks.cli_latency              # 11 runs of each figure
    .venv/bin/python -m benchmarks.cli_latency --runs 21 --modes njs

Every figure starts when the benchmark spawns the console script (``zdagent`` next to this
Python, i.e. the venv's script; never the pyenv shim, whose bash wrapper adds ~0.2 s):
* ``zdagent --version`` and ``zdagent status``: spawn -> process exit;
* ``zdagent rollback`` -> all traffic on the standby: spawn -> the start of the first request
  of a poller (a separate thread sending back-to-back ``Connection: close`` GETs through
  Nginx) from which on every request, up to 0.5 s after the command exited, was answered by
  the standby (the last address in ``X-Zdagent-Upstream``). The standby is running and warm.
Breakdown: the same commands against a stand-in daemon in this process that answers at once
with canned replies measure the client's own share (spawn -> request received, and spawn ->
exit); the real rollback's first streamed event marks when the daemon's engine has begun.
One app per switch mode on a private Nginx on 127.0.0.1, busybox slot images, a real
``zdagentd``. Bounded: a fixed number of runs, each with a time limit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker

from benchmarks.harness import NginxServer, app_config, free_port
from benchmarks.zero_downtime import REPO, build_images
from zdagent.client import DaemonClient
from zdagent.nginx import UPSTREAM_HEADER, answering_upstream, render_site, render_upstream

SETTLE_S = 0.5  # keep polling this long after the command exited
RUN_LIMIT_S = 30.0
# The full Typer/Rich CLI, entered the way the console script did before zdagent.thin.
FULL_CLI = "import sys; from zdagent.cli import main; sys.argv[0] = 'zdagent'; main()"
TARGETS_MS = {"version": 100, "status": 200, "rollback-reload": 300, "rollback-njs": 150}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    """Milliseconds: median, p90 (nearest rank), max, n."""
    ms = [v * 1000 for v in values]
    return {"median": round(statistics.median(ms), 1), "p90": round(pct(ms, 90), 1),
            "max": round(max(ms), 1), "n": len(ms)}


# --- the poller -----------------------------------------------------------------------------

class Poller:
    """Back-to-back GETs through Nginx on fresh connections; (start, answering address)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.records: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> str | None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        for line in data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == UPSTREAM_HEADER.lower():
                return answering_upstream(value.strip())
        return None

    def _run(self) -> None:
        deadline = time.perf_counter() + 600
        while not self._stop.is_set() and time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                addr = self._one()
            except OSError:
                addr = None
            self.records.append((t, addr))
            time.sleep(0.003)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def all_on(records: list[tuple[float, str | None]], addr: str, t0: float) -> float | None:
    """Seconds from t0 to the start of the first request after which every one hit addr."""
    after = [(t, a) for t, a in records if t >= t0]
    last_bad = max((i for i, (_, a) in enumerate(after) if a != addr), default=-1)
    if last_bad + 1 >= len(after):
        return None
    return after[last_bad + 1][0] - t0


# --- a stand-in daemon: the client's own share ------------------------------------------------

class FakeDaemon:
    """Answers the CLI at once with canned replies, and notes when each request arrived."""

    def __init__(self, path: Path, app: str, config: Path, status: dict[str, Any],
                 result: dict[str, Any]) -> None:
        self.path, self.app, self.config = path, app, config
        self.status, self.result = status, result
        self.arrivals: list[tuple[str, float]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        line = data.split(b"\r\n", 1)[0].decode()
        self.arrivals.append((line, time.perf_counter()))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        if " /v1/status " in line:
            body = {"daemon": {}, "apps": {self.app: {"config": str(self.config)}}}
            conn.sendall(head + json.dumps(body).encode() + b"\n")
        elif line.startswith("GET"):
            conn.sendall(head + json.dumps(self.status).encode() + b"\n")
        else:
            event = {"kind": "info", "phase": None, "message": "rollback #0: (stand-in)"}
            conn.sendall(head + json.dumps({"event": event}).encode() + b"\n"
                         + json.dumps({"result": self.result}).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


# --- one switch mode against the real daemon --------------------------------------------------

class Setup:
    """A private Nginx, one app in a config dir, and a running ``zdagentd``."""

    def __init__(self, workdir: Path, mode: str, bindir: Path) -> None:
        self.workdir, self.bindir = workdir, bindir
        self.name = f"zdbcl-{mode}"
        self.nginx = NginxServer.create(workdir / "nginx")
        config_dir = workdir / "apps"
        config_dir.mkdir()
        self.config = config_dir / f"{self.name}.toml"
        self.socket = workdir / "zd.sock"
        self.blue, self.green = free_port(), free_port()
        extra = 'switch_mode = "njs"\n' if mode == "njs" else ""
        self.config.write_text(app_config(
            self.name, workdir / "state", self.nginx, self.blue, self.green,
            f'[source]\nimage = "{REPO}"\npull = "never"', extra))
        from zdagent.config import load_config

        cfg = load_config(self.config)
        (self.nginx.prefix / "sites" / f"{self.name}.conf").write_text(render_site(cfg))
        cfg.nginx.upstream_file.write_text(render_upstream(cfg, None, None))
        self.nginx.start()
        self.proc = subprocess.Popen(
            [str(bindir / "zdagentd"), "--config-dir", str(config_dir),
             "--socket", str(self.socket)],
            stdout=subprocess.DEVNULL, stderr=(workdir / "daemon.log").open("w"))
        deadline = time.monotonic() + 60
        while True:
            try:
                DaemonClient(str(self.socket), timeout=2).get("/v1/status")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("zdagentd did not start: "
                                       + (workdir / "daemon.log").read_text()) from None
                time.sleep(0.1)

    def cli(self, *args: str) -> list[str]:
        return [str(self.bindir / "zdagent"), *args, "--config", str(self.config),
                "--socket", str(self.socket)]

    def addr(self, slot: str) -> str:
        return f"127.0.0.1:{self.blue if slot == 'blue' else self.green}"

    def live(self) -> str:
        text = DaemonClient(str(self.socket), timeout=30).get(f"/v1/apps/{self.name}/status")
        return str(text["live_slot"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.nginx.stop()
        client = docker.from_env()
        for c in client.containers.list(all=True,
                                        filters={"label": f"zdagent.app={self.name}"}):
            c.remove(force=True)
        client.close()


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Spawn -> exit of one command; it must succeed."""
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, env=env, timeout=RUN_LIMIT_S, check=False)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.decode()[-500:]}")
    return dt


def rollback_run(s: Setup, env: dict[str, str]) -> dict[str, float]:
    """One ``zdagent rollback`` to the warm standby, timed from spawn."""
    live = s.live()
    standby = "green" if live == "blue" else "blue"
    want = s.addr(standby)
    with Poller(s.nginx.port) as poller:
        while not [a for _, a in poller.records if a == s.addr(live)]:
            time.sleep(0.005)  # the poller sees the live slot before the command starts
        t0 = time.perf_counter()
        p = subprocess.Popen(s.cli("rollback"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=env)
        assert p.stderr is not None
        first_event = None
        for _ in p.stderr:
            first_event = first_event or time.perf_counter() - t0
        code = p.wait(RUN_LIMIT_S)
        t_exit = time.perf_counter() - t0
        time.sleep(SETTLE_S)
    if code != 0:
        raise RuntimeError(f"zdagent rollback -> {code}")
    t_all = all_on(poller.records, want, t0)
    if t_all is None or first_event is None:
        raise RuntimeError("the traffic never settled on the standby")
    return {"all_on_standby": t_all, "first_event": first_event, "exit": t_exit}


def measure_mode(workdir: Path, mode: str, runs: int, bindir: Path,
                 env: dict[str, str]) -> dict[str, Any]:
    s = Setup(workdir, mode, bindir)
    try:
        for version in ("v1", "v2"):
            subprocess.run(s.cli("deploy", version), check=True, capture_output=True, env=env,
                           timeout=180)
        rollbacks = []
        for _ in range(runs):
            rollbacks.append(rollback_run(s, env))
            time.sleep(1.0)  # let a reload's old workers exit before the next switch
        history = DaemonClient(str(s.socket), timeout=30).get(
            f"/v1/apps/{s.name}/history?limit={runs}")["history"]
        engine = [h["finished_at"] - h["started_at"] for h in history
                  if h["kind"] == "rollback"]
        status = [timed(s.cli("status"), env) for _ in range(runs)]
        full = [sys.executable, "-c", FULL_CLI, *s.cli("status")[1:]]
        status_full = [timed(full, env) for _ in range(runs)]
        canned_status = DaemonClient(str(s.socket), timeout=30).get(f"/v1/apps/{s.name}/status")
        canned_result = history[0] if history else {}
    finally:
        s.close()
    out = {
        "rollback_all_on_standby": summary([r["all_on_standby"] for r in rollbacks]),
        "rollback_first_event": summary([r["first_event"] for r in rollbacks]),
        "rollback_exit": summary([r["exit"] for r in rollbacks]),
        "rollback_engine_recorded": summary(engine),
        "status": summary(status),
        "status_full_cli": summary(status_full),
        "canned": {"status": canned_status, "result": {
            "deploy_id": canned_result.get("id", 0), "kind": "rollback",
            "version": canned_result.get("version"), "slot": canned_result.get("slot", "blue"),
            "from_slot": canned_result.get("from_slot"), "image": None, "seconds": 0.05,
            "phases": []}},
        "config": s.config, "name": s.name,
    }
    return out


def client_share(workdir: Path, bindir: Path, env: dict[str, str], runs: int,
                 mode_result: dict[str, Any]) -> dict[str, Any]:
    """The same commands against a stand-in daemon that answers at once."""
    path = workdir / "fake.sock"
    fake = FakeDaemon(path, mode_result["name"], mode_result["config"],
                      mode_result["canned"]["status"], mode_result["canned"]["result"])
    base = ["--config", str(mode_result["config"]), "--socket", str(path)]
    try:
        to_request, rollback_exit, status_exit = [], [], []
        for _ in range(runs):
            fake.arrivals.clear()
            t0 = time.perf_counter()
            rollback_exit.append(timed([str(bindir / "zdagent"), "rollback", *base], env))
            first = fake.arrivals[0][1] if fake.arrivals else None
            if first is None:
                raise RuntimeError("the CLI never reached the stand-in daemon")
            to_request.append(first - t0)
            status_exit.append(timed([str(bindir / "zdagent"), "status", *base], env))
    finally:
        fake.close()
    return {"spawn_to_first_request": summary(to_request),
            "rollback_exit": summary(rollback_exit), "status_exit": summary(status_exit)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--modes", default="reload,njs")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cli_latency.json"))
    args = ap.parse_args(argv)
    bindir = Path(sys.executable).parent
    for exe in ("zdagent", "zdagentd"):
        if not (bindir / exe).exists():
            sys.exit(f"{bindir / exe} not found: run this with a venv's python that has "
                     "zdagent installed (python3 -m venv .venv && .venv/bin/pip install -e .)")
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("ZDAGENT_CONFIG", None)
    build_images()
    result: dict[str, Any] = {"executable": str(bindir / "zdagent"), "runs": args.runs,
                              "loadavg_start": os.getloadavg()}
    result["python_pass"] = summary([timed([sys.executable, "-c", "pass"], env)
                                     for _ in range(args.runs)])
    result["version"] = summary([timed([str(bindir / "zdagent"), "--version"], env)
                                 for _ in range(args.runs)])
    with tempfile.TemporaryDirectory(prefix="zdbcl-") as tmp:
        modes: dict[str, Any] = {}
        for mode in args.modes.split(","):
            modes[mode] = measure_mode(Path(tmp) / mode, mode, args.runs, bindir, env)
        first = next(iter(modes.values()))
        result["client_share"] = client_share(Path(tmp), bindir, env, args.runs, first)
        for m in modes.values():
            del m["canned"], m["config"], m["name"]
        result["modes"] = modes
        shutil.rmtree(tmp, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


def print_table(r: dict[str, Any]) -> None:
    client_req = r["client_share"]["spawn_to_first_request"]["median"]
    client_status = r["client_share"]["status_exit"]["median"]
    rows: list[tuple[str, dict[str, Any], int | None]] = [
        ("python -c pass (this venv's interpreter, for scale)", r["python_pass"], None),
        ("zdagent --version: spawn -> exit", r["version"], TARGETS_MS["version"])]
    for mode, m in r["modes"].items():
        rows += [
            (f"zdagent status ({mode} app): spawn -> exit", m["status"], TARGETS_MS["status"]),
            ("  ... daemon's share (minus client only, difference of medians)",
             {"median": round(m["status"]["median"] - client_status, 1), "p90": "",
              "max": ""}, None),
            ("  ... the same through the full Typer/Rich CLI, for comparison",
             m["status_full_cli"], None),
            (f"zdagent rollback, {mode}: spawn -> all traffic on the standby",
             m["rollback_all_on_standby"], TARGETS_MS[f"rollback-{mode}"]),
            ("  ... spawn -> first event from the daemon's engine", m["rollback_first_event"],
             None),
            ("  ... daemon: request -> first event (difference of medians)",
             {"median": round(m["rollback_first_event"]["median"] - client_req, 1),
              "p90": "", "max": ""}, None),
            ("  ... engine's recorded span (history start -> finish)",
             m["rollback_engine_recorded"], None),
            ("  ... spawn -> the command exits", m["rollback_exit"], None)]
    c = r["client_share"]
    rows += [("client only (stand-in daemon): spawn -> request sent",
              c["spawn_to_first_request"], None),
             ("client only: zdagent rollback spawn -> exit", c["rollback_exit"], None),
             ("client only: zdagent status spawn -> exit", c["status_exit"], None)]
    print(f"CLI latency, ms ({r['runs']} runs each; executable {r['executable']}; load "
          f"average {r['loadavg_start'][0]:.1f} at start, {r['loadavg_end'][0]:.1f} at end)")
    print(f"{'figure':<66} {'median':>7} {'p90':>7} {'max':>7} {'target':>7}")
    for label, s, target in rows:
        t = f"<= {target}" if target else ""
        print(f"{label:<66} {s['median']:>7} {s['p90']:>7} {s['max']:>7} {t:>7}")


if __name__ == "__main__":
    main()
