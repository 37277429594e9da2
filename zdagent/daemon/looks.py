"""A cheap look at every app's slots for the status page and /metrics.

``status --json`` looks at one app thoroughly (an Engine with its own Docker client, each
slot's container and image, Nginx's master and a request through it); for 100 apps that took
13 s a round under load (measured: ``benchmarks.watchdog --apps 100 --http``). The page and
the metrics need less: one Docker call lists every zdagent container (state and labels), and
each running slot's health endpoint gets one GET on the event loop, a bounded number at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import docker
import docker.errors

from zdagent.config import AppConfig
from zdagent.probe import aget, slot_url
from zdagent.slots import LABEL, SLOTS, container_name
from zdagent.status import standby_of

PROBES_AT_ONCE = 32

Containers = dict[tuple[str, str], dict[str, Any]]


def list_containers() -> Containers:
    """Every zdagent container as (app, slot) -> its raw list entry (one API call). The
    canonical name wins over another labelled container of the same slot."""
    client = docker.from_env()
    try:
        rows = client.api.containers(all=True, filters={"label": f"{LABEL}.app"})
    finally:
        client.close()
    found: Containers = {}
    for row in rows:
        labels = row.get("Labels") or {}
        key = (labels.get(f"{LABEL}.app", ""), labels.get(f"{LABEL}.slot", ""))
        canonical = f"/{container_name(*key)}" in (row.get("Names") or [])
        if key[1] and (canonical or key not in found):
            found[key] = row
    return found


def slot_rows(cfg: AppConfig, containers: Containers) -> dict[str, dict[str, Any]]:
    """Pure: the app's slots as ``status --json`` names them (health filled in later)."""
    rows: dict[str, dict[str, Any]] = {}
    for slot in SLOTS:
        c = containers.get((cfg.name, slot))
        labels = (c or {}).get("Labels") or {}
        rows[slot] = {"slot": slot, "port": cfg.slot_port(slot),
                      "state": str(c.get("State") or "unknown") if c else "missing",
                      "version": labels.get(f"{LABEL}.version"),
                      "container": container_name(cfg.name, slot), "health": "-"}
    return rows


async def health(cfg: AppConfig, row: dict[str, Any], gate: asyncio.Semaphore) -> str:
    async with gate:
        a = await aget(slot_url(row["port"], cfg.health.path), cfg.health.timeout)
    if a.status is not None and a.status in cfg.health.statuses:
        return "healthy"
    return f"unhealthy ({a.error or f'HTTP {a.status}'})"


async def look(apps: dict[str, tuple[AppConfig, str | None]], containers: Containers
               ) -> dict[str, dict[str, Any]]:
    """Each app's slots, health and standby, from the container list and one probe per
    running slot; ``apps`` maps a name to (config, the slot Nginx routes to)."""
    gate = asyncio.Semaphore(PROBES_AT_ONCE)
    out: dict[str, dict[str, Any]] = {}
    probes = []
    for name, (cfg, live) in apps.items():
        rows = slot_rows(cfg, containers)
        out[name] = {"slots": rows, "live_slot": live}
        probes += [(name, row, health(cfg, row, gate)) for row in rows.values()
                   if row["state"] == "running"]
    for (_name, row, _), result in zip(probes, await asyncio.gather(*(p[2] for p in probes)),
                                       strict=True):
        row["health"] = result
    for seen in out.values():
        seen["standby"] = standby_of(seen["live_slot"], seen["slots"])
    return out


def docker_problem(e: Exception) -> str:
    """Docker unreachable, as the page says it."""
    return f"Docker is not reachable: {e}" if isinstance(e, docker.errors.DockerException) \
        else f"unexpected error: {type(e).__name__}: {e}"
