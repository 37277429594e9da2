"""Watchdog benchmark: failover time and the daemon's idle footprint.

    python -m benchmarks.watchdog                 # 10 failover trials; footprint, 1 and 10 apps
    python -m benchmarks.watchdog --apps 1 10 100 --trials 0   # footprint only
    python -m benchmarks.watchdog --apps 100 --trials 0 --http  # + status page and /metrics

Failover (watchdog interval 1 s, K = 3, cooldown 0 so trials are independent): the live
container is stopped, then two times are measured from the moment it is down:
* ``served``: the first response through Nginx from the standby (Nginx's ``backup`` server);
* ``reverted``: the upstream file names the standby and Nginx answers from it (the
  watchdog's verified switch).
Footprint: the daemon's RSS and CPU (user + system time of its process) over
``--idle-seconds`` of watching N healthy apps at ``interval = 1``, measured once every app's
watchdog reports ``healthy``. With ``--http`` the daemon also serves its status page and
metrics, and a second period is measured while ``/metrics`` is scraped every 5 s. Each app is
one tiny busybox container (its live slot, started directly with the engine's own container
arguments) behind its own site on one private Nginx. Everything on 127.0.0.1; bounded trials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import httpx
import psutil

from benchmarks.harness import NginxServer, app_config
from benchmarks.zero_downtime import REPO, build_images
from zdagent.client import DaemonClient
from zdagent.config import load_config
from zdagent.nginx import render_site, render_upstream, served_by
from zdagent.slots import container_kwargs

WATCHDOG = "\n[watchdog]\ninterval = 1.0\nfailures = 3\ncooldown = 0\nmax_reverts = 100\n"


def distinct_ports(n: int) -> list[int]:
    """``n`` free ports, all different, below Linux's ephemeral range (32768+) so that no
    outgoing connection takes one between the pick and the bind; held open while picked."""
    socks: list[socket.socket] = []
    candidates = random.sample(range(20000, 32000), 12000)
    try:
        for port in candidates:
            if len(socks) == n:
                break
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


class Setup:
    """A private Nginx, N apps in a config dir, and a running daemon."""

    def __init__(self, workdir: Path, apps: int, http: bool = False) -> None:
        self.workdir = workdir
        ports = iter(distinct_ports(3 * apps + 2))
        self.http = f"127.0.0.1:{next(ports)}" if http else None
        self.nginx = NginxServer.create(workdir / "nginx", port=next(ports))
        self.config_dir = workdir / "apps"
        self.config_dir.mkdir()
        self.socket = workdir / "zd.sock"
        # This run's own names: parallel runs (other checkouts) never touch each other's apps.
        self.prefix = f"zdbw{os.getpid()}-"
        self.names = [f"{self.prefix}{i}" for i in range(apps)]
        self.cfgs = {}
        for name in self.names:
            path = self.config_dir / f"{name}.toml"
            path.write_text(app_config(name, workdir / "state", self.nginx, next(ports),
                                       next(ports), f'[source]\nimage = "{REPO}"\n'
                                       'pull = "never"', WATCHDOG, listen=next(ports)))
            cfg = load_config(path)
            (self.nginx.prefix / "sites" / f"{name}.conf").write_text(render_site(cfg))
            cfg.nginx.upstream_file.write_text(render_upstream(cfg, None, None))
            self.cfgs[name] = cfg
        self.nginx.start()
        self.proc: subprocess.Popen[bytes] | None = None

    def start_daemon(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zdagent.daemon", "--config-dir", str(self.config_dir),
             "--socket", str(self.socket), *(["--http", self.http] if self.http else [])],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "daemon.log").open("w"))
        deadline = time.monotonic() + 30
        while True:
            try:
                DaemonClient(str(self.socket)).get("/v1/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("daemon did not start") from None
                time.sleep(0.1)

    def start_live_slots(self, dock: docker.DockerClient) -> None:
        """Each app's blue slot as a running container, routed to by its upstream file."""
        image = dock.images.get(f"{REPO}:v1").id
        for cfg in self.cfgs.values():
            dock.containers.run(**container_kwargs(cfg, "blue", image, "v1", 0, {}))
            cfg.nginx.upstream_file.write_text(render_upstream(cfg, "blue", None))
        self.nginx.reload()

    def status(self, name: str) -> str:
        return str(DaemonClient(str(self.socket)).get("/v1/status")["apps"][name]["status"])

    def wait_all(self, status: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            apps = DaemonClient(str(self.socket)).get("/v1/status")["apps"]
            if all(a["status"] == status for a in apps.values()):
                return
            if time.monotonic() > deadline:
                bad = {n: a["status"] for n, a in apps.items() if a["status"] != status}
                raise RuntimeError(f"not all apps {status} within {timeout:g}s: "
                                   f"{dict(list(bad.items())[:5])}")
            time.sleep(0.5)

    def deploy(self, name: str, version: str) -> None:
        for item in DaemonClient(str(self.socket)).stream(f"/v1/apps/{name}/deploy",
                                               {"version": version}):
            if "error" in item:
                raise RuntimeError(item["error"]["message"])

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)
        self.nginx.stop()
        client = docker.from_env()
        for c in client.containers.list(all=True, sparse=True,
                                        filters={"label": "zdagent.app"}):
            if (c.attrs.get("Labels") or {}).get("zdagent.app", "").startswith(self.prefix):
                with contextlib.suppress(docker.errors.NotFound):
                    c.remove(force=True)
        client.close()


