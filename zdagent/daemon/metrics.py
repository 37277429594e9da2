"""Prometheus metrics of the daemon, through ``prometheus_client`` (its own registry).

Two kinds of source:

* **History** (the store): every deploy, rollback, revert and restart that finished, wherever
  it ran (the daemon, or the CLI with ``--local``), becomes counters and histograms as the
  records are followed (``follow``). The store stays the one truth; nothing counts twice.
* **State at scrape time** (``StateCollector``): the live slot, slot health and versions,
  the watchdog's state, and the figures other parts add to an app's view (``traffic``), read
  from the same view ``/api/status`` serves.

The watchdog's probe latency is observed as each round ends (``probed``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from zdagent.slots import SLOTS
from zdagent.store import DeployRecord
from zdagent.watchdog import STATES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEPLOY_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,60}")
# The traffic window's figures under Prometheus' names (units in the name).
TRAFFIC_NAMES = {"p50": "p50_seconds", "p99": "p99_seconds", "seconds": "window_seconds",
                 "errors": "errors_5xx"}

View = Callable[[], dict[str, Any]]


def revert_reason(reason: str | None) -> str:
    """A revert's reason as a label of few values (the text itself is in history).

    The watchdog writes "green failed 3 probes in a row (last: green direct: HTTP 500)";
    the traffic analysis "analysis: 5xx 21.3% over 412 requests > 5% (green since the switch:
    …)" or "analysis: p99 480ms …"; a canary names itself.
    """
    text = (reason or "").lower()
    last = text.split("(last:", 1)[1] if "(last:" in text else ""
    if "canary" in text:
        return "canary"
    if text.startswith("analysis:"):
        judged = text.removeprefix("analysis:").strip()
        return "error_rate" if judged.startswith("5xx") else \
            "latency" if judged.startswith("p99") else "analysis"
    if "answered by" in last:
        return "wrong_upstream"
    if re.search(r"\bhttp \d{3}\b", last):
        return "http_status"
    if last:
        return "unreachable"
    return "other"


class Metrics:
    """The registry, the history-fed counters and the state collector."""

    def __init__(self, view: View, since: float = 0.0,
                 outbox_depth: Callable[[], int] | None = None) -> None:
        self.since = since  # records that finished before this (the daemon's start) are old
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deploys = Counter("zdagent_deploys", "Finished deploys, rollbacks, reverts and "
                               "restarts", ["app", "kind", "outcome"], registry=r)
        self.duration = Histogram("zdagent_deploy_duration_seconds", "Wall time of a finished "
                                  "deploy (any kind)", ["app", "kind", "outcome"],
                                  buckets=DEPLOY_BUCKETS, registry=r)
        self.phases = Histogram("zdagent_deploy_phase_duration_seconds", "Wall time of one "
                                "phase of a deploy", ["app", "kind", "phase"],
                                buckets=PHASE_BUCKETS, registry=r)
        self.switch = Histogram("zdagent_switch_duration_seconds", "Time to switch Nginx to "
                                "the new slot, verified", ["app", "kind"],
                                buckets=PHASE_BUCKETS, registry=r)
        self.reverts = Counter("zdagent_reverts", "Automatic reverts that happened, by reason",
                               ["app", "reason"], registry=r)
        self.probe = Histogram("zdagent_watchdog_probe_duration_seconds", "Latency of one "
                               "watchdog probe round", ["app"], buckets=PROBE_BUCKETS,
                               registry=r)
        r.register(StateCollector(view, outbox_depth))
        self._after: dict[str, int] = {}  # per app: every record up to this id was counted
        self._counted: dict[str, set[int]] = {}  # finished ids above it (a running one below)

    def after(self, app: str) -> int:
        return self._after.get(app, 0)

    def follow(self, app: str, records: Iterable[DeployRecord]) -> None:
        """Count the finished ones of ``records`` (newer than ``after(app)``, oldest first).

        A record still running keeps the mark below it, so it is counted once it finishes;
        one that finished before ``since`` is passed over (old history is not news).
        """
        counted = self._counted.setdefault(app, set())
        mark = self._after.get(app, 0)
        running: list[int] = []
        for rec in records:
            if rec.id <= mark or rec.id in counted:
                continue
            if rec.outcome == "running":
                running.append(rec.id)
                continue
            if rec.finished_at is None or rec.finished_at >= self.since:
                self.observe(rec)
            counted.add(rec.id)
        top = max(counted | set(running), default=mark)
        mark = min(running) - 1 if running else max(mark, top)
        self._after[app] = mark
        counted.difference_update({i for i in counted if i <= mark})

    def observe(self, rec: DeployRecord) -> None:
        """One finished record into the counters and histograms."""
        self.deploys.labels(rec.app, rec.kind, rec.outcome).inc()
        if rec.finished_at is not None:
            self.duration.labels(rec.app, rec.kind, rec.outcome).observe(
                max(0.0, rec.finished_at - rec.started_at))
        for phase in rec.phases:
            if phase.duration is None:
                continue
            self.phases.labels(rec.app, rec.kind, phase.name).observe(phase.duration)
            if phase.name == "switch" and phase.ok:
                self.switch.labels(rec.app, rec.kind).observe(phase.duration)
        if rec.kind == "auto-revert" and rec.outcome == "succeeded":
            self.reverts.labels(rec.app, revert_reason(rec.reason)).inc()

    def probed(self, app: str) -> Callable[[float], None]:
        """The watchdog's hook for ``app``: one histogram child, looked up once."""
        return self.probe.labels(app).observe

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Gauges read from the daemon's view of every app at scrape time."""

    def __init__(self, view: View, outbox_depth: Callable[[], int] | None = None) -> None:
        self.view = view
        self.outbox_depth = outbox_depth

    def describe(self) -> list[Metric]:
        return []  # names depend on the view (traffic figures): describe nothing up front

    def collect(self) -> Iterator[Metric]:
        yield from state_metrics(self.view().get("apps", {}))
        if self.outbox_depth is not None:
            yield GaugeMetricFamily("zdagent_notification_outbox_depth", "Notifications "
                                    "waiting to be delivered", value=self.outbox_depth())


