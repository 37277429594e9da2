"""The deploy / rollback state machine.

It reads like the runbook: lock the app, reconcile any crashed run, get the image, start the
candidate in the inactive slot, probe it, switch Nginx (verified), drain the old slot and keep
it as a warm standby. Every phase is written to the store before it starts, so a crash leaves a
phase to look up, and ``reconcile`` knows what to repair. The engine emits events; it never
prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from zdagent import canary, gitsource, hooks, retention
from zdagent.config import AppConfig, BuildSource, GitSource, check_version
from zdagent.errors import DeployFailed, HookFailed, LockBusy, ZdError
from zdagent.events import Emit, Event
from zdagent.lock import app_lock
from zdagent.nginx import Nginx, maintenance
from zdagent.notifications.outbox import queue as queue_notice
from zdagent.probe import http_client, probe_once, slot_url, wait_healthy
from zdagent.recovery import BEFORE_SWITCH, RecoveryPlan, reconcile, recovery_plan
from zdagent.services import slot_backend
from zdagent.slots import connect, other
from zdagent.store import FRESH, STANDBY, Phase, PhaseRecord, Store, current_user

# Re-exported: callers import the phases and the recovery plan from here too.
__all__ = ["BEFORE_SWITCH", "Engine", "Phase", "RecoveryPlan", "Result", "recovery_plan"]


@dataclass
class Result:
    """What a finished deploy or rollback did."""

    deploy_id: int
    kind: str
    version: str | None
    slot: str
    from_slot: str | None
    image: str | None
    seconds: float
    phases: list[PhaseRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a post_ hook that failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Run:
    """Times and records the phases of one deploy record."""

    def __init__(self, engine: Engine, deploy_id: int, live: str | None, target: str,
                 *, previous_version: str | None, fresh: bool = True, kind: str = "deploy",
                 version: str | None = None, reason: str | None = None) -> None:
        self.engine = engine
        engine._deploy_id = deploy_id  # a failure's notification names the record
        self.fresh = fresh
        self.kind = kind
        self.notes: list[str] = []
        # What host hooks are told (the live slot's version was read before the record began:
        # nothing between ``store.begin`` and ``_recorded`` may fail, or the row stays running).
        self.hook_ctx = hooks.HookContext(
            app=engine.cfg.name, version=version, previous_version=previous_version,
            slot=target, deploy_id=deploy_id, performer=engine.performer or current_user(),
            reason=reason)
        self.deploy_id = deploy_id
        self.live = live
        self.target = target
        self.phases: list[PhaseRecord] = []
        self.started = time.monotonic()

    @contextmanager
    def phase(self, phase: Phase, message: str, *, live: str | None = None) -> Iterator[None]:
        eng = self.engine
        eng.store.set_state(eng.cfg.name, phase=phase, live_slot=live or self.live,
                            deploy_id=self.deploy_id, candidate_slot=self.target,
                            candidate_kind=FRESH if self.fresh else STANDBY)
        rec = PhaseRecord(name=phase.value, started_at=time.time())
        self.phases.append(rec)
        eng.emit(Event("phase-start", message, phase=phase.value))
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            rec.duration, rec.ok = time.monotonic() - t0, False
            eng.store.set_phases(self.deploy_id, self.phases)
            raise
        rec.duration, rec.ok = time.monotonic() - t0, True
        eng.store.set_phases(self.deploy_id, self.phases)
        eng.emit(Event("phase-end", f"{phase.value} done in {rec.duration:.2f}s",
                       phase=phase.value, data={"seconds": round(rec.duration, 3)}))


class Engine:
    """Deploy, roll back and reconcile one app."""

    def __init__(self, cfg: AppConfig, emit: Emit, *, docker_client: Any = None,
                 performer: str | None = None) -> None:
        """``docker_client``: a long-lived client to reuse (the daemon's; never closed here).
        ``performer``: who asked, recorded in history (default: the current user)."""
        self.cfg = cfg
        self.emit = emit
        self.performer = performer
        self._owns_client = docker_client is None
        self.store = Store(cfg.state_dir)
        self.slots = slot_backend(cfg, docker_client if docker_client is not None
                                  else connect(), emit)
        self.nginx = Nginx(cfg, emit, self.slots.ports)
        self._deploy_id: int | None = None  # the record of the running operation

    def close(self) -> None:
        self.store.close()
        self.nginx.close()
        if self._owns_client:
            self.slots.client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public operations --------------------------------------------------------------

    def deploy(self, version: str, *, wait: bool = True) -> Result:
        """Build or pull ``version`` (for a git source: a ref) and make it live."""
        if isinstance(self.cfg.source, GitSource):
            gitsource.check_ref(version)
        else:
            check_version(version)
        return self._notifying("deploy", version, lambda: self._deploy(version, wait))

    def _deploy(self, version: str, wait: bool) -> Result:
        src = self.cfg.source
        self.nginx.preflight()
        with app_lock(self.cfg.state_dir, self.cfg.name, f"deploy {version}", self.emit,
                      wait=wait):
            self.reconcile()
            if not isinstance(src, GitSource):
                result = self._deploy_locked("deploy", version, image=None)
            else:
                if src.fetch:
                    gitsource.fetch(src.repo)
                commit = gitsource.resolve(src.repo, version)  # fails before anything starts
                self.emit(Event("info", f"git ref {version} is commit {commit}"))
                result = self._deploy_locked("deploy", commit[:gitsource.SHORT], image=None,
                                             commit=commit, ref=version)
            retention.after_deploy(self)  # never fails the deploy
            return result

    def canary(self, version: str, control: canary.Control,
               figures: canary.FigureSource | None, *, wait: bool = True) -> Result:
        """Deploy ``version`` step by step (``[canary] steps``), judged per step; promote
        at the end, or put all traffic back on stable and raise CanaryAborted."""
        check_version(version)
        if isinstance(self.cfg.source, GitSource):
            raise DeployFailed("a canary of a git source is not supported yet",
                               hint="deploy the ref without --canary")
        return self._notifying("canary", version,
                               lambda: self._canary(version, control, figures, wait))

    def _canary(self, version: str, control: canary.Control,
                figures: canary.FigureSource | None, wait: bool) -> Result:
        self.nginx.preflight()
        with app_lock(self.cfg.state_dir, self.cfg.name, f"canary {version}", self.emit,
                      wait=wait):
            self.reconcile()
            live = self.live_slot()
            if live is None or not self.slots.info(live).running:
                raise DeployFailed("a canary needs a running live version to compare with",
                                   hint="deploy the first version without --canary")
            result = self._deploy_locked("canary", version, image=None,
                                         steps=(control, figures))
            retention.after_deploy(self)
            return result

    def maintenance(self, on: bool, message: str = maintenance.DEFAULT_MESSAGE,
                    retry_after: int = maintenance.DEFAULT_RETRY_AFTER) -> dict[str, Any] | None:
        """Nginx answers 503 with a page (on) or the app again (off), verified; the slots,
        their probes and deploys go on meanwhile. Returns the state now (None: off)."""
        self.nginx.preflight(switch=False)
        who = self.performer or current_user()
        if on:
            state = maintenance.turn_on(self.nginx, message, retry_after, who)
            self.emit(Event("info", f"maintenance is on (Retry-After {retry_after}s)"))
            return state
        maintenance.turn_off(self.nginx)
        self.emit(Event("info", "maintenance is off"))
        return None

    def rollback(self, *, to: str | None = None, wait: bool = True) -> Result:
        """Switch back to the standby, or redeploy ``to`` from history."""
        if to is not None:
            check_version(to)
        return self._notifying("rollback", to, lambda: self._rollback(to, wait))

    def _rollback(self, to: str | None, wait: bool) -> Result:
        self.nginx.preflight()
        what = f"rollback to {to}" if to else "rollback"
        with app_lock(self.cfg.state_dir, self.cfg.name, what, self.emit, wait=wait):
            self.reconcile()
            if to is not None:
                rec = self.store.last_success_of(self.cfg.name, to)
                if rec is None or not rec.image_id or not self.slots.has_image(rec.image_id):
                    pruned = retention.pruned_hint(self.cfg, to)
                    raise DeployFailed(
                        f"no deployable image of version {to!r} in history"
                        + (f": {pruned}" if pruned else ""),
                        hint=f"deploy it again (`zdagent deploy {to}`) to rebuild or pull it"
                        if pruned else
                        "`zdagent history` lists versions; deploy it again to rebuild",
                    )
                return self._deploy_locked("rollback", to, image=(rec.image, rec.image_id))
            return self._rollback_to_standby()

    def auto_revert(self, reason: str, *, expected_live: str) -> Result:
        """The watchdog's switch to a healthy standby: same verified path, never blocking.

        The watchdog decided on what it saw before the lock was taken, so the decision is
        re-checked under the lock: refuses (DeployFailed) unless ``expected_live`` is still
        live and the standby is running and healthy, and (LockBusy) when a deploy holds the
        lock. A refusal is not notified here: the watchdog's ``revert-failed`` state is (as
        ``degraded``).
        """
        def revert() -> Result:
            self.nginx.preflight()
            with app_lock(self.cfg.state_dir, self.cfg.name, "auto-revert", self.emit,
                          wait=False):
                self.reconcile()
                self._expect_live(expected_live)
                return self._rollback_to_standby(kind="auto-revert", reason=reason,
                                                  require_running=True)

        return self._notifying("auto-revert", None, revert, reason=reason)

    def recover(self) -> list[str]:
        """Reconcile under the app's lock, waiting for it (the daemon does this at start)."""
        with app_lock(self.cfg.state_dir, self.cfg.name, "recover", self.emit):
            return self.reconcile()

    def restart_live(self, reason: str, *, expected_live: str) -> None:
        """Degraded (no healthy slot left): restart the live container, and record it.

        Refuses (DeployFailed) when the live slot is no longer ``expected_live``, or when
        Nginx is not running (a dead edge is not the app's fault).
        """
        self.nginx.preflight(switch=False)  # no switch: the files' njs names do not matter
        with app_lock(self.cfg.state_dir, self.cfg.name, "restart", self.emit, wait=False):
            live = self._expect_live(expected_live)
            info = self.slots.info(live)
            did = self.store.begin(self.cfg.name, "restart", info.version, live, live,
                                   user=self.performer)
            self.store.update(did, reason=reason, image=info.image, image_id=info.image_id)
            try:
                self.slots.restart(live)
            except ZdError as e:
                self.store.finish(did, "failed", e.message)
                raise
            self.store.finish(did, "succeeded")

    def reroute(self, reason: str, *, expected_live: str) -> bool:
        """Swarm task-ports: render the running tasks' ports into the upstream (Swarm
        replaced a task, or one died), ``nginx -t``, reload, verified through Nginx like a
        switch (restored on failure). False when the file already lists them."""
        self.nginx.preflight()
        with app_lock(self.cfg.state_dir, self.cfg.name, "reroute", self.emit, wait=False):
            live = self._expect_live(expected_live)
            standby = other(live)
            keep = (self.cfg.slots.after_switch == "standby" and self.cfg.nginx.standby_as_backup
                    and self.slots.info(standby).state == "running")
            backup = standby if keep else None
            if self.nginx.render_upstream(live, backup) == self.nginx.current_text():
                return False
            self.nginx.switch(live, backup)
            self.emit(Event("info", f"{reason}: Nginx now routes to {live} on "
                                    f"{', '.join(sorted(self.nginx.addresses(live)))}"))
            return True

    def _expect_live(self, expected: str) -> str:
        live = self.live_slot()
        if live != expected:
            raise DeployFailed(f"the live slot is now {live or 'none'}, not {expected}: "
                               "the watchdog's decision is out of date",
                               hint="nothing was changed; the watchdog looks again")
        return live

    def live_slot(self) -> str | None:
        """The slot Nginx routes to by the upstream file; the store only if there is none."""
        from_file = self.nginx.live_slot_in_file()
        stored = self.store.state(self.cfg.name).live_slot
        if from_file and stored and from_file != stored:
            self.emit(Event("warn", f"the upstream file routes to {from_file} but the store "
                                    f"says {stored}: trusting the upstream file"))
        return from_file or stored

    # --- notifications --------------------------------------------------------------------

    def notify(self, event: str, **fields: Any) -> None:
        """Queue ``event`` in the store's outbox for the channels that want it. Never raises
        and never sends: the daemon (or the CLI after the operation) delivers."""
        if not self.cfg.notify:
            return
        try:
            notice = queue_notice(self.store, self.cfg, event, fields)
        except Exception as e:  # a notification must never fail or stop an operation
            self.emit(Event("warn", f"could not queue the {event} notification: "
                                    f"{type(e).__name__}: {e}"))
            return
        if notice is not None:
            self.emit(Event("info", f"notification queued: {event}",
                            data={"notification": notice.id}))

    def _notifying(self, kind: str, version: str | None, op: Callable[[], Result],
                   **extra: Any) -> Result:
        """Run ``op``; notify its success (``<kind>-succeeded``, ``auto-revert``) or failure
        (``<kind>-failed``). An auto-revert's refusal and a busy lock are not notified."""
        self._deploy_id = None
        try:
            result = op()
        except BaseException as e:
            if kind != "auto-revert" and not isinstance(e, LockBusy):
                msg = e.message if isinstance(e, ZdError) else (
                    "interrupted" if isinstance(e, KeyboardInterrupt) else
                    f"{type(e).__name__}: {e}")
                self.notify(f"{kind}-failed", version=version, deploy_id=self._deploy_id,
                            error=msg, **extra)
            raise
        self.notify(kind if kind == "auto-revert" else f"{kind}-succeeded",
                    deploy_id=result.deploy_id, version=result.version, slot=result.slot,
                    from_slot=result.from_slot, seconds=round(result.seconds, 2),
                    notes=result.notes or None, **extra)
        return result

    # --- the flows ----------------------------------------------------------------------

    def _deploy_locked(self, kind: str, version: str, image: tuple[str | None, str] | None,
                       commit: str | None = None, ref: str | None = None,
                       steps: tuple[canary.Control, canary.FigureSource | None] | None = None
                       ) -> Result:
        live = self.live_slot()
        target = other(live) if live else "blue"
        previous = self.slots.info(live).version if live else None
        did = self.store.begin(self.cfg.name, kind, version, target, live,
                               user=self.performer)
        if commit:
            self.store.update(did, source_ref=f"{ref}@{commit}")
        run = _Run(self, did, live, target, previous_version=previous, kind=kind,
                   version=version)
        self.emit(Event("info", f"{kind} #{did}: {version} -> {target} slot "
                                f"(live: {live or 'none'})", data={"deploy_id": did}))
        deploying = kind in ("deploy", "canary")  # a rollback: a version that served
        if deploying:
            self.notify("deploy-started", deploy_id=did, version=version, slot=target,
                        from_slot=live, ref=ref)
        with self._recorded(run):
            if deploying:
                self._pre_hook(run, "pre_deploy")
            with run.phase(Phase.SOURCE, "getting the image"):
                ref, image_id = image if image else self._source(version, commit)
            self.store.update(did, image=ref, image_id=image_id)
            if deploying and self.cfg.hooks.release:
                with run.phase(Phase.RELEASE, f"running the release command in {version}"):
                    hooks.run_release(self.slots, image_id, version, did, self.cfg.hooks,
                                      self.emit)
            self._activate(run, image_id, version, fresh=True, steps=steps)
        self._post_hook(run, "post_deploy" if deploying else "post_rollback")
        return self._result(run, kind, version, ref)

    def _rollback_to_standby(self, kind: str = "rollback", reason: str | None = None,
                             require_running: bool = False) -> Result:
        live = self.live_slot()
        if live is None:
            raise DeployFailed("nothing is deployed yet, so there is no standby",
                               hint="deploy a version first")
        standby = other(live)
        info = self.slots.info(standby)
        if info.state == "missing":
            raise DeployFailed(
                f"the standby slot {standby} has no container",
                hint="use `zdagent rollback --to VERSION` to redeploy a version from history",
            )
        if require_running and not info.running:
            raise DeployFailed(f"the standby slot {standby} is {info.state}")
        previous = self.slots.info(live).version
        did = self.store.begin(self.cfg.name, kind, info.version, standby, live,
                               user=self.performer)
        self.store.update(did, image=info.image, image_id=info.image_id, reason=reason)
        run = _Run(self, did, live, standby, previous_version=previous, fresh=False, kind=kind,
                   version=info.version, reason=reason)
        self.emit(Event("info", f"{kind} #{did}: {live} -> {standby} "
                                f"(version {info.version or '?'}, {info.state})"
                                + (f": {reason}" if reason else "")))
        with self._recorded(run):
            if info.running:
                with run.phase(Phase.PROBE, f"checking the running standby {standby}"):
                    self._probe_running(standby, info.version)
                self._switch(run)
            else:
                self._activate(run, None, info.version, fresh=False)
        self._post_hook(run, "post_revert" if kind == "auto-revert" else "post_rollback")
        return self._result(run, kind, info.version, info.image)

    @contextmanager
    def _recorded(self, run: _Run) -> Iterator[None]:
        """Record the outcome; on failure leave the app idle on the (restored) live slot."""
        try:
            yield
        except BaseException as e:
            msg = e.message if isinstance(e, ZdError) else f"{type(e).__name__}: {e}"
            self.store.finish(run.deploy_id, "failed", msg)
            self.store.set_state(self.cfg.name, phase=Phase.IDLE, live_slot=self.live_slot())
            raise
        self.store.finish(run.deploy_id, "succeeded")
        self.store.set_state(self.cfg.name, phase=Phase.IDLE, live_slot=run.target)

    def _source(self, version: str, commit: str | None) -> tuple[str, str]:
        def line(text: str) -> None:
            self.emit(Event("log", text, phase=Phase.SOURCE.value))

        src = self.cfg.source
        if isinstance(src, BuildSource):
            return self.slots.build(version, src.context, line)
        if isinstance(src, GitSource):
            assert commit is not None
            dest = self.cfg.state_dir / "builds" / self.cfg.name / commit
            gitsource.export(src.repo, commit, dest)  # old ones: zdagent.retention
            line(f"exported {commit[:gitsource.SHORT]} from {src.repo} into {dest}")
            return self.slots.build(version, dest / src.subdir if src.subdir else dest, line)
        ref = self.slots.image_ref(version)
        return ref, self.slots.pull(ref, line)

    def _activate(self, run: _Run, image_id: str | None, version: str | None,
                  *, fresh: bool,
                  steps: tuple[canary.Control, canary.FigureSource | None] | None = None
                  ) -> None:
        """Start the target slot, wait until healthy, (a canary: walk its steps,) switch;
        undo the candidate on failure."""
        target = run.target
        try:
            with run.phase(Phase.START, f"starting {self.cfg.name}-{target} "
                                        f"on 127.0.0.1:{self.cfg.slot_port(target)}"):
                if fresh:
                    assert image_id is not None and version is not None
                    if run.live and self.nginx.drop_backup(run.live):
                        self.emit(Event("info", f"{run.live} serves without a backup until "
                                                "the switch (the standby is being replaced)"))
                    self.slots.run(target, image_id, version, run.deploy_id)
                else:
                    self.slots.start(target)
            with run.phase(Phase.PROBE, f"waiting for {target} to become healthy"):
                for port in self.slots.ports(target):  # swarm task-ports: every task's own
                    wait_healthy(
                        slot_url(port, self.cfg.health.path),
                        self.cfg.health, version, self.emit,
                        exit_reason=lambda: self.slots.exit_reason(target),
                        logs=lambda: self.slots.logs_tail(target),
                    )
                if fresh:
                    self.slots.keep_running(target)
            if run.kind in ("deploy", "canary") and self.cfg.smoke:
                with run.phase(Phase.SMOKE, f"smoke checks on {target}"):
                    for port in self.slots.ports(target):
                        hooks.run_smoke(self.cfg.smoke, port, self.emit)
            if steps is not None:
                canary.run_steps(self, run, version or "", *steps)
            self._switch(run)
        except BaseException:
            if self.nginx.routed_split() is not None:  # the way back failed: it still serves
                self.emit(Event("warn", f"the candidate {target} still gets a share of the "
                                        "traffic: not removed"))
            elif self.live_slot() != target:  # a canary's stays, stopped, for its logs
                self._discard_candidate(target, fresh and run.kind != "canary", run.deploy_id)
            raise

    def _discard_candidate(self, slot: str, fresh: bool, deploy_id: int) -> None:
        """Remove a fresh candidate this run created; a slot still labelled with another
        run (refused before it changed: a missing secret, a bad spec) holds the standby."""
        try:
            if fresh and self.slots.info(slot).deploy_id not in (deploy_id, None):
                self.emit(Event("info", f"kept the standby in the {slot} slot: the "
                                        "candidate never replaced it"))
                if self.live_slot() is not None:
                    self.nginx.restore_backup(other(slot))
                return
            if fresh:
                self.slots.remove(slot)
            else:
                self.slots.stop(slot)
            self.emit(Event("info", f"stopped the candidate in the {slot} slot"))
        except Exception as e:  # the deploy error matters more than a cleanup hiccup
            self.emit(Event("warn", f"could not stop the candidate {slot}: {e}"))

    def _switch(self, run: _Run) -> None:
        new, old = run.target, run.live
        keep = old if self.cfg.slots.after_switch == "standby" else None
        old_state = self.slots.info(old).state if old else None
        if old and old_state != "running":
            # A dead slot is no standby: never list it as Nginx's backup, and say so.
            self.emit(Event("warn", f"the old live slot {old} is {old_state}: it is not kept "
                                    "as the warm standby nor as Nginx's backup"))
            self._note_dead_old(run, old, old_state or "missing")
            keep = None
        backup = keep if self.cfg.nginx.standby_as_backup else None
        with run.phase(Phase.SWITCH, f"switching Nginx to {new}"):
            result = self.nginx.switch(new, backup)
        if run.kind == "deploy":
            self._post_hook(run, "post_switch")
        with run.phase(Phase.DRAIN, "draining the old slot", live=new):
            drain = self.cfg.slots.drain_seconds
            left = self.nginx.wait_workers_gone(result.old_workers, drain)
            if left:
                self.emit(Event("warn", f"{len(left)} old Nginx worker(s) still busy after "
                                        f"{drain:g}s drain"))
            if old_state != "running":
                return
            if keep is None:  # njs: no worker exits, so wait for its connections
                still = self.nginx.wait_old_connections(self.slots.ports(old), drain)
                if still:
                    self.emit(Event("warn", f"{still} connection(s) to {old} still open after "
                                            f"{drain:g}s drain"))
            if keep is None:
                self.slots.stop(old)
                self.emit(Event("info", f"stopped the old slot {old}"))
            else:
                self.emit(Event("info", f"{old} stays up as the warm standby"))

    def _pre_hook(self, run: _Run, hook: str) -> None:
        """A pre_ hook, if set: its failure aborts (nothing has changed yet)."""
        argv = getattr(self.cfg.hooks, hook)
        if argv:
            with run.phase(Phase.PRE_DEPLOY, f"running the {hook} hook"):
                hooks.run_host_hook(hook, argv, run.hook_ctx, self.cfg.hooks.timeout,
                                    self.emit)

    def _post_hook(self, run: _Run, hook: str) -> None:
        """A post_ hook, if set: its failure is recorded, warned and notified, never more:
        it must not undo a good switch nor turn the outcome into a failure."""
        argv = getattr(self.cfg.hooks, hook)
        if not argv:
            return
        try:
            hooks.run_host_hook(hook, argv, run.hook_ctx, self.cfg.hooks.timeout, self.emit)
        except HookFailed as e:
            note = e.message
        except Exception as e:  # anything else in a post hook is just as harmless
            note = f"{hook} hook: {type(e).__name__}: {e}"
        else:
            return
        run.notes.append(note)
        self.store.add_note(run.deploy_id, note)
        stands = "the switch stands" if hook == "post_switch" else \
            f"the {run.kind} itself succeeded"
        self.emit(Event("warn", f"{note} ({stands})"))
        self.notify("hook-failed", hook=hook, error=note, app=self.cfg.name,
                    deploy_id=run.deploy_id)

    def _note_dead_old(self, run: _Run, slot: str, state: str) -> None:
        """History says it too: the revert left no warm standby behind."""
        rec = self.store.get(run.deploy_id)
        note = f"{slot} was {state}: not kept as the standby"
        self.store.update(run.deploy_id,
                          reason=f"{rec.reason}; {note}" if rec and rec.reason else note)

    def _probe_running(self, slot: str, version: str | None) -> None:
        with http_client("zdagent-probe") as client:
            for port in self.slots.ports(slot):  # swarm task-ports: each task
                result = probe_once(client, slot_url(port, self.cfg.health.path),
                                    self.cfg.health, version)
                if not result.ok:
                    raise DeployFailed(f"the standby {slot} is not healthy: {result.detail}",
                                       hint="nothing was switched; try `zdagent rollback "
                                            "--to VERSION`")

    def _result(self, run: _Run, kind: str, version: str | None, image: str | None) -> Result:
        secs = time.monotonic() - run.started
        return Result(run.deploy_id, kind, version, run.target, run.live, image, secs,
                      run.phases, run.notes)

    # --- crash recovery -----------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Repair a run that died mid-way (we hold the lock, so nobody else is running)."""
        return reconcile(self.cfg, self.store, self.slots, self.nginx, self.emit,
                         self._healthy)

    def _healthy(self, slot: str) -> bool:
        try:
            self._probe_running(slot, None)
            return True
        except DeployFailed:
            return False