def failover_trials(workdir: Path, trials: int) -> dict[str, Any]:
    s = Setup(workdir, 1)
    s.start_daemon()
    name = s.names[0]
    cfg = s.cfgs[name]
    dock = docker.from_env()
    served, reverted = [], []
    try:
        s.deploy(name, "v1")
        s.deploy(name, "v2")
        with httpx.Client(headers={"Connection": "close"}, timeout=5) as http:
            for _ in range(trials):
                text = cfg.nginx.upstream_file.read_text()
                live = "blue" if f":{cfg.slots.blue_port} max_fails" in text else "green"
                standby = "green" if live == "blue" else "blue"
                want = f"127.0.0.1:{cfg.slot_port(standby)}"
                dock.containers.get(f"{name}-{live}").stop(timeout=1)
                t0 = time.monotonic()
                t_served = t_reverted = None
                while time.monotonic() - t0 < 30 and t_reverted is None:
                    if served_by(http, cfg.verify_url) == want and t_served is None:
                        t_served = time.monotonic() - t0
                    if f":{cfg.slot_port(standby)} max_fails" in \
                            cfg.nginx.upstream_file.read_text() and t_served is not None \
                            and served_by(http, cfg.verify_url) == want:
                        t_reverted = time.monotonic() - t0
                    time.sleep(0.02)
                served.append(t_served)
                reverted.append(t_reverted)
                # Back as the standby. A slot that was down when traffic left it is not Nginx's
                # backup, so list it again (as the next switch would) for an independent trial.
                dock.containers.get(f"{name}-{live}").start()
                url = f"http://127.0.0.1:{cfg.slot_port(live)}{cfg.health.path}"
                wait_until(lambda u=url: _healthy(u), 30)
                cfg.nginx.upstream_file.write_text(render_upstream(cfg, standby, live))
                s.nginx.reload()
                wait_until(lambda: s.status(name) == "healthy", 30)
    finally:
        dock.close()
        s.close()
    ok = [x for x in reverted if x is not None]
    return {"trials": trials, "served_s": _stats([x for x in served if x is not None]),
            "reverted_s": _stats(ok), "missed": trials - len(ok)}


def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.1)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stats(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(xs), 3), "max": round(max(xs), 3)}


