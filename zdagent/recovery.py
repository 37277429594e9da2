"""Crash recovery: finish or undo a deploy or rollback that died mid-way.

Every phase is written to the store before it starts, with the slot being started and what
it is: a fresh candidate, or the standby a rollback restarts. The plan is pure (unit-tested);
``reconcile`` applies it with the caller holding the app's lock. A fresh candidate that never
went live is removed; a restarted standby never is: it is the previous version, kept warm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from zdagent.config import AppConfig
from zdagent.events import Emit, Event
from zdagent.hooks import remove_release_containers
from zdagent.nginx import Nginx
from zdagent.slots import Slots, other
from zdagent.store import FRESH, STANDBY, Phase, Store

# Phases in which the live slot was never touched: recovery keeps it.
BEFORE_SWITCH = frozenset({Phase.PRE_DEPLOY, Phase.SOURCE, Phase.RELEASE, Phase.START,
                           Phase.PROBE, Phase.SMOKE})


@dataclass(frozen=True)
class RecoveryPlan:
    """What reconcile does: which slot ends up live, which candidate (if any) goes."""

    live: str | None
    remove: str | None


def recovery_plan(phase: Phase, candidate: str | None, stored_live: str | None,
                  in_file: str | None, in_file_healthy: bool,
                  candidate_kind: str | None = FRESH,
                  candidate_created: bool = True) -> RecoveryPlan:
    """Decide how to finish or undo a run that died in ``phase`` (pure: unit-tested).

    Before the switch the live slot was never touched: keep it, drop a fresh candidate.
    During the switch the file may name either slot: keep what it names if that slot is
    healthy, otherwise go back to the recorded live slot. In the drain the switch was
    verified: the candidate is live. A candidate that is the standby restarted by a rollback
    is never removed (``candidate_kind`` STANDBY): it stays as the standby. Nor is whatever
    the slot holds when this run had not created its container yet (``candidate_created``
    False: a crash in the source phase or early in start): that is still the old standby.
    """
    if phase in BEFORE_SWITCH:
        live = in_file or stored_live
    elif phase == Phase.CANARY:  # a split without its owner: all back on the stable slot
        live = stored_live or in_file
    elif phase == Phase.DRAIN:
        live = candidate
    elif in_file and in_file_healthy:
        live = in_file
    else:
        live = stored_live
    keep_candidate = phase == Phase.DRAIN or candidate_kind == STANDBY or not candidate_created
    remove = candidate if candidate and candidate != live and not keep_candidate else None
    return RecoveryPlan(live=live, remove=remove)


def reconcile(cfg: AppConfig, store: Store, slots: Slots, nginx: Nginx, emit: Emit,
              healthy: Callable[[str], bool]) -> list[str]:
    """Repair a run that died mid-way (the caller holds the lock: nobody else is running)."""
    st = store.state(cfg.name)
    split = nginx.routed_split()
    if st.phase == Phase.IDLE and split is None:
        store.clear_canary(cfg.name)
        return []
    if st.phase == Phase.IDLE:  # split by hand, or the store was lost: stable takes all
        st = replace(st, phase=Phase.CANARY, live_slot=split.stable,
                     candidate_slot=split.candidate, candidate_kind=STANDBY, deploy_id=None)
    in_file = nginx.live_slot_in_file()
    kind = st.candidate_kind or _kind_from_history(store, st.deploy_id)
    created = st.candidate_slot is not None and st.deploy_id is not None and \
        slots.info(st.candidate_slot).deploy_id == st.deploy_id
    plan = recovery_plan(Phase(st.phase), st.candidate_slot, st.live_slot, in_file,
                         in_file is not None and healthy(in_file), kind, created)
    what = "canary" if st.phase == Phase.CANARY else "rollback" if kind == STANDBY else "deploy"
    notes = [f"{what} #{st.deploy_id} was interrupted in phase '{st.phase}'"]
    if plan.live and (split is not None or in_file != plan.live
                      or nginx.live_slot_served() != plan.live):
        standby = other(plan.live)
        keep = standby if slots.info(standby).running else None
        nginx.switch(plan.live, keep if cfg.nginx.standby_as_backup else None)
        notes.append(f"re-pointed Nginx at {plan.live}")
    if plan.remove:
        slots.remove(plan.remove)
        notes.append(f"removed the orphan candidate in {plan.remove}")
    if st.phase == Phase.RELEASE and remove_release_containers(slots):
        notes.append("removed the interrupted release command's container")
    elif st.candidate_slot and st.candidate_slot != plan.live and (kind == STANDBY or
                                                                    not created):
        notes.append(f"kept the standby {st.candidate_slot}")
    if plan.live and cfg.nginx.standby_as_backup and slots.info(other(plan.live)).running:
        nginx.restore_backup(plan.live)  # killed after the backup was dropped: it is intact
    store.clear_canary(cfg.name)
    if st.deploy_id is not None:
        store.finish(st.deploy_id, "interrupted", "; ".join(notes))
    store.set_state(cfg.name, phase=Phase.IDLE, live_slot=plan.live)
    for note in notes:
        emit(Event("warn", f"recovered: {note}"))
    return notes


def _kind_from_history(store: Store, deploy_id: int | None) -> str:
    """Rows from before candidate_kind: a rollback's candidate may be the standby, and
    keeping a container is safer than deleting the previous version."""
    rec = store.get(deploy_id) if deploy_id is not None else None
    return STANDBY if rec is not None and rec.kind in ("rollback", "auto-revert") else FRESH
