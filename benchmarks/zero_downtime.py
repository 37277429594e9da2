"""Zero-downtime benchmark: load through Nginx on 127.0.0.1 during deploys and rollbacks.

    python -m benchmarks.zero_downtime                      # 20 deploys + 5 rollbacks per mode
    python -m benchmarks.zero_downtime --deploys 4 --rollbacks 1 --modes zdagent

For each mode (zdagent with reloads, zdagent with the reload-free njs switch, a bare
render-and-reload script, the naive stop/start) it runs the same
load — three kinds of client x GET/POST, every request recorded client-side — while performing
the deploys and rollbacks, then prints a table and writes JSON (see docs/benchmarks.md).
Everything runs on 127.0.0.1; the load is bounded by the schedule and a hard time limit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import docker

from benchmarks.harness import build_image, make_context
from benchmarks.loadgen import KINDS, METHODS, Load, Record
from benchmarks.plot import plots_dir
from benchmarks.strategies import STRATEGIES, Op

REPO = "zdbench"
VERSIONS = ("v1", "v2", "v3")
NEAR_SWITCH_S = 1.0


def schedule(deploys: int, rollbacks: int) -> list[str]:
    """Deploys with the rollbacks spread evenly among them (never two rollbacks in a row)."""
    plan: list[str] = []
    every = max(1, deploys // max(1, rollbacks)) if rollbacks else deploys + 1
    left = rollbacks
    for i in range(1, deploys + 1):
        plan.append("deploy")
        if left and i % every == 0:
            plan.append("rollback")
            left -= 1
    plan.extend(["rollback"] * left)
    return plan


def build_images() -> None:
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = make_context(Path(tmp) / "app")
        for v in VERSIONS:
            build_image(client, ctx, f"{REPO}:{v}", ZDAGENT_VERSION=v, MODE="ok")
    client.close()


def run_mode(mode: str, workdir: Path, plan: list[str], rate: float, gap: float,
             app: str | None = None, plot: Path | None = None) -> dict:
    """Deploy v1, then run the plan under load; return the analysed figures.

    ``app``: the zdagent app's name (default: the mode's); its containers are removed at the end.
    ``plot``: also write the run's timeline picture there (PNG, see benchmarks/plot.py).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    strategy = STRATEGIES[mode](workdir, REPO, app)
    ops: list[Op] = []
    try:
        strategy.deploy("v1")
        current, previous = "v1", "v1"
        limit = 120 + len(plan) * (gap + 15)
        with Load(strategy.nginx.port, "/cgi-bin/version", rate, workdir,
                  max_seconds=limit) as load:
            time.sleep(gap)
            t_start = time.time()
            for action in plan:
                if action == "deploy":
                    version = VERSIONS[(VERSIONS.index(current) + 1) % len(VERSIONS)]
                    ops.append(strategy.deploy(version))
                    previous, current = current, version
                else:
                    ops.append(strategy.rollback(previous))
                    previous, current = current, previous
                time.sleep(gap)
            t_stop = time.time()
        records = load.records()
    finally:
        strategy.close()
    result = analyse(mode, ops, records, t_start, t_stop)
    if plot is not None:
        result["plot"] = str(plot_run(plot, mode, ops, records, result))
    return result


# Per client kind and method: a browser-like client retries GETs, never POSTs.
CLIENT_LABELS = {f"{kind}/{method}": f"{name} {method}" for kind, name in (
    ("close", "close"), ("retry", "retrying keep-alive"), ("raw", "raw keep-alive"))
    for method in METHODS}


def plot_run(out: Path, mode: str, ops: list[Op], records: list[Record],
             result: dict[str, Any]) -> Path:
    """The run as a timeline: load and failures per client kind, latency, each switch."""
    from benchmarks.plot import Marker, Sample, plot_timeline

    failed = sum(c["failed"] for c in result["clients"].values())
    return plot_timeline(
        out, [Sample(r.t, r.dt, f"{r.kind}/{r.method}", r.ok) for r in records],
        [Marker(op.switch_at, f"{op.action} {op.version}",
                "switch" if op.action == "deploy" else "rollback", start=op.t_cmd)
         for op in ops],
        title=f"{mode}: {result['deploys']} deploys + {result['rollbacks']} rollbacks under "
              f"load, {result['requests']} requests, {failed} failed",
        labels=CLIENT_LABELS)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _ms(values: list[float]) -> dict[str, float | None]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 2)
    return {"p50": r(pct(values, 50)), "p99": r(pct(values, 99)),
            "max": r(max(values) if values else None), "n": len(values)}


