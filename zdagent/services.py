"""Blue/green slots as Docker Swarm services (``app.backend = "swarm"``).

``ServiceSlots`` has the interface of ``zdagent.slots.Slots``, so the engine, recovery,
status and the watchdog do not know which backend they drive: ``slot_backend`` picks one
from the config, once. A slot is the service ``<app>-<slot>`` with ``swarm.replicas`` tasks,
labelled like a slot container and published on the slot's port, so Nginx's upstream is
still ``127.0.0.1:<slot port>``. With ``publish_mode = "task-ports"`` each task publishes in
host mode on a port Docker picks, the tasks run on this node (Nginx reaches them on
127.0.0.1), and ``ports`` lists the running tasks' ports: Nginx gets one server per task.

A deploy updates the standby service (start-first through the routing mesh; stop-first in
host mode, where the old task holds the port; it is the standby, so nothing is served by it)
and waits until every task of the new spec runs (Swarm keeps a task "starting" until the
service healthcheck passes), failing fast on the first task that fails. The image is pinned
by its registry digest: every node pulls exactly what was resolved here.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.services import Service
from docker.types import (
    EndpointSpec,
    Healthcheck,
    Resources,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    UpdateConfig,
)

from zdagent.config import AppConfig, read_env_file
from zdagent.errors import DeployFailed, EnvironmentProblem
from zdagent.events import Event
from zdagent.slots import (
    LABEL,
    LogLine,
    SlotInfo,
    Slots,
    _short,
    container_name,
    log_options,
    slot_labels,
)

NS = 1_000_000_000
POLL = 0.2
FAILED = ("failed", "rejected", "orphaned")
SWARM_TASK = "com.docker.swarm.task.id"  # the label of a task's container

IPVS_PROC = "/proc/net/ip_vs"  # exists while the kernel can do the routing mesh


def no_ipvs() -> bool:
    """The kernel has no IPVS: not loaded, and no ``ip_vs`` module to load (a module that
    exists is loaded by Docker when a service first needs it)."""
    return not Path(IPVS_PROC).exists() and not _ipvs_module()


@functools.cache
def _ipvs_module() -> bool:
    """Whether the running kernel has an ``ip_vs`` module (built in or loadable). Read once:
    the indexes are large and do not change under a running kernel."""
    modules = Path("/lib/modules") / os.uname().release
    for index in ("modules.builtin", "modules.dep"):
        try:
            if "/ip_vs.ko" in (modules / index).read_text():
                return True
        except OSError:
            continue
    return False


def slot_backend(cfg: AppConfig, client: docker.DockerClient,
                 emit: Callable[[Event], None] | None = None) -> Slots:
    """The slots of ``cfg``: containers, or services when ``app.backend = "swarm"``."""
    return ServiceSlots(cfg, client, emit) if cfg.backend == "swarm" else \
        Slots(cfg, client, emit)


def _ns(seconds: float) -> int:
    return int(seconds * NS)


def service_kwargs(cfg: AppConfig, slot: str, image: str, version: str, deploy_id: int,
                   env: Mapping[str, str], secrets: list[SecretReference],
                   node_id: str = "") -> dict[str, Any]:
    """The exact arguments for ``services.create`` / ``Service.update`` (pure: tested as
    data). Resource limits, user, mounts, network, command as a slot container has them.
    ``node_id``: this node, where task-ports tasks must run (Nginx reaches them locally)."""
    c, s, h = cfg.container, cfg.swarm, cfg.health
    host = s.publish_mode == "host"
    port: dict[str, Any] = {"Protocol": "tcp", "TargetPort": c.port,
                            "PublishMode": "host" if s.task_ports else s.publish_mode}
    if not s.task_ports:  # task-ports: no PublishedPort, Docker picks one per task
        port["PublishedPort"] = cfg.slot_port(slot)
    here = [f"node.id == {node_id}"] if s.task_ports and node_id else []
    kwargs: dict[str, Any] = {
        "image": image,
        "name": container_name(cfg.name, slot),
        "labels": {**c.labels, **slot_labels(cfg, slot, version, deploy_id)},
        # Tasks' containers carry the app and slot too: `doctor` and `logs` know them.
        "container_labels": {**c.labels, f"{LABEL}.app": cfg.name, f"{LABEL}.slot": slot,
                             f"{LABEL}.version": version},
        "env": [f"{k}={v}" for k, v in
                {**env, "ZDAGENT_VERSION": version, "ZDAGENT_SLOT": slot}.items()],
        "mode": ServiceMode("replicated", replicas=s.replicas),
        "endpoint_spec": EndpointSpec(ports=[port]),
        # Host mode: the old task holds the port, so it must go first (it is the standby);
        # task-ports: every task has a port of its own, so the new ones start first.
        "update_config": UpdateConfig(parallelism=0, order="stop-first" if host else
                                      "start-first", failure_action="pause", delay=0,
                                      monitor=_ns(1)),
        "restart_policy": RestartPolicy(condition="any", delay=_ns(s.restart_delay)),
        "constraints": [*s.constraints, *here],
        "maxreplicas": 1 if host else 0,
        "secrets": secrets,
        "stop_grace_period": _ns(c.stop_timeout),
    }
    if s.healthcheck:
        kwargs["healthcheck"] = Healthcheck(
            test=["CMD", *s.healthcheck], interval=_ns(h.interval), timeout=_ns(h.timeout),
            retries=cfg.watchdog.failures, start_period=_ns(h.startup_deadline))
    if c.memory or c.cpus:
        kwargs["resources"] = Resources(mem_limit=c.memory or None,
                                        cpu_limit=round(c.cpus * NS) if c.cpus else None)
    if c.network:
        kwargs["networks"] = [c.network]
    if c.volumes:
        kwargs["mounts"] = [v.bind for v in c.volumes]
    if c.user:
        kwargs["user"] = c.user
    if c.entrypoint:
        kwargs["command"] = list(c.entrypoint)
    if c.command:
        kwargs["args"] = list(c.command)
    if c.log_driver:
        kwargs["log_driver"] = c.log_driver
        kwargs["log_driver_options"] = dict(c.log_options)
    return kwargs


def _since(task: dict[str, Any]) -> float:
    """A task's last status change as epoch seconds (Docker's nanoseconds cut to micro)."""
    stamp = str(task.get("Status", {}).get("Timestamp") or "")
    if not stamp:
        return 0.0
    head, _, frac = stamp.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
    except ValueError:
        return 0.0


def by_digest(image: str) -> str:
    """Pure: ``registry:5000/app:v2@sha256:…`` as ``registry:5000/app@sha256:…``, the one
    name a pull by digest takes (an image that is no such ref is returned as it is)."""
    name, at, digest = image.partition("@")
    if not at:
        return image
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.split(':', 1)[0]}@{digest}"


def local_image_ids(refs: Iterable[str], images: Sequence[Mapping[str, Any]]
                    ) -> dict[str, str]:
    """Pure: digest-pinned refs -> the ids of this host's images pulled by them (their
    ``RepoDigests``); a ref this host never pulled is left out (its image is elsewhere)."""
    here = {d: str(i["Id"]) for i in images for d in i.get("RepoDigests") or []}
    return {r: here[by_digest(r)] for r in refs if by_digest(r) in here}


def spent_tasks(containers: Sequence[Mapping[str, Any]], app: str) -> dict[str, str]:
    """Pure: container id -> image id of ``app``'s task containers that stopped. Swarm never
    starts such a container again (a restart is a new task); it keeps them as the service's
    task history (5 per task by default), which would otherwise keep old images in use."""
    return {str(c["Id"]): str(c.get("ImageID", "")) for c in containers
            if (c.get("Labels") or {}).get(f"{LABEL}.app") == app
            and SWARM_TASK in (c.get("Labels") or {}) and c.get("State") in ("exited", "dead")}


def task_image(task: dict[str, Any]) -> str:
    return str(task.get("Spec", {}).get("ContainerSpec", {}).get("Image", ""))


def running_containers(tasks: list[dict[str, Any]]) -> list[str]:
    """Pure: the container ids of the tasks that run (healthy, with a healthcheck) and are
    meant to; a task still starting or already stopping is not served."""
    return [str(t["Status"]["ContainerStatus"]["ContainerID"]) for t in tasks
            if t.get("DesiredState") == "running" and t["Status"]["State"] == "running"
            and (t["Status"].get("ContainerStatus") or {}).get("ContainerID")]


def ipv4_host_port(container: dict[str, Any], target: int) -> int | None:
    """Pure: the IPv4 host port a container publishes ``target`` on (Nginx dials 127.0.0.1).

    Not the task's PortStatus: Docker 20.10 may give a dynamic port's IPv4 and IPv6 bindings
    different numbers, and the task lists both without saying which is which."""
    bindings = (container.get("NetworkSettings", {}).get("Ports") or {}).get(f"{target}/tcp")
    for b in bindings or []:
        if ":" not in (b.get("HostIp") or "") and str(b.get("HostPort", "")).isdigit():
            return int(b["HostPort"])
    return None


class ServiceSlots(Slots):
    """The Swarm side of one app: its two slot services. Images come from a registry."""

    def __init__(self, cfg: AppConfig, client: docker.DockerClient,
                 emit: Callable[[Event], None] | None = None) -> None:
        super().__init__(cfg, client, emit)
        self._started: dict[str, float] = {}  # slot -> when its current rollout began

    # --- images: resolved in the registry, pulled by the nodes ---------------------------

    def build(self, version: str, context: Path, on_line: LogLine) -> tuple[str, str]:
        raise DeployFailed("a swarm app cannot build locally: its nodes pull from a registry",
                           hint="set source.image (`zdagent config check` says so too)")

    def pull(self, ref: str, on_line: LogLine) -> str:
        """Resolve ``ref`` in its registry; return it pinned by digest (what nodes pull)."""
        try:
            digest = self.client.images.get_registry_data(ref).id
        except docker.errors.APIError as e:
            raise DeployFailed(f"{ref} cannot be resolved in its registry: {_short(e)}",
                               hint="push the image first; swarm nodes pull it from the "
                                    "registry (a local-only image is not enough)") from None
        on_line(f"{ref} is {digest}")
        return f"{ref}@{digest}"

    def has_image(self, image_id: str) -> bool:
        try:
            self.client.images.get_registry_data(image_id)
            return True
        except docker.errors.APIError:
            return False

    def local_ids(self, refs: Iterable[str],
                  images: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """History and the services name images by digest; this host has them under
        ``repo@sha256:…`` if it pulled them (other nodes keep their own)."""
        return local_image_ids(refs, images)

    def spent(self, containers: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        return spent_tasks(containers, self.cfg.name)

    # --- services ----------------------------------------------------------------------

    def service(self, slot: str) -> Service | None:
        """The slot's service, found by its labels (app + slot), never by name alone."""
        found = self._swarm_call("listing services", lambda: self.client.services.list(
            filters={"label": [f"{LABEL}.app={self.cfg.name}", f"{LABEL}.slot={slot}"]}))
        return found[0] if found else None

    def _swarm_call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except docker.errors.APIError as e:
            if "not a swarm manager" in str(e) or e.status_code == 503:
                raise EnvironmentProblem(
                    f"{self.cfg.name} has app.backend = \"swarm\" but this Docker engine is "
                    "not a swarm manager",
                    hint="run `docker swarm init` (or join this node as a manager); "
                         "see docs/scaling.md") from None
            raise DeployFailed(f"Docker refused {what}: {_short(e)}",
                               hint="check `docker service ps` and the Docker daemon "
                                    "log") from None

    def tasks(self, slot: str) -> list[dict[str, Any]]:
        svc = self.service(slot)
        if svc is None:
            return []
        try:
            return list(svc.tasks())
        except docker.errors.NotFound:
            return []

    def counts(self, slot: str) -> tuple[int, int] | None:
        """(running tasks, desired replicas) of the slot's service; None if it has none."""
        return self._counts(self.service(slot))

    @staticmethod
    def _counts(svc: Service | None) -> tuple[int, int] | None:
        if svc is None:
            return None
        desired = int(svc.attrs["Spec"].get("Mode", {}).get("Replicated", {})
                      .get("Replicas", 0))
        try:
            tasks = svc.tasks(filters={"desired-state": "running"})
        except docker.errors.NotFound:
            return None
        return sum(t["Status"]["State"] == "running" for t in tasks), desired

    def ports(self, slot: str) -> tuple[int, ...]:
        """task-ports: the slot's running tasks' host ports; when none runs, the slot port
        (nothing listens there: a probe fails, Nginx passes to the backup)."""
        if not self.cfg.swarm.task_ports:
            return super().ports(slot)
        return self.task_ports(slot) or super().ports(slot)

    def task_ports(self, slot: str) -> tuple[int, ...]:
        """The running tasks' IPv4 host ports, read from their containers (on this node)."""
        ports = set()
        for cid in running_containers(self.tasks(slot)):
            try:
                port = ipv4_host_port(self.client.api.inspect_container(cid),
                                      self.cfg.container.port)
            except docker.errors.NotFound:
                continue  # the task's container just went
            if port:
                ports.add(port)
        return tuple(sorted(ports))

    def info(self, slot: str) -> SlotInfo:
        port = self.cfg.slot_port(slot)
        svc = self.service(slot)
        counts = self._counts(svc)
        if svc is None or counts is None:
            return SlotInfo(slot=slot, port=port, state="missing")
        task_ports = self.task_ports(slot) if self.cfg.swarm.task_ports else ()
        running, desired = counts
        labels = svc.attrs["Spec"].get("Labels", {}) or {}
        image = str(svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Image", ""))
        at, dep = labels.get(f"{LABEL}.deployed-at"), labels.get(f"{LABEL}.deploy-id")
        state = "exited" if desired == 0 else "running" if running else "starting"
        return SlotInfo(
            slot=slot, port=port, state=state, version=labels.get(f"{LABEL}.version"),
            image=image.split("@", 1)[0] or None, image_id=image or None,
            deployed_at=float(at) if at else None,
            deploy_id=int(dep) if dep and dep.isdigit() else None,
            container_id=svc.short_id, tasks_running=running, tasks_desired=desired,
            task_ports=task_ports)

    def state(self, slot: str) -> str:
        return self.info(slot).state

    def exit_reason(self, slot: str) -> str | None:
        """Why the rollout cannot succeed: the service is gone, or a task of it failed since
        the rollout began (Swarm would retry it; a crash stays a crash for the deploy)."""
        svc = self.service(slot)
        if svc is None:
            return "the service disappeared"
        since = self._started.get(slot, 0.0)
        for t in self.tasks(slot):
            st = t.get("Status", {})
            if st.get("State") in FAILED and _since(t) >= since:
                return f"a task of {svc.name} failed: {st.get('Err') or st.get('Message')}"
        update = svc.attrs.get("UpdateStatus") or {}
        if str(update.get("State", "")).startswith(("paused", "rollback")):
            return f"the update of {svc.name} stopped: {update.get('Message')}"
        return self._no_mesh(slot, svc)

    def _no_mesh(self, slot: str, svc: Service) -> str | None:
        """Ingress mode on a kernel without IPVS: the tasks run, but the slot port never
        answers (dockerd logs "ipvs is not enabled"). Said once every task runs, so that a
        probe need not wait out its deadline; a kernel that has the module but has not
        loaded it yet is not judged."""
        if self.cfg.swarm.publish_mode != "ingress":
            return None
        counts = self._counts(svc)
        if counts is None or not counts[1] or counts[0] < counts[1] or not no_ipvs():
            return None
        return (f"Swarm's routing mesh cannot publish port {self.cfg.slot_port(slot)} here: "
                f"this kernel has no IPVS ({IPVS_PROC}); set swarm.publish_mode = "
                '"task-ports" (several tasks on this node) or "host" (one per node), '
                "see docs/scaling.md")

    # --- logs and one-offs ---------------------------------------------------------------

    UNIT = "service"

    def log_stream(self, slot: str, *, follow: bool, since: int | None,
                   tail: int | None) -> Iterator[bytes] | None:
        """The service's logs: every task's, on whichever node it runs (Docker's
        ``service logs``; the tasks Swarm keeps from earlier versions of the slot too)."""
        svc = self.service(slot)
        if svc is None:
            return None
        return self._swarm_call(f"reading the logs of {svc.name}",
                                lambda: svc.logs(**log_options(follow, since, tail)))

    def oneoff_image(self, image: str) -> str:
        """A one-off is a plain container on this host, while tasks run on any node: pull the
        digest-pinned ``image`` here. First refuse what a plain container cannot have: the
        app's Docker secrets, an overlay network that is not attachable."""
        self._refuse_oneoff()
        ref = by_digest(image)
        local = self._local_image(ref)
        if local is None:
            if self.emit is not None:  # an image of some size takes a while: say why
                self.emit(Event("info", f"pulling {ref} onto this host for the one-off"))
            repo, _, digest = ref.partition("@")
            self._fetch(ref, repo, digest, lambda _line: None)
            local = self.client.images.get(ref)
        return str(local.id)

    def _refuse_oneoff(self) -> None:
        secrets = self.cfg.swarm.secrets
        if secrets:
            raise DeployFailed(
                f"a one-off container cannot have the app's Docker secrets "
                f"({', '.join(secrets)}): Swarm mounts them into service tasks only",
                hint="`docker exec` into a running task of the live service instead, or run "
                     "the command from CI (see docs/scaling.md)")
        net = self.cfg.container.network
        if not net:
            return
        try:
            attrs = self.client.networks.get(net).attrs
        except docker.errors.NotFound:
            raise DeployFailed(f"the network {net} (container.network) does not exist",
                               hint=f"create it: docker network create --driver overlay "
                                    f"--attachable {net}") from None
        except docker.errors.APIError as e:
            raise DeployFailed(f"Docker refused reading the network {net}: {_short(e)}",
                               hint="check the Docker daemon log") from None
        if attrs.get("Scope") == "swarm" and not attrs.get("Attachable"):
            raise DeployFailed(
                f"a one-off container cannot join the overlay network {net}: it was created "
                "without --attachable (only services can join it)",
                hint=f"use a network made with `docker network create --driver overlay "
                     f"--attachable {net}` (container.network)")

    def logs_tail(self, slot: str, lines: int = 20) -> list[str]:
        svc = self.service(slot)
        if svc is None:
            return []
        try:
            raw = b"".join(svc.logs(stdout=True, stderr=True, tail=lines))
        except docker.errors.APIError:
            return []
        return raw.decode("utf-8", "replace").splitlines()[-lines:]

    def _secrets(self) -> list[SecretReference]:
        refs = []
        for name in self.cfg.swarm.secrets:
            found = [s for s in self._swarm_call("listing secrets", lambda n=name:
                     self.client.secrets.list(filters={"name": n})) if s.name == name]
            if not found:
                raise DeployFailed(f"the Docker secret {name} does not exist",
                                   hint=f"create it: printf %s VALUE | docker secret create "
                                        f"{name} -  (swarm.secrets)")
            refs.append(SecretReference(found[0].id, name))
        return refs

    def run(self, slot: str, image: str, version: str, deploy_id: int) -> None:
        """Create the slot's service, or update it to ``image``; wait until it converged."""
        self._refuse_foreign_service(slot)
        env = dict(self.cfg.container.env)
        if self.cfg.container.env_file:
            env.update(read_env_file(self.cfg.container.env_file))
        kwargs = service_kwargs(self.cfg, slot, image, version, deploy_id, env,
                                self._secrets(), self._node_id())
        self._started[slot] = time.time() - 1  # Docker's clock is this host's: 1 s margin
        svc = self.service(slot)
        if svc is None:
            self._swarm_call(f"creating {kwargs['name']}",
                             lambda: self.client.services.create(**kwargs))
        else:
            self._swarm_call(f"updating {svc.name}", lambda: svc.update(**kwargs))
        self.converge(slot, image)

    def _node_id(self) -> str:
        """This node's swarm id (task-ports tasks are placed here, next to Nginx)."""
        if not self.cfg.swarm.task_ports:
            return ""
        return str(self._swarm_call("reading this node's id", self.client.info)
                   .get("Swarm", {}).get("NodeID") or "")

    def _refuse_foreign_service(self, slot: str) -> None:
        name = container_name(self.cfg.name, slot)
        try:
            svc = self.client.services.get(name)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            return  # not a manager: ``service`` below says so in words
        labels = svc.attrs["Spec"].get("Labels", {}) or {}
        if labels.get(f"{LABEL}.app") != self.cfg.name or \
                labels.get(f"{LABEL}.slot") != slot:
            raise DeployFailed(f"a service named {name} exists but was not created by zdagent "
                               f"for app {self.cfg.name}; it was left alone",
                               hint="remove or rename it yourself, or change app.name")

    def converge(self, slot: str, image: str | None = None) -> None:
        """Wait until every desired task runs ``image`` (healthy, when the service has a
        healthcheck) and no older task is left; fail fast on a failed task."""
        deadline = time.monotonic() + self.cfg.health.startup_deadline + 30
        while True:
            svc = self.service(slot)
            if svc is None:
                raise DeployFailed(f"the service of slot {slot} disappeared")
            want = image or str(svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])
            desired = int(svc.attrs["Spec"]["Mode"]["Replicated"]["Replicas"])
            live = [t for t in self.tasks(slot) if t.get("DesiredState") == "running"]
            new = [t for t in live if task_image(t) == want and
                   t["Status"]["State"] == "running"]
            if len(new) >= desired and len(live) == len(new):
                return
            why = self.exit_reason(slot)
            if why or time.monotonic() > deadline:
                waiting = [t["Status"] for t in live if t["Status"]["State"] != "running"]
                note = "" if not waiting else (f" (a task is {waiting[0]['State']}: "
                                               f"{waiting[0].get('Err') or waiting[0]['Message']})")
                why = why or (f"{len(new)}/{desired} tasks running after "
                              f"{self.cfg.health.startup_deadline + 30:g}s{note}")
                raise DeployFailed(f"{svc.name} did not converge: {why}",
                                   hint="see `docker service ps --no-trunc "
                                        f"{svc.name}`; the live slot is untouched")
            time.sleep(POLL)

    def keep_running(self, slot: str) -> None:
        """Nothing to do: Swarm replaces a failed task of a service by itself."""

    def _scale(self, slot: str, replicas: int, what: str) -> Service | None:
        svc = self.service(slot)
        if svc is not None:
            self._started[slot] = time.time() - 1
            self._swarm_call(f"{what} {svc.name}", lambda: svc.scale(replicas))
        return svc

    def start(self, slot: str) -> None:
        if self._scale(slot, self.cfg.swarm.replicas, "scaling up") is None:
            raise DeployFailed(f"slot {slot} has no service to start")
        self.converge(slot)

    def restart(self, slot: str) -> None:
        """A rolling restart of every task (start-first through the mesh)."""
        svc = self.service(slot)
        if svc is None:
            raise DeployFailed(f"slot {slot} has no service to restart")
        self._started[slot] = time.time() - 1
        self._swarm_call(f"restarting {svc.name}", lambda: svc.force_update())
        self.converge(slot)

    def stop(self, slot: str) -> None:
        """Scale to 0 (the service and its spec stay: ``start`` scales it back)."""
        if self._scale(slot, 0, "scaling down") is not None:
            self._wait_tasks_gone(slot)

    def remove(self, slot: str) -> None:
        svc = self.service(slot)
        if svc is None:
            return
        try:
            svc.remove()
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            raise DeployFailed(f"Docker refused removing {svc.name}: {_short(e)}") from None
        self._wait_containers_gone(svc.id, svc.name)

    def _wait_tasks_gone(self, slot: str) -> None:
        deadline = time.monotonic() + self.cfg.container.stop_timeout + 30
        while any(t["Status"]["State"] in ("running", "starting", "preparing")
                  for t in self.tasks(slot) if t.get("DesiredState") == "running"):
            if time.monotonic() > deadline:
                raise DeployFailed(f"the tasks of slot {slot} are still running after "
                                   "scaling to 0", hint="check `docker service ps`")
            time.sleep(POLL)

    def _wait_containers_gone(self, service_id: str, name: str) -> None:
        """A removed service's containers go asynchronously: wait, so ports are free."""
        deadline = time.monotonic() + self.cfg.container.stop_timeout + 30
        label = f"com.docker.swarm.service.id={service_id}"
        while self.client.containers.list(all=True, sparse=True, filters={"label": label}):
            if time.monotonic() > deadline:
                raise DeployFailed(f"the containers of {name} are still there 30s after "
                                   "its removal", hint="check `docker ps -a`")
            time.sleep(POLL)


