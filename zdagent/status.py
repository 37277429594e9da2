"""What is true right now, and where the record and reality disagree.

Status never changes anything: it reads the containers, probes them once, reads the upstream
file, asks Nginx which slot answers, and compares all of that with the store.
"""

from __future__ import annotations

from typing import Any

from zdagent.deploy import Engine, Phase
from zdagent.errors import EnvironmentProblem
from zdagent.nginx import maintenance
from zdagent.notifications.outbox import outbox_depth
from zdagent.probe import http_client, probe_once, slot_url
from zdagent.slots import SLOTS, container_name, other


def collect(engine: Engine) -> dict[str, Any]:
    """A JSON-ready picture of the app: slots, routing, last deploy, drift."""
    cfg = engine.cfg
    state = engine.store.state(cfg.name)
    slots: dict[str, dict[str, Any]] = {}
    with http_client("zdagent-status") as client:
        for slot in SLOTS:
            info = engine.slots.info(slot)
            row = info.to_dict()
            row["container"] = container_name(cfg.name, slot)  # or the service, same name
            if info.running:  # swarm task-ports: each task on its own port
                results = [probe_once(client, slot_url(port, cfg.health.path), cfg.health,
                                      info.version) for port in info.task_ports or (info.port,)]
                bad = next((r for r in results if not r.ok), None)
                row["health"] = "healthy" if bad is None else f"unhealthy ({bad.detail})"
            else:
                row["health"] = "-"
            slots[slot] = row
    in_file = engine.nginx.live_slot_in_file()
    try:
        engine.nginx.master()
        nginx_running = True
        served = engine.nginx.live_slot_served()
    except EnvironmentProblem:
        nginx_running, served = False, None
    history = engine.store.history(cfg.name, limit=1)
    last = history[0].to_dict() if history else None
    drift = _drift(state.live_slot, state.phase, in_file, served, nginx_running, slots)
    return {
        "app": cfg.name,
        "live_slot": in_file,
        "routing": {
            "upstream_file": str(cfg.nginx.upstream_file),
            "file_routes_to": in_file,
            "nginx_running": nginx_running,
            "served_by": served,
            "confirmed": bool(in_file) and in_file == served,
        },
        "slots": slots,
        "standby": standby_of(in_file, slots),
        "store": {"live_slot": state.live_slot, "phase": state.phase,
                  "deploy_id": state.deploy_id},
        "last_deploy": last,
        "notifications": {"channels": len(cfg.notify),
                          "pending": outbox_depth(engine.store, cfg.name)},
        "canary": _canary(engine),
        "maintenance": maintenance.read_state(cfg),
        "drift": drift,
        "ok": not drift and bool(in_file) and slots.get(in_file or "", {}).get("health")
        == "healthy",
    }


def _canary(engine: Engine) -> dict[str, Any] | None:
    """The running canary: its step and shares (from the store), and the split Nginx's
    files hold now; None when no canary runs."""
    state = engine.store.canary(engine.cfg.name)
    split = engine.nginx.routed_split()
    if state is None and split is None:
        return None
    out: dict[str, Any] = state.to_dict() if state else {"note": "a split without a canary "
                                                                 "record: recovery ends it"}
    out["routed"] = split.to_dict() if split else None
    if split:
        out["shares"] = {split.stable: 100 - split.percent, split.candidate: split.percent}
    return out


def _drift(stored: str | None, phase: str, in_file: str | None, served: str | None,
           nginx_running: bool, slots: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences for every disagreement between record and reality."""
    out: list[str] = []
    if phase != Phase.IDLE:
        out.append(f"a deploy was interrupted in phase '{phase}' (or is running now); the next "
                   "deploy or rollback repairs it")
    if stored and in_file and stored != in_file:
        out.append(f"the store says {stored} is live but the upstream file routes to {in_file} "
                   "(edited by hand?)")
    if stored and not in_file:
        out.append(f"the store says {stored} is live but the upstream file names no slot")
    if not nginx_running:
        out.append("nginx is not running")
    elif in_file and served != in_file:
        out.append(f"the upstream file routes to {in_file} but Nginx answers from "
                   f"{served or 'no slot'} (not reloaded, or the site does not use it?)")
    for name, row in slots.items():
        if name == in_file and row["state"] == "missing":
            out.append(f"the live slot's container {row['container']} is missing "
                       "(removed by hand?)")
        elif name == in_file and row["state"] != "running":
            out.append(f"the live slot's container {row['container']} is {row['state']}")
        elif name == in_file and row["health"] != "healthy":
            out.append(f"the live slot {name} is {row['health']}")
        if name == in_file and (row.get("tasks_running") or 0) < (row.get("tasks_desired") or 0):
            out.append(f"the live service {row['container']} has {row['tasks']} "
                       "(Swarm is replacing tasks, or a node is lost)")
    return out


def standby_of(live: str | None, slots: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The other slot, and in words whether it can take over (a dead slot is no standby)."""
    if live is None:
        return None
    name = other(live)
    row = slots[name]
    if row["state"] == "running":
        note = f"{name} is the warm standby ({row['health']})"
    elif row["state"] == "missing":
        note = f"no standby: {name} has no container (`zdagent rollback --to VERSION`)"
    else:
        note = (f"no warm standby: {name} is {row['state']} "
                "(`zdagent rollback` starts it again)")
    return {"slot": name, "state": row["state"], "warm": row["state"] == "running",
            "note": note}