def _windows(ops: list[Op], records: list[Record], t_stop: float
             ) -> list[tuple[Op, list[Record]]]:
    """Each op with the requests started between its command and the next op's command."""
    out = []
    for i, op in enumerate(ops):
        end = ops[i + 1].t_cmd if i + 1 < len(ops) else t_stop
        out.append((op, [r for r in records if op.t_cmd <= r.t < end]))
    return out


def _switch_time(op: Op, window: list[Record]) -> float | None:
    """Candidate healthy -> first response carrying the new version through Nginx."""
    done = [r.t + r.dt for r in window if r.ok and r.version == op.version]
    after = [t for t in done if t >= op.healthy_at]
    return min(after) - op.healthy_at if after else None


def _all_on_new(op: Op, window: list[Record]) -> float | None:
    """Command start -> the first request after which every request gets the new version."""
    last_bad = None
    for i, r in enumerate(window):
        if not (r.ok and r.version == op.version):
            last_bad = i
    if last_bad is None:
        return 0.0
    if last_bad + 1 >= len(window):
        return None
    return window[last_bad + 1].t - op.t_cmd


def _sequences(window: list[Record]) -> dict[int, list[str]]:
    """Per client process: the versions its successful requests got, in order."""
    seqs: dict[int, list[str]] = defaultdict(list)
    for r in window:
        if r.ok:
            seqs[r.proc].append(r.version)
    return seqs


def _flips(window: list[Record]) -> dict[int, int]:
    """Per client process: how many times the served version changed in this window."""
    return {p: sum(1 for a, b in itertools.pairwise(s) if a != b)
            for p, s in _sequences(window).items()}


def analyse(mode: str, ops: list[Op], records: list[Record], t_start: float,
            t_stop: float) -> dict[str, Any]:
    clients: dict[str, Any] = {}
    for kind in KINDS:
        for method in METHODS:
            rs = [r for r in records if r.kind == kind and r.method == method]
            causes = Counter(r.error or f"HTTP {r.status}" for r in rs if not r.ok)
            clients[f"{kind}/{method}"] = {
                "requests": len(rs), "failed": sum(causes.values()),
                "causes": dict(causes), "client_retries": sum(r.retried for r in rs)}
    switches = [op.switch_at for op in ops]
    ok = [r for r in records if r.ok]
    near = [r.dt for r in ok if any(abs(r.t - s) <= NEAR_SWITCH_S for s in switches)]
    steady = [r.dt for r in ok if all(abs(r.t - s) > NEAR_SWITCH_S for s in switches)]
    windows = _windows(ops, records, t_stop)
    flips = [n for _, w in windows for n in _flips(w).values()]
    ended_on_new = sum(1 for op, w in windows for seq in _sequences(w).values()
                       if seq and seq[-1] == op.version)
    switch_times = [s for op, w in windows if (s := _switch_time(op, w)) is not None]
    rollback_times = [s for op, w in windows if op.action == "rollback"
                      and (s := _all_on_new(op, w)) is not None]
    deploys = [{"version": op.version, "action": op.action,
                "wall_s": round(op.t_end - op.t_cmd, 3),
                "phases_s": {k: round(v, 3) for k, v in op.phases.items()},
                "overhead_s": round(op.t_end - op.t_cmd - op.phases.get("source", 0)
                                    - op.phases.get("probe", 0), 3) if op.phases else None}
               for op in ops]
    overheads = [d["overhead_s"] for d in deploys
                 if d["overhead_s"] is not None and d["action"] == "deploy"]
    steady_p99 = pct(steady, 99)
    near_p99 = pct(near, 99)
    return {
        "mode": mode,
        "seconds": round(t_stop - t_start, 2),
        "requests": len(records),
        "req_per_s": round(len(records) / max(0.001, t_stop - t_start), 1),
        "deploys": sum(op.action == "deploy" for op in ops),
        "rollbacks": sum(op.action == "rollback" for op in ops),
        "clients": clients,
        "latency_ms": {"steady": _ms(steady), "near_switch": _ms(near)},
        "p99_near_over_steady": round(near_p99 / steady_p99, 2)
        if near_p99 and steady_p99 else None,
        "switch_ms": _ms(switch_times),
        "rollback_ms": _ms(rollback_times),
        # A window may show 0 flips when the switch beat a client's next request: never
        # back and forth is what matters, so "at most once" is reported beside "exactly".
        "flip_windows": {"total": len(flips), "exactly_once": flips.count(1),
                         "at_most_once": sum(1 for n in flips if n <= 1),
                         "ended_on_new": ended_on_new, "counts": dict(Counter(flips))},
        "post_replayed": sum(1 for r in records if r.method == "POST" and "," in r.upstream),
        "get_retried_by_nginx": sum(1 for r in records if r.method == "GET"
                                    and "," in r.upstream),
        "ops": deploys,
        "overhead_s": {"median": round(statistics.median(overheads), 3) if overheads else None,
                       "max": round(max(overheads), 3) if overheads else None},
    }


