"""Bad-release benchmark: a version whose /health says 200 but whose pages fail, under load.

    python -m benchmarks.bad_release                     # every way, 40 s observed each
    python -m benchmarks.bad_release --ways analysis-on --observe 20

The sample app built with ERROR_PERCENT=20 answers 500 to ~20 % of /cgi-bin/version (its
health endpoint is fine, so every health-based check lets it through). For each way it is
deployed over a good v1 under the same load as benchmarks.zero_downtime (three kinds of
client x GET/POST, every request recorded client-side):

* ``analysis-off``: zdagent's verified switch, the daemon running with ``[analysis]`` off;
* ``analysis-on``: the same with the daemon's traffic analysis at its defaults;
* ``canary-5``: a canary at 5 % (needs the canary feature: reported as pending until then);
* ``naive``: stop the old container, start the new one on the same port.

Per way: the time from the first failed request to all traffic back on the good version (the
end of the last request answered by the bad release; none if it stayed), and how many user
requests failed from the deploy to the end of the observation (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker

from benchmarks.harness import build_image, make_context
from benchmarks.loadgen import KINDS, Load, Record
from benchmarks.strategies import NaiveStrategy, ZdagentStrategy
from zdagent.client import DaemonClient
from zdagent.store import read_history

REPO = "zdbench-bad"
GOOD, BAD = "v1", "bad"
WAYS = ("analysis-off", "analysis-on", "canary-5", "naive")
PENDING = {"canary-5": "needs canary (pending): the canary feature is not on this branch"}


def build_images(error_percent: int) -> None:
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = make_context(Path(tmp) / "app")
        build_image(client, ctx, f"{REPO}:{GOOD}", ZDAGENT_VERSION=GOOD, MODE="ok")
        build_image(client, ctx, f"{REPO}:{BAD}", ZDAGENT_VERSION=BAD, MODE="ok",
                    ERROR_PERCENT=str(error_percent))
    client.close()


class _Zdagent(ZdagentStrategy):
    """zdagent's engine for the deploys, with its daemon watching (analysis on or off)."""

    analysis = True

    def __init__(self, workdir: Path, repo: str, app: str | None = None) -> None:
        self.extra = f"\n[analysis]\nenabled = {'true' if self.analysis else 'false'}\n"
        super().__init__(workdir, repo, app)
        self.workdir = workdir
        self.socket = workdir / "zd.sock"
        self.daemon: subprocess.Popen[bytes] | None = None

    def start_daemon(self) -> None:
        log = (self.workdir / "daemon.log").open("ab")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "zdagent", "daemon", "--config-dir", str(self.workdir),
             "--socket", str(self.socket)], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            try:
                status = DaemonClient(str(self.socket), timeout=2).get("/v1/status")
                if status["apps"][self.app]["traffic"]:
                    return
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon did not come up; see {self.workdir}/daemon.log")
            time.sleep(0.2)

    def history(self) -> list[dict[str, Any]]:
        return read_history(self.engine.cfg.state_dir, self.app, 10)

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        super().close()


class AnalysisOn(_Zdagent):
    name = "analysis-on"


class AnalysisOff(_Zdagent):
    name = "analysis-off"
    analysis = False


class Naive(NaiveStrategy):
    name = "naive"


STRATEGIES = {"analysis-off": AnalysisOff, "analysis-on": AnalysisOn, "naive": Naive}


def run_way(way: str, workdir: Path, rate: float, observe: float, settle: float
            ) -> dict[str, Any]:
    """v1 live under load, then deploy the bad release and watch for ``observe`` seconds."""
    if way in PENDING:
        return {"way": way, "pending": PENDING[way]}
    workdir.mkdir(parents=True, exist_ok=True)
    strategy = STRATEGIES[way](workdir, REPO, None)
    try:
        strategy.deploy(GOOD)
        if isinstance(strategy, _Zdagent):
            strategy.start_daemon()
        with Load(strategy.nginx.port, "/cgi-bin/version", rate, workdir,
                  max_seconds=settle + observe + 120) as load:
            time.sleep(settle)  # the good version's figures: analysis's baseline
            t_deploy = time.time()
            strategy.deploy(BAD)
            time.sleep(max(0.0, t_deploy + observe - time.time()))
            t_end = time.time()
        records = load.records()
        rows = strategy.history() if isinstance(strategy, _Zdagent) else []
    finally:
        strategy.close()
    return analyse(way, records, t_deploy, t_end, rows)


def _bad(r: Record) -> bool:
    """Answered by the bad release: its version, or any failure (the good one has none)."""
    return not r.ok or r.version == BAD


def analyse(way: str, records: list[Record], t_deploy: float, t_end: float,
            history: list[dict[str, Any]]) -> dict[str, Any]:
    window = [r for r in records if t_deploy <= r.t < t_end]
    failed = [r for r in window if not r.ok]
    first_error = min((r.t + r.dt for r in failed), default=None)
    last_bad = max((r.t + r.dt for r in window if _bad(r)), default=None)
    back = None
    tail = [r for r in window if last_bad is not None and r.t > last_bad]
    if first_error is not None and tail and all(not _bad(r) for r in tail):
        back = round(last_bad - first_error, 2)
    revert = next((h for h in history if h["kind"] == "auto-revert"), None)
    return {
        "way": way,
        "observed_s": round(t_end - t_deploy, 1),
        "requests": len(window),
        "req_per_s": round(len(window) / max(0.001, t_end - t_deploy), 1),
        "failed": len(failed),
        "failed_by_kind": {k: sum(r.kind == k for r in failed) for k in KINDS},
        "causes": dict(Counter(r.error or f"HTTP {r.status}" for r in failed)),
        "first_error_s": round(first_error - t_deploy, 2) if first_error else None,
        "back_on_good_s": back,  # first error -> all traffic back on the good version
        "revert_reason": revert["reason"] if revert else None,
    }


def report(results: list[dict[str, Any]]) -> None:
    print(f"{'way':<14}{'requests':>9}{'failed':>8}  {'close/retry/raw':<16}"
          f"{'1st error':>10}{'back on good':>14}")
    for r in results:
        if "pending" in r:
            print(f"{r['way']:<14}  {r['pending']}")
            continue
        kinds = "/".join(str(r["failed_by_kind"][k]) for k in KINDS)
        back = "never" if r["back_on_good_s"] is None else f"{r['back_on_good_s']}s"
        first = "-" if r["first_error_s"] is None else f"+{r['first_error_s']}s"
        print(f"{r['way']:<14}{r['requests']:>9}{r['failed']:>8}  {kinds:<16}{first:>10}"
              f"{back:>14}")
        if r["revert_reason"]:
            print(f"{'':<14}revert: {r['revert_reason']}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--rate", type=float, default=30.0,
                    help="requests/s per client process (6 processes)")
    ap.add_argument("--observe", type=float, default=40.0,
                    help="seconds watched after the bad deploy starts")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds of load on the good version before the deploy")
    ap.add_argument("--error-percent", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bad_release.json"))
    args = ap.parse_args(argv)
    ways = [w for w in args.ways.split(",") if w]
    unknown = set(ways) - set(WAYS)
    if unknown:
        ap.error(f"unknown ways {sorted(unknown)}; choose from {', '.join(WAYS)}")
    build_images(args.error_percent)
    results = []
    with tempfile.TemporaryDirectory(prefix="zdbad-") as tmp:
        os.chmod(tmp, 0o755)
        for way in ways:
            print(f"== {way}", flush=True)
            results.append(run_way(way, Path(tmp) / way, args.rate, args.observe,
                                   args.settle))
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