class TaskFloor:
    """The watchdog's count of the live service's running tasks (its own Docker client).

    Swarm replaces a failed task by itself; the app fails only when the live service cannot
    keep ``swarm.min_healthy`` tasks running (a crash loop, a lost node, no room to place).
    """

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self.client: docker.DockerClient | None = None
        self.routed: dict[str, tuple[int, ...]] | None = None  # the ports Nginx was given
        self.failed: dict[str, tuple[int, ...]] | None = None  # a re-render that failed
        self.retry_at = 0.0  # (monotonic) when to try that one again
        self.shrunk_at: float | None = None  # (monotonic) since when tasks only went away

    def shortfall(self, slot: str) -> str | None:
        """Why the live service is short of tasks, or None (a Docker error is no verdict)."""
        try:
            if self.client is None:
                self.client = docker.from_env()
            counts = ServiceSlots(self.cfg, self.client).counts(slot)
        except (docker.errors.DockerException, EnvironmentProblem, DeployFailed):
            return None
        return short_of(slot, counts, self.cfg.swarm.floor)

    def task_ports(self) -> dict[str, tuple[int, ...]] | None:
        """task-ports: each slot's running tasks' ports (None: Docker did not answer)."""
        try:
            if self.client is None:
                self.client = docker.from_env()
            slots = ServiceSlots(self.cfg, self.client)
            return {slot: slots.ports(slot) for slot in ("blue", "green")}
        except (docker.errors.DockerException, EnvironmentProblem, DeployFailed):
            return None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def short_of(slot: str, counts: tuple[int, int] | None, floor: int) -> str | None:
    """Pure: the watchdog's verdict on a live service's (running, desired) tasks."""
    if counts is None:
        return f"{slot} has no service"
    running, desired = counts
    if running < floor:
        return f"{slot} has {running}/{desired} tasks running (min_healthy {floor})"
    return None


def task_floor(cfg: AppConfig) -> TaskFloor | None:
    """A floor to check for swarm apps; None for containers (their probe says it all)."""
    return TaskFloor(cfg) if cfg.backend == "swarm" else None