def _fmt(x: Any, suffix: str = "") -> str:
    return "-" if x is None else f"{x}{suffix}"


def report(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    t = Table(title="failed requests by client (requests / failed: causes)")
    t.add_column("client")
    for res in results:
        t.add_column(res["mode"])
    for key in results[0]["clients"]:
        row = [key]
        for res in results:
            c = res["clients"][key]
            causes = ", ".join(f"{k} {v}" for k, v in c["causes"].items())
            row.append(f"{c['requests']} / {c['failed']}" + (f": {causes}" if causes else ""))
        t.add_row(*row)
    con.print(t)

    s = Table(title="summary")
    s.add_column("figure")
    for res in results:
        s.add_column(res["mode"])
    rows = [
        ("requests (req/s)", lambda r: f"{r['requests']} ({r['req_per_s']}/s)"),
        ("deploys + rollbacks", lambda r: f"{r['deploys']} + {r['rollbacks']}"),
        ("failed: close", lambda r: _failed(r, "close")),
        ("failed: retrying keep-alive", lambda r: _failed(r, "retry")),
        ("failed: raw keep-alive", lambda r: _failed(r, "raw")),
        ("latency steady p50/p99/max ms", lambda r: _lat(r["latency_ms"]["steady"])),
        ("latency ±1 s of switch p50/p99/max", lambda r: _lat(r["latency_ms"]["near_switch"])),
        ("p99 near switch / steady", lambda r: _fmt(r["p99_near_over_steady"], "x")),
        ("switch ms (healthy -> served) median/max", lambda r: _med(r["switch_ms"])),
        ("rollback ms (cmd -> all on standby) p50/max", lambda r: _med(r["rollback_ms"])),
        ("zdagent overhead s median/max", lambda r: f"{_fmt(r['overhead_s']['median'])}/"
                                                    f"{_fmt(r['overhead_s']['max'])}"),
        ("windows flipping exactly once", lambda r: f"{r['flip_windows']['exactly_once']}/"
                                                    f"{r['flip_windows']['total']}"),
        ("windows flipping at most once, ending new",
         lambda r: f"{r['flip_windows']['at_most_once']}/{r['flip_windows']['total']}"),
        ("POSTs replayed on a 2nd upstream", lambda r: str(r["post_replayed"])),
    ]
    for label, fn in rows:
        s.add_row(label, *[fn(r) for r in results])
    con.print(s)
    base = next((r for r in results if r["mode"] == "zdagent"), None)
    if base:
        for r in results:
            if r is base:
                continue
            mine = sum(c["failed"] for c in base["clients"].values())
            theirs = sum(c["failed"] for c in r["clients"].values())
            con.print(f"{r['mode']}: {theirs} failed requests vs zdagent {mine} "
                      f"(ratio {theirs / mine:.1f}x)" if mine else
                      f"{r['mode']}: {theirs} failed requests vs zdagent 0")


def _failed(r: dict[str, Any], kind: str) -> str:
    return " / ".join(f"{m} {r['clients'][f'{kind}/{m}']['failed']}" for m in METHODS)


def _lat(d: dict[str, Any]) -> str:
    return f"{_fmt(d['p50'])}/{_fmt(d['p99'])}/{_fmt(d['max'])}"


def _med(d: dict[str, Any]) -> str:
    return f"{_fmt(d['p50'])}/{_fmt(d['max'])}"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deploys", type=int, default=20)
    ap.add_argument("--rollbacks", type=int, default=5)
    ap.add_argument("--rate", type=float, default=100.0,
                    help="requests/s per client process (6 processes)")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between operations")
    ap.add_argument("--modes", default="zdagent,zdagent-njs,bare,naive")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/zero_downtime.json"))
    ap.add_argument("--plots", type=Path, default=Path("docs"),
                    help="write docs/zero-downtime-timeline-<mode>.png per mode (needs "
                         "matplotlib: pip install '.[bench]'); '' for none")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(STRATEGIES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}; choose from {sorted(STRATEGIES)}")
    plots = plots_dir(ap, args.plots)
    build_images()
    plan = schedule(args.deploys, args.rollbacks)
    results = []
    with tempfile.TemporaryDirectory(prefix="zdbench-") as tmp:
        for mode in modes:
            print(f"== {mode}: {len(plan)} operations under load", flush=True)
            plot = plots / f"zero-downtime-timeline-{mode}.png" if plots else None
            results.append(run_mode(mode, Path(tmp) / mode, plan, args.rate, args.gap,
                                    plot=plot))
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out),
                                                              "plots": str(args.plots)},
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
