"""Blue/green slots as Docker containers, through the Docker SDK (never the docker CLI).

A slot is a container named ``<app>-<slot>`` published on 127.0.0.1 only, labelled with the
app, slot, version, deploy id and time, so the labels alone can tell what is deployed where
even when the store is lost. Slots are found by those labels, never by name alone: a
container that merely has our name is someone else's and is never stopped or removed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from zdagent.config import (
    AppConfig,
    BuildSource,
    ContainerConfig,
    GitSource,
    ImageSource,
    env_file_exposed,
    read_env_file,
)
from zdagent.errors import (
    BuildFailed,
    DeployFailed,
    EnvironmentProblem,
    ZdError,
    disk_full,
    is_disk_full,
    shorten,
)
from zdagent.events import Event
from zdagent.runbook import with_link

SLOTS = ("blue", "green")
LABEL = "zdagent"
LogLine = Callable[[str], None]


def other(slot: str) -> str:
    return "green" if slot == "blue" else "blue"


def container_name(app: str, slot: str) -> str:
    return f"{app}-{slot}"


@dataclass(frozen=True)
class SlotInfo:
    """What Docker says about one slot right now."""

    slot: str
    port: int
    state: str  # running | exited | created | restarting | missing ...
    version: str | None = None
    image: str | None = None
    image_id: str | None = None
    deployed_at: float | None = None
    deploy_id: int | None = None
    container_id: str | None = None
    tasks_running: int | None = None  # swarm backend: running tasks of the slot's service
    tasks_desired: int | None = None
    task_ports: tuple[int, ...] = ()  # swarm task-ports: each running task's host port

    @property
    def tasks(self) -> str | None:
        """``3/3 running`` for a swarm slot, None for a container."""
        if self.tasks_desired is None:
            return None
        return f"{self.tasks_running or 0}/{self.tasks_desired} running"

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tasks": self.tasks}


def connect() -> docker.DockerClient:
    """A client for the local engine, API version negotiated (never pinned)."""
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise EnvironmentProblem(
            f"cannot reach the Docker engine: {_short(e)}",
            hint=with_link("is dockerd running (`systemctl start docker`) and is DOCKER_HOST "
                           "right? The user needs access to /var/run/docker.sock",
                           "docker-unreachable"),
        ) from None


def _as_deploy_error(what: str, e: docker.errors.APIError) -> ZdError:
    if is_disk_full(e):
        return disk_full(f"Docker refused {what}", _short(e))
    return DeployFailed(f"Docker refused {what}: {_short(e)}",
                        hint="check `docker ps -a` and the Docker daemon log")


@contextlib.contextmanager
def _docker_errors(what: str) -> Iterator[None]:
    """Docker API errors become one-line deploy errors instead of tracebacks."""
    try:
        yield
    except docker.errors.NotFound:
        raise
    except docker.errors.APIError as e:
        raise _as_deploy_error(what, e) from None


def _short(e: BaseException) -> str:
    """Docker's own explanation (the API error's message) on one line, cut in the middle so
    the cause at its end ("port is already allocated") survives."""
    explanation = getattr(e, "explanation", None)
    text = explanation if isinstance(explanation, str) and explanation else str(e)
    return shorten(text or type(e).__name__)


def slot_labels(cfg: AppConfig, slot: str, version: str, deploy_id: int) -> dict[str, str]:
    return {
        LABEL: "1",
        f"{LABEL}.app": cfg.name,
        f"{LABEL}.slot": slot,
        f"{LABEL}.version": version,
        f"{LABEL}.deploy-id": str(deploy_id),
        f"{LABEL}.deployed-at": f"{time.time():.3f}",
    }


def runtime_kwargs(c: ContainerConfig) -> dict[str, Any]:
    """What every container of the app gets, slots and one-offs alike: network, volumes,
    user and resource limits (only the keys that are set, so Docker's defaults stay)."""
    kwargs: dict[str, Any] = {}
    if c.network:
        kwargs["network"] = c.network
    if c.volumes:
        kwargs["volumes"] = [v.bind for v in c.volumes]
    if c.user:
        kwargs["user"] = c.user
    if c.memory:
        kwargs["mem_limit"] = c.memory
    if c.cpus:
        kwargs["nano_cpus"] = round(c.cpus * 1e9)
    return kwargs


def container_kwargs(cfg: AppConfig, slot: str, image: str, version: str, deploy_id: int,
                     env: Mapping[str, str]) -> dict[str, Any]:
    """The exact arguments for ``containers.run`` (pure, so it is tested as data)."""
    c = cfg.container
    kwargs: dict[str, Any] = {
        "image": image,
        "name": container_name(cfg.name, slot),
        "detach": True,
        # The operator's labels first: zdagent's own always win (config refuses zdagent.*).
        "labels": {**c.labels, **slot_labels(cfg, slot, version, deploy_id)},
        "environment": {**env, "ZDAGENT_VERSION": version, "ZDAGENT_SLOT": slot},
        "ports": {f"{c.port}/tcp": ("127.0.0.1", cfg.slot_port(slot))},
        # No restart while it is a candidate: a crash stays a crash (exit code and all) for the
        # probe to see at once. ``keep_running`` sets unless-stopped once it is healthy.
        "restart_policy": {"Name": "no"},
        **runtime_kwargs(c),
    }
    if c.command:
        kwargs["command"] = list(c.command)
    if c.entrypoint:
        kwargs["entrypoint"] = list(c.entrypoint)
    if c.log_driver or c.log_options:
        kwargs["log_config"] = {"type": c.log_driver or "", "config": dict(c.log_options)}
    return kwargs


def log_options(follow: bool, since: int | None, tail: int | None) -> dict[str, Any]:
    """The arguments of a container's or a service's ``logs``: both streams, streamed."""
    kwargs: dict[str, Any] = {"stdout": True, "stderr": True, "follow": follow,
                              "tail": tail if tail is not None else "all"}
    if since is not None:
        kwargs["since"] = since
    return kwargs


class Slots:
    """The Docker side of one app: its two slot containers and its images."""

    def __init__(self, cfg: AppConfig, client: docker.DockerClient,
                 emit: Callable[[Event], None] | None = None) -> None:
        self.cfg = cfg
        self.client = client
        self.emit = emit

    # --- images -----------------------------------------------------------------------

    def image_ref(self, version: str) -> str:
        src = self.cfg.source
        repo = src.image if isinstance(src, ImageSource) else src.tag
        return f"{repo}:{version}"

    def build(self, version: str, context: Path, on_line: LogLine) -> tuple[str, str]:
        """Build ``context`` with the log streamed; return (ref, image id)."""
        src = self.cfg.source
        assert isinstance(src, BuildSource | GitSource)
        ref = self.image_ref(version)
        step = "before the first step"
        image_id: str | None = None
        args = {**src.args, "ZDAGENT_VERSION": version}
        try:
            stream = self.client.api.build(
                path=str(context), dockerfile=src.dockerfile, tag=ref, buildargs=args,
                rm=True, forcerm=True, decode=True,
                labels={f"{LABEL}.app": self.cfg.name, f"{LABEL}.version": version},
            )
            for chunk in stream:
                # The HTTP status is 200 even when the build fails: errors come as chunks.
                if "error" in chunk or "errorDetail" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
                    if is_disk_full(str(detail)):
                        raise disk_full(f"build failed at {step}", str(detail))
                    raise BuildFailed(
                        f"build failed at {step}: {str(detail).strip()}",
                        hint=f"fix {src.dockerfile} in {context}; the live slot is untouched",
                    )
                text = str(chunk.get("stream", "")).strip()
                if text.startswith("Step "):
                    step = text.split(" :", 1)[0].replace("Step ", "step ")
                    step = f"{step} ({text.split(' : ', 1)[-1][:80]})"
                if text:
                    on_line(text)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
        except docker.errors.APIError as e:
            if is_disk_full(e):
                raise disk_full("build failed", _short(e)) from None
            raise BuildFailed(f"build failed: {_short(e)}",
                              hint="check the build context and Dockerfile") from None
        if image_id is None:
            image_id = self.client.images.get(ref).id
        return ref, image_id

    def pull(self, ref: str, on_line: LogLine) -> str:
        """Make ``ref`` available locally per the pull policy; return its image id."""
        src = self.cfg.source
        policy = src.pull if isinstance(src, ImageSource) else "never"
        local = self._local_image(ref)
        if local is not None and policy != "always":
            on_line(f"using local image {ref} ({local.short_id})")
            return str(local.id)
        if policy == "never":
            raise DeployFailed(f"image {ref} is not present locally and source.pull is 'never'",
                               hint="load or build the image first, or set source.pull")
        repo, _, tag = ref.rpartition(":")
        self._fetch(ref, repo, tag, on_line)
        return str(self.client.images.get(ref).id)

    def _fetch(self, ref: str, repo: str, tag: str, on_line: LogLine) -> None:
        """Pull ``repo`` at ``tag`` (a tag or a digest) from its registry, progress streamed;
        an error chunk or an API error is a one-line deploy error."""
        try:
            for chunk in self.client.api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    if is_disk_full(str(chunk["error"])):
                        raise disk_full(f"pull of {ref} failed", str(chunk["error"]))
                    raise DeployFailed(f"pull of {ref} failed: {chunk['error']}",
                                       hint="check the image name, tag and registry login")
                status = chunk.get("status", "")
                if status and "id" not in chunk:
                    on_line(status)
        except docker.errors.APIError as e:
            if is_disk_full(e):
                raise disk_full(f"pull of {ref} failed", _short(e)) from None
            raise DeployFailed(f"pull of {ref} failed: {_short(e)}",
                               hint="check the image name, tag and registry login") from None

    def _local_image(self, ref: str) -> Any:
        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None

    def has_image(self, image_id: str) -> bool:
        return self._local_image(image_id) is not None

    # --- what image retention sees on this host -------------------------------------------

    def local_ids(self, refs: Iterable[str],
                  images: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """ref -> this host's image id, for the images history and the slots name: a
        container's ``image_id`` is the local id already."""
        return {r: r for r in refs}

    def spent(self, containers: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """container id -> image id of this app's containers that keep an image only as a
        record (none here: a stopped slot container is started again by a rollback)."""
        return {}

    # --- containers ---------------------------------------------------------------------

    def _ours(self, c: Container, slot: str) -> bool:
        labels = c.labels or {}
        return labels.get(f"{LABEL}.app") == self.cfg.name and \
            labels.get(f"{LABEL}.slot") == slot

    def _container(self, slot: str) -> Container | None:
        """The slot's container, found by its labels (app + slot).

        The usual name is tried first (one API call); a container with that name but not
        our labels is ignored, and a labelled one under another name is still found.
        """
        try:
            c = self.client.containers.get(container_name(self.cfg.name, slot))
            if self._ours(c, slot):
                return c
        except docker.errors.NotFound:
            pass
        # ignore_removed: one removed between the list and its inspect (a deploy running
        # while `status` reads) is skipped, not a NotFound that fails the read.
        found = self.client.containers.list(all=True, ignore_removed=True, filters={"label": [
            f"{LABEL}.app={self.cfg.name}", f"{LABEL}.slot={slot}"]})
        return found[0] if found else None

    def _refuse_foreign(self, slot: str) -> None:
        """A container holding our slot's name without our labels is not ours: stop here."""
        name = container_name(self.cfg.name, slot)
        try:
            c = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if not self._ours(c, slot):
            raise DeployFailed(
                f"a container named {name} exists but was not created by zdagent for app "
                f"{self.cfg.name} (no zdagent.app/zdagent.slot labels); it was left alone",
                hint=f"rename or remove it yourself (`docker rename {name} {name}-old` or "
                     f"`docker rm -f {name}`), or change app.name; the live slot is untouched")

    def ports(self, slot: str) -> tuple[int, ...]:
        """Where the slot answers on 127.0.0.1 (Nginx's servers for it, the probes' ports)."""
        return (self.cfg.slot_port(slot),)

    def info(self, slot: str) -> SlotInfo:
        c = self._container(slot)
        port = self.cfg.slot_port(slot)
        if c is None:
            return SlotInfo(slot=slot, port=port, state="missing")
        labels = c.labels or {}
        try:
            image = c.image
        except docker.errors.ImageNotFound:  # deleted by hand: report, do not crash
            image = None
        tags = image.tags if image else []
        at = labels.get(f"{LABEL}.deployed-at")
        dep = labels.get(f"{LABEL}.deploy-id")
        return SlotInfo(
            slot=slot,
            port=port,
            state=c.status,
            version=labels.get(f"{LABEL}.version"),
            image=tags[0] if tags else None,
            image_id=image.id if image else c.attrs.get("Image"),
            deployed_at=float(at) if at else None,
            deploy_id=int(dep) if dep and dep.isdigit() else None,
            container_id=c.short_id,
        )

    def state(self, slot: str) -> str:
        c = self._container(slot)
        if c is None:
            return "missing"
        c.reload()
        return str(c.status)

    def exit_reason(self, slot: str) -> str | None:
        """None while the container is up; otherwise why it is not (for fail-fast probes)."""
        c = self._container(slot)
        if c is None:
            return "the container disappeared"
        c.reload()
        st = c.attrs.get("State", {})
        restarts = c.attrs.get("RestartCount", 0)
        if restarts:
            # unless-stopped brings a crashing candidate back between polls; the count is reset
            # by every manual start, so one restart proves it exited since we started it.
            return (f"the container exited with code {st.get('ExitCode')} (Docker restarted "
                    f"it {restarts} time(s))")
        if st.get("Restarting") or c.status in ("exited", "dead"):
            return f"the container exited with code {st.get('ExitCode')}"
        return None

    # --- what `zdagent logs`, `zdagent exec` and the release command run on -------------

    UNIT = "container"  # what a slot is, in messages ("the blue slot has no container")

    def log_stream(self, slot: str, *, follow: bool, since: int | None,
                   tail: int | None) -> Iterator[bytes] | None:
        """The slot's stdout and stderr as Docker delivers them; None without a slot."""
        c = self._container(slot)
        return None if c is None else c.logs(stream=True, **log_options(follow, since, tail))

    def oneoff_image(self, image: str) -> str:
        """The image a one-off container of ``image`` (a slot's or a candidate's) is created
        from: here, where the slots run, it is already local."""
        return image

    def logs_tail(self, slot: str, lines: int = 20) -> list[str]:
        c = self._container(slot)
        if c is None:
            return []
        try:
            raw = c.logs(tail=lines, stdout=True, stderr=True)
        except docker.errors.APIError:
            return []
        return raw.decode("utf-8", "replace").splitlines()[-lines:]

    def run(self, slot: str, image: str, version: str, deploy_id: int) -> None:
        """Start a fresh container for ``slot`` (our previous one there is removed first)."""
        self._refuse_foreign(slot)
        env = dict(self.cfg.container.env)
        env_file = self.cfg.container.env_file
        if env_file:  # the only place secrets are read: when a container is created
            env.update(read_env_file(env_file))
            if env_file_exposed(env_file) and self.emit is not None:
                self.emit(Event("warn", f"container.env_file {env_file} is readable by its "
                                        f"group or everyone: chmod 600 {env_file}"))
        self.remove(slot)
        kwargs = container_kwargs(self.cfg, slot, image, version, deploy_id, env)
        try:
            self.client.containers.run(**kwargs)
        except docker.errors.APIError as e:
            self.remove(slot)
            if is_disk_full(e):
                raise disk_full(f"could not start {kwargs['name']}", _short(e)) from None
            raise DeployFailed(
                f"could not start {kwargs['name']}: {_short(e)}",
                hint=f"check the [container] settings (volumes, memory, cpus, user, "
                     f"log_driver) and that 127.0.0.1:{self.cfg.slot_port(slot)} is free "
                     f"(slots.*_port); the live slot is untouched",
            ) from None

    def keep_running(self, slot: str) -> None:
        """A healthy slot is restarted by Docker if it dies (unless-stopped: a retired,
        stopped slot stays stopped across a dockerd restart)."""
        c = self._container(slot)
        if c is None:
            raise DeployFailed(f"slot {slot} has no container")
        with _docker_errors(f"setting the restart policy of {c.name}"):
            c.update(restart_policy={"Name": "unless-stopped"})

    def start(self, slot: str) -> None:
        c = self._container(slot)
        if c is None:
            raise DeployFailed(f"slot {slot} has no container to start")
        with _docker_errors(f"starting {c.name}"):
            c.start()

    def restart(self, slot: str) -> None:
        c = self._container(slot)
        if c is None:
            raise DeployFailed(f"slot {slot} has no container to restart")
        with _docker_errors(f"restarting {c.name}"):
            c.restart(timeout=self.cfg.container.stop_timeout)

    def stop(self, slot: str) -> None:
        """SIGTERM, then SIGKILL after the stop timeout (the container is kept)."""
        c = self._container(slot)
        if c is not None and c.status in ("running", "restarting", "paused"):
            with _docker_errors(f"stopping {c.name}"), \
                    contextlib.suppress(docker.errors.NotFound):
                c.stop(timeout=self.cfg.container.stop_timeout)

    def remove(self, slot: str) -> None:
        """Stop gracefully, then remove; waits out a removal already in progress."""
        c = self._container(slot)
        if c is None:
            return
        self.stop(slot)
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise _as_deploy_error(f"removing {c.name}", e) from None
        deadline = time.monotonic() + 60
        while self._container(slot) is not None:  # someone else is removing it
            if time.monotonic() > deadline:
                raise DeployFailed(f"{c.name} is still being removed after 60s",
                                   hint="check `docker ps -a` and the Docker daemon log")
            time.sleep(0.2)
