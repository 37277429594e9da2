"""Bad-release benchmark: a version whose /health says 200 but whose pages fail, under load.

    python -m benchmarks.bad_release                     # every way, 40 s observed each
    python -m benchmarks.bad_release --ways analysis-on --observe 20

The sample app built with ERROR_PERCENT=20 answers 500 to ~20 % of /cgi-bin/version (its
health endpoint is fine, so every health-based check lets it through). For each way it is
deployed over a good v1 under the same load as benchmarks.zero_downtime (three kinds of
client x GET/POST, every request recorded client-side):

* ``analysis-off``: zdagent's verified switch, the daemon running with ``[analysis]`` off;
* ``analysis-on``: the same with the daemon's traffic analysis at its defaults;
* ``canary-5``: ``zdagent deploy bad --canary`` through the daemon, ``[canary]`` steps
  5/25/50/100 % at the default 60 s each, analysis on: the first step's checks abort it;
* ``naive``: stop the old container, start the new one on the same port.

Per way: the time from the first failed request to all traffic back on the good version (the
end of the last request answered by the bad release; none if it stayed), and how many user
requests failed from the deploy to the end of the observation (see docs/benchmarks.md).
With ``--plots DIR`` (default docs) each way's timeline goes to
``DIR/bad-release-timeline-<way>.png`` (benchmarks/plot.py).
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
from benchmarks.plot import plots_dir
from benchmarks.strategies import NaiveStrategy, ZdagentStrategy
from zdagent.client import DaemonClient
from zdagent.store import read_history

REPO = "zdbench-bad"
GOOD, BAD = "v1", "bad"
WAYS = ("analysis-off", "analysis-on", "canary-5", "naive")
CANARY = "\n[canary]\nsteps = [5, 25, 50, 100]\nstep_seconds = 60\n"


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
    more = ""  # further config sections

    def __init__(self, workdir: Path, repo: str, app: str | None = None) -> None:
        self.extra = (f"\n[analysis]\nenabled = {'true' if self.analysis else 'false'}\n"
                      + self.more)
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


class Canary5(_Zdagent):
    """``zdagent deploy bad --canary`` through the daemon (which owns the steps): it
    returns once the canary is promoted or, as here, aborted back to stable."""

    name = "canary-5"
    more = CANARY

    proc: subprocess.Popen[str] | None = None

    def deploy(self, version: str) -> Any:
        """The first version a plain deploy; the next one a canary, started in the
        background (it runs for minutes when the candidate is good)."""
        if version == GOOD:
            return super().deploy(version)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zdagent", "deploy", version, "--canary",
             "--socket", str(self.socket)],
            env={**os.environ, "ZDAGENT_CONFIG": str(self.workdir / f"{self.app}.toml"),
                 "NO_COLOR": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        return self.proc

    def outcome(self) -> str:
        """The canary command's last line (its error, once aborted); it is stopped if it
        still runs at the end of the observation (the daemon's exit aborts it)."""
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            return "still running at the end of the observation"
        lines = (self.proc.stdout.read() if self.proc.stdout else "").strip().splitlines()
        return f"exit {self.proc.returncode}: {lines[-1] if lines else ''}"

    def close(self) -> None:
        super().close()  # the daemon's exit aborts a canary still running
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Naive(NaiveStrategy):
    name = "naive"


STRATEGIES = {"analysis-off": AnalysisOff, "analysis-on": AnalysisOn, "canary-5": Canary5,
              "naive": Naive}


def run_way(way: str, workdir: Path, rate: float, observe: float, settle: float,
            plot: Path | None = None) -> dict[str, Any]:
    """v1 live under load, then deploy the bad release and watch for ``observe`` seconds;
    ``plot``: also write the timeline picture there."""
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
        outcome = strategy.outcome() if isinstance(strategy, Canary5) else None
    finally:
        strategy.close()
    result = analyse(way, records, t_deploy, t_end, rows)
    if outcome is not None:
        result["canary"] = outcome
    if plot is not None:
        result["plot"] = str(plot_way(plot, way, records, t_deploy, result))
    return result


def plot_way(out: Path, way: str, records: list[Record], t_deploy: float,
             result: dict[str, Any]) -> Path:
    """The way's timeline: the deploy command, and the span from the first error to the
    last answer of the bad release (its end: all traffic back on the good version)."""
    from benchmarks.plot import Marker, Sample, plot_timeline

    markers = [Marker(t_deploy, f"deploy {BAD}", "deploy")]
    if result["first_error_s"] is not None and result["back_on_good_s"] is not None:
        first = t_deploy + result["first_error_s"]
        markers.append(Marker(first + result["back_on_good_s"], "back on good", "revert",
                              start=first))
    back = "never" if result["back_on_good_s"] is None else f"{result['back_on_good_s']} s"
    return plot_timeline(
        out, [Sample(r.t, r.dt, f"{r.kind}/{r.method}", r.ok) for r in records], markers,
        title=f"bad release ({way}): {result['failed']} failed of {result['requests']}, "
              f"back on good {back} after the first error")


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
    revert = next((h for h in history if h["kind"] == "auto-revert"
                   or (h["kind"] == "canary" and h.get("outcome") == "failed")), None)
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
        "revert_reason": (revert.get("reason") or revert.get("error")) if revert else None,
    }


def report(results: list[dict[str, Any]]) -> None:
    print(f"{'way':<14}{'requests':>9}{'failed':>8}  {'close/retry/raw':<16}"
          f"{'1st error':>10}{'back on good':>14}")
    for r in results:
        kinds = "/".join(str(r["failed_by_kind"][k]) for k in KINDS)
        back = "never" if r["back_on_good_s"] is None else f"{r['back_on_good_s']}s"
        first = "-" if r["first_error_s"] is None else f"+{r['first_error_s']}s"
        print(f"{r['way']:<14}{r['requests']:>9}{r['failed']:>8}  {kinds:<16}{first:>10}"
              f"{back:>14}")
        if r["revert_reason"]:
            print(f"{'':<14}revert: {r['revert_reason']}")
        if r.get("canary"):
            print(f"{'':<14}canary: {r['canary']}")


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
    ap.add_argument("--plots", type=Path, default=Path("docs"),
                    help="write DIR/bad-release-timeline-<way>.png (needs matplotlib: pip "
                         "install '.[bench]'); '' for none")
    args = ap.parse_args(argv)
    ways = [w for w in args.ways.split(",") if w]
    unknown = set(ways) - set(WAYS)
    if unknown:
        ap.error(f"unknown ways {sorted(unknown)}; choose from {', '.join(WAYS)}")
    plots = plots_dir(ap, args.plots)
    build_images(args.error_percent)
    results = []
    with tempfile.TemporaryDirectory(prefix="zdbad-") as tmp:
        os.chmod(tmp, 0o755)
        for way in ways:
            print(f"== {way}", flush=True)
            plot = plots / f"bad-release-timeline-{way}.png" if plots else None
            results.append(run_way(way, Path(tmp) / way, args.rate, args.observe,
                                   args.settle, plot))
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