def state_metrics(apps: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """Pure: the gauges for a view of every app (see ``web.app_view``)."""
    live = GaugeMetricFamily("zdagent_live_slot", "1 for the slot Nginx routes to",
                             labels=["app", "slot"])
    up = GaugeMetricFamily("zdagent_slot_running", "1 when the slot's container runs",
                           labels=["app", "slot"])
    healthy = GaugeMetricFamily("zdagent_slot_healthy", "1 when the slot passed its health "
                                "check at the last look", labels=["app", "slot"])
    info = GaugeMetricFamily("zdagent_slot_info", "The version each slot runs",
                             labels=["app", "slot", "version", "state"])
    watch = GaugeMetricFamily("zdagent_watchdog_state", "1 for the watchdog's current state",
                              labels=["app", "state"])
    failures = GaugeMetricFamily("zdagent_watchdog_consecutive_failures", "Failed probes in "
                                 "a row on the live slot", labels=["app"])
    busy = GaugeMetricFamily("zdagent_app_busy", "1 while a deploy or rollback runs",
                             labels=["app"])
    traffic: dict[str, GaugeMetricFamily] = {}
    for name, app in sorted(apps.items()):
        wd = app.get("watchdog") or {}
        slots = app.get("slots") or {}
        current = app.get("live_slot")
        for slot in SLOTS:
            live.add_metric([name, slot], 1.0 if slot == current else 0.0)
            row = slots.get(slot)
            if row is None:
                continue
            up.add_metric([name, slot], 1.0 if row.get("state") == "running" else 0.0)
            healthy.add_metric([name, slot], 1.0 if row.get("health") == "healthy" else 0.0)
            info.add_metric([name, slot, str(row.get("version") or ""),
                             str(row.get("state") or "")], 1.0)
        if wd.get("status"):
            for state in STATES:
                watch.add_metric([name, state], 1.0 if wd["status"] == state else 0.0)
            failures.add_metric([name], float(wd.get("consecutive_failures") or 0))
            busy.add_metric([name], 1.0 if wd.get("busy") else 0.0)
        _traffic(traffic, name, app.get("traffic"))
    yield from (live, up, healthy, info, watch, failures, busy)
    yield from traffic.values()


def _traffic(families: dict[str, GaugeMetricFamily], app: str, traffic: Any) -> None:
    """Per-slot numbers of the last traffic window (the app's ``traffic.slots``: requests,
    5xx errors, error rate, p50, p99, window length) as ``zdagent_traffic_<name>{app, slot}``;
    anything that is not a number with a metric-like name is skipped."""
    figures = traffic.get("slots") if isinstance(traffic, dict) else None
    if not isinstance(figures, dict):
        return
    for slot, row in sorted(figures.items()):
        if slot not in SLOTS or not isinstance(row, dict):
            continue
        for key, value in sorted(row.items()):
            name = TRAFFIC_NAMES.get(key, key)
            if not (isinstance(value, int | float) and not isinstance(value, bool)
                    and METRIC_NAME.fullmatch(name)):
                continue
            fam = families.get(name)
            if fam is None:
                fam = families[name] = GaugeMetricFamily(
                    f"zdagent_traffic_{name}", f"{key} of a slot's requests over the last "
                    "traffic window (Nginx's access log)", labels=["app", "slot"])
            fam.add_metric([app, slot], float(value))