def footprint(workdir: Path, apps: int, seconds: float, http: bool = False
              ) -> dict[str, Any]:
    s = Setup(workdir, apps, http)
    dock = docker.from_env()
    try:
        s.start_live_slots(dock)
        s.start_daemon()
        assert s.proc is not None
        s.wait_all("healthy", 60 + apps)
        proc = psutil.Process(s.proc.pid)
        t0, c0 = time.monotonic(), proc.cpu_times()
        checks0 = _checks(s)
        time.sleep(seconds)
        c1, t1 = proc.cpu_times(), time.monotonic()
        rounds = _checks(s) - checks0
        rss = proc.memory_info().rss
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
        s.wait_all("healthy", 10)  # nothing went wrong while measuring
        out = {"apps": apps, "rss_mb": round(rss / 2**20, 1), "cpu_percent": round(cpu, 2),
               "seconds": seconds, "probe_rounds_per_s": round(rounds / (t1 - t0), 1),
               "http": bool(s.http)}
        if s.http:
            out["scraped"] = _scraped(s, proc, seconds)
        return out
    finally:
        dock.close()
        s.close()


def _scraped(s: Setup, proc: psutil.Process, seconds: float, every: float = 5.0
             ) -> dict[str, Any]:
    """The daemon's CPU and RSS while /metrics is scraped every ``every`` s; scrape times."""
    times: list[float] = []
    t0, c0 = time.monotonic(), proc.cpu_times()
    with httpx.Client(timeout=60) as http:
        while time.monotonic() - t0 < seconds:
            began = time.monotonic()
            http.get(f"http://{s.http}/metrics").raise_for_status()
            times.append(time.monotonic() - began)
            time.sleep(max(0.0, every - (time.monotonic() - began)))
    c1, t1 = proc.cpu_times(), time.monotonic()
    cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
    return {"cpu_percent": round(cpu, 2), "rss_mb": round(proc.memory_info().rss / 2**20, 1),
            "scrapes": len(times), "scrape_s": _stats(times)}


def _checks(s: Setup) -> int:
    apps = DaemonClient(str(s.socket)).get("/v1/status")["apps"]
    return sum(int(a.get("checks", 0)) for a in apps.values())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10, help="failover trials (0: none)")
    ap.add_argument("--apps", type=int, nargs="+", default=[1, 10],
                    help="app counts for the idle footprint")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--http", action="store_true",
                    help="the daemon serves its status page and /metrics; also measure scrapes")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/watchdog.json"))
    args = ap.parse_args(argv)
    build_images()
    with tempfile.TemporaryDirectory(prefix="zdbw-") as tmp:
        root = Path(tmp)
        result: dict[str, Any] = {
            "failover": failover_trials(root / "failover", args.trials) if args.trials
            else None,
            "footprint": [footprint(root / f"fp{n}", n, args.idle_seconds, args.http)
                          for n in args.apps]}
        shutil.rmtree(root, ignore_errors=True)
    f = result["failover"]
    if f:
        _print_failover(f)
    for fp in result["footprint"]:
        print(f"idle footprint with {fp['apps']} app(s) at interval 1 s: RSS {fp['rss_mb']} MB,"
              f" CPU {fp['cpu_percent']} % of a core over {fp['seconds']:g} s "
              f"({fp['probe_rounds_per_s']} probe rounds/s)"
              + (" with the HTTP listener on" if fp.get("http") else ""))
        if fp.get("scraped"):
            sc = fp["scraped"]
            print(f"  while /metrics was scraped every 5 s: RSS {sc['rss_mb']} MB, CPU "
                  f"{sc['cpu_percent']} % of a core; scrape median {sc['scrape_s']['median']} s,"
                  f" max {sc['scrape_s']['max']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


def _print_failover(f: dict[str, Any]) -> None:
    print(f"failover over {f['trials']} trials (interval 1 s, K = 3):")
    print(f"  first response from the standby through Nginx: median {f['served_s']['median']}"
          f" s, max {f['served_s']['max']} s")
    print(f"  watchdog revert complete (upstream switched, verified): median "
          f"{f['reverted_s']['median']} s, max {f['reverted_s']['max']} s; missed {f['missed']}")


if __name__ == "__main__":
    main()
