"""Watchdog benchmark: failover time and the daemon's idle footprint.

    python -m benchmarks.watchdog            # 10 failover trials, footprint with 1 and 10 apps

Failover (watchdog interval 1 s, K = 3, cooldown 0 so trials are independent): the live
container is stopped, then two times are measured from the moment it is down:
* ``served``: the first response through Nginx from the standby (Nginx's ``backup`` server);
* ``reverted``: the upstream file names the standby and Nginx answers from it (the
  watchdog's verified switch).
Footprint: the daemon's RSS and CPU over 10 s of idle watching, with 1 app and with 10.
Everything on 127.0.0.1; bounded trials.
"""

from __future__ import annotations

import argparse
import json
import shutil
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

from benchmarks.harness import NginxServer, app_config, free_port
from benchmarks.zero_downtime import REPO, build_images
from zdagent.api import Client
from zdagent.config import load_config
from zdagent.nginx import render_site, render_upstream, served_by

WATCHDOG = "\n[watchdog]\ninterval = 1.0\nfailures = 3\ncooldown = 0\nmax_reverts = 100\n"


class Setup:
    """A private Nginx, N apps in a config dir, and a running daemon."""

    def __init__(self, workdir: Path, apps: int) -> None:
        self.workdir = workdir
        self.nginx = NginxServer.create(workdir / "nginx")
        self.config_dir = workdir / "apps"
        self.config_dir.mkdir()
        self.socket = workdir / "zd.sock"
        self.names = [f"zdbw{i}" for i in range(apps)]
        self.cfgs = {}
        for name in self.names:
            path = self.config_dir / f"{name}.toml"
            path.write_text(app_config(name, workdir / "state", self.nginx, free_port(),
                                       free_port(), f'[source]\nimage = "{REPO}"\n'
                                       'pull = "never"', WATCHDOG, listen=free_port()))
            cfg = load_config(path)
            (self.nginx.prefix / "sites" / f"{name}.conf").write_text(render_site(cfg))
            cfg.nginx.upstream_file.write_text(render_upstream(cfg, None, None))
            self.cfgs[name] = cfg
        self.nginx.start()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zdagent.daemon", "--config-dir", str(self.config_dir),
             "--socket", str(self.socket)], stdout=subprocess.DEVNULL,
            stderr=(workdir / "daemon.log").open("w"))
        deadline = time.monotonic() + 30
        while True:
            try:
                Client(self.socket).get("/v1/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("daemon did not start") from None
                time.sleep(0.1)

    def deploy(self, name: str, version: str) -> None:
        for item in Client(self.socket).stream(f"/v1/apps/{name}/deploy",
                                               {"version": version}):
            if "error" in item:
                raise RuntimeError(item["error"]["message"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.nginx.stop()
        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"label": "zdagent.app"}):
            if c.labels.get("zdagent.app", "").startswith("zdbw"):
                c.remove(force=True)
        client.close()


def failover_trials(workdir: Path, trials: int) -> dict[str, Any]:
    s = Setup(workdir, 1)
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
                dock.containers.get(f"{name}-{live}").start()  # back as the standby
                time.sleep(3)
    finally:
        dock.close()
        s.close()
    ok = [x for x in reverted if x is not None]
    return {"trials": trials, "served_s": _stats([x for x in served if x is not None]),
            "reverted_s": _stats(ok), "missed": trials - len(ok)}


def _stats(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(xs), 3), "max": round(max(xs), 3)}


def footprint(workdir: Path, apps: int, seconds: float) -> dict[str, Any]:
    s = Setup(workdir, apps)
    try:
        for name in s.names:
            s.deploy(name, "v1")
        time.sleep(3)  # let the watchdogs settle
        proc = psutil.Process(s.proc.pid)
        t0 = proc.cpu_times()
        time.sleep(seconds)
        t1 = proc.cpu_times()
        rss = proc.memory_info().rss
        cpu = (t1.user + t1.system - t0.user - t0.system) / seconds * 100
        return {"apps": apps, "rss_mb": round(rss / 2**20, 1), "cpu_percent": round(cpu, 2),
                "seconds": seconds}
    finally:
        s.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/watchdog.json"))
    args = ap.parse_args(argv)
    build_images()
    with tempfile.TemporaryDirectory(prefix="zdbw-") as tmp:
        root = Path(tmp)
        result = {"failover": failover_trials(root / "failover", args.trials),
                  "footprint": [footprint(root / f"fp{n}", n, args.idle_seconds)
                                for n in (1, 10)]}
        shutil.rmtree(root, ignore_errors=True)
    f = result["failover"]
    print(f"failover over {f['trials']} trials (interval 1 s, K = 3):")
    print(f"  first response from the standby through Nginx: median {f['served_s']['median']}"
          f" s, max {f['served_s']['max']} s")
    print(f"  watchdog revert complete (upstream switched, verified): median "
          f"{f['reverted_s']['median']} s, max {f['reverted_s']['max']} s; missed {f['missed']}")
    for fp in result["footprint"]:
        print(f"idle footprint with {fp['apps']} app(s): RSS {fp['rss_mb']} MB, "
              f"CPU {fp['cpu_percent']} % of a core over {fp['seconds']:g} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
