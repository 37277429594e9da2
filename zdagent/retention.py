"""Image retention: after a successful deploy, keep ``app.retain`` versions and prune the rest.

A small VPS disk fills with one image per deploy. The decision is a pure function
(:func:`choose`) of the app's history, its images and every container on the host, so it is
unit-tested as data; :func:`run` collects those facts through the Docker SDK and removes what
it chose. Rules, in order:

* an image any container uses (running or stopped, any app) is never removed;
* the live slot's and the standby's images are always kept and count among ``retain``;
* the newest other versions (by their last successful deploy; never-live ones, such as a
  failed candidate's, after all of those) fill ``retain``;
* an image that also carries a tag outside this app's repository is left alone;
* with an image source and ``pull = "never"`` the images are the operator's: never pruned.
* a swarm app's images are this host's ones its digest refs name (``Slots.local_ids``); its
  stopped task containers (Swarm's task history, ``Slots.spent``) hold no image and go
  with theirs. Other nodes prune their own.

Git build directories (``state_dir/builds/<app>/<commit>``) of versions not kept go too.
Pruned versions are remembered (``state_dir/retention-<app>.json``) so ``rollback --to`` can
say why a version is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import docker.errors

from zdagent.config import AppConfig, GitSource, ImageSource
from zdagent.events import Emit, Event
from zdagent.gitsource import SHORT
from zdagent.slots import LABEL, Slots, other
from zdagent.store import Store


@dataclass(frozen=True)
class Deployed:
    """One history record that named an image."""

    version: str | None
    image_id: str
    at: float
    succeeded: bool


@dataclass(frozen=True)
class ImageFacts:
    """One candidate image of this app as Docker describes it."""

    id: str
    tags: tuple[str, ...]  # this app's repository only
    foreign_tags: tuple[str, ...]  # any other name: someone else's too, left alone
    created: float
    size: int  # bytes freed by removing it alone (its unshared size)
    version: str | None = None  # the zdagent.version label of images we built


@dataclass(frozen=True)
class Choice:
    image_id: str
    versions: tuple[str, ...]
    tags: tuple[str, ...]
    size: int
    reason: str


@dataclass
class Plan:
    keep: list[Choice] = field(default_factory=list)
    remove: list[Choice] = field(default_factory=list)
    builds_remove: list[str] = field(default_factory=list)  # directory paths
    containers_remove: list[str] = field(default_factory=list)  # stopped swarm tasks' (ids)

    @property
    def bytes_freed(self) -> int:
        return sum(c.size for c in self.remove)

    @property
    def kept_versions(self) -> set[str]:
        return {v for c in self.keep for v in c.versions}

    def to_dict(self) -> dict[str, Any]:
        return {"keep": [asdict(c) for c in self.keep],
                "remove": [asdict(c) for c in self.remove],
                "builds_remove": list(self.builds_remove),
                "containers_remove": list(self.containers_remove),
                "bytes_freed": self.bytes_freed}


def choose(deployed: Sequence[Deployed], images: Sequence[ImageFacts],
           in_use: Mapping[str, str], slot_images: Mapping[str, str], retain: int) -> Plan:
    """Which images to keep and which to remove (pure).

    ``in_use``: image id -> a container using it (any container of the host).
    ``slot_images``: image id -> "live" / "standby".
    """
    last: dict[str, float] = {}
    versions: dict[str, list[str]] = {}
    for d in deployed:
        if d.version and d.version not in versions.setdefault(d.image_id, []):
            versions[d.image_id].append(d.version)
        if d.succeeded:
            last[d.image_id] = max(last.get(d.image_id, 0.0), d.at)

    def when(img: ImageFacts) -> tuple[bool, float]:
        """Rollback targets first (a version that never went live is no target)."""
        return img.id in last, last.get(img.id, img.created)

    def choice(img: ImageFacts, reason: str) -> Choice:
        vs = list(versions.get(img.id, []))
        if img.version and img.version not in vs:
            vs.insert(0, img.version)
        return Choice(img.id, tuple(vs), img.tags, img.size, reason)

    plan = Plan()
    budget = retain - sum(1 for img in images if img.id in slot_images)
    for img in sorted(images, key=when, reverse=True):
        if img.id in slot_images:
            plan.keep.append(choice(img, f"the {slot_images[img.id]} slot's image"))
        elif budget > 0:
            budget -= 1
            plan.keep.append(choice(img, f"among the {retain} newest"))
        elif img.id in in_use:
            plan.keep.append(choice(img, f"used by container {in_use[img.id]}"))
        elif img.foreign_tags:
            plan.keep.append(choice(img, f"also tagged {img.foreign_tags[0]}"))
        else:
            plan.remove.append(choice(img, f"older than the {retain} newest"))
    return plan


def builds_to_remove(build_dirs: Iterable[Path], kept_versions: set[str]) -> list[str]:
    """Git build directories (named by full commit) whose version is not kept (pure)."""
    return sorted(str(d) for d in build_dirs if d.name[:SHORT] not in kept_versions)


# --- the facts, through the Docker SDK -----------------------------------------------------


def _repository(cfg: AppConfig) -> str:
    src = cfg.source
    return src.image if isinstance(src, ImageSource) else src.tag


def _facts(raw: Mapping[str, Any], repo: str, sizes: Mapping[str, int]) -> ImageFacts:
    tags = [t for t in raw.get("RepoTags") or [] if t and t != "<none>:<none>"]
    labels = raw.get("Labels") or {}
    return ImageFacts(
        id=raw["Id"],
        tags=tuple(t for t in tags if t.rpartition(":")[0] == repo),
        foreign_tags=tuple(t for t in tags if t.rpartition(":")[0] != repo),
        created=float(raw.get("Created") or 0),
        size=sizes.get(raw["Id"], int(raw.get("Size") or 0)),
        version=labels.get(f"{LABEL}.version"),
    )


def _history(store: Store, app: str) -> list[Deployed]:
    return [Deployed(r.version, r.image_id, r.finished_at or r.started_at,
                     r.outcome == "succeeded")
            for r in store.history(app, limit=100_000) if r.image_id]


def collect(cfg: AppConfig, slots: Slots, store: Store, live: str | None) -> Plan:
    """Everything :func:`choose` needs, read from Docker and the store, and its decision."""
    api = slots.client.api
    deployed = _history(store, cfg.name)
    slot_refs: dict[str, str] = {}  # the slots' image refs (a swarm slot's is a digest ref)
    if live:
        for slot, role in ((other(live), "standby"), (live, "live")):
            ref = slots.info(slot).image_id
            if ref:
                slot_refs[ref] = role
    src = cfg.source
    sizes = {i["Id"]: max(0, int(i.get("Size") or 0) - max(0, int(i.get("SharedSize") or 0)))
             for i in api.df().get("Images") or []}
    raw = {i["Id"]: i for i in api.images(filters={"label": f"{LABEL}.app={cfg.name}"})}
    if isinstance(src, ImageSource):
        raw = {}  # pulled images carry the publisher's labels, not ours: history names them
        if src.pull != "never":
            local = api.images()
            ids = slots.local_ids({d.image_id for d in deployed} | set(slot_refs), local)
            deployed = [replace(d, image_id=ids.get(d.image_id, d.image_id)) for d in deployed]
            slot_refs = {ids.get(ref, ref): role for ref, role in slot_refs.items()}
            wanted = {d.image_id for d in deployed}
            raw = {i["Id"]: i for i in local if i["Id"] in wanted}
    images = [_facts(i, _repository(cfg), sizes) for i in raw.values()]
    containers = api.containers(all=True)
    spent = slots.spent(containers)
    in_use = {c.get("ImageID", ""): (c.get("Names") or ["?"])[0].lstrip("/")
              for c in containers if c.get("Id") not in spent}
    plan = choose(deployed, images, in_use, slot_refs, cfg.retain)
    gone = {c.image_id for c in plan.remove}
    plan.containers_remove = sorted(cid for cid, image in spent.items() if image in gone)
    if isinstance(src, GitSource):
        builds = cfg.state_dir / "builds" / cfg.name
        dirs = [d for d in builds.iterdir() if d.is_dir()] if builds.is_dir() else []
        plan.builds_remove = builds_to_remove(dirs, plan.kept_versions)
    return plan


# --- removal ----------------------------------------------------------------------------


def apply(cfg: AppConfig, slots: Slots, plan: Plan, emit: Emit) -> Plan:
    """Remove what the plan chose; return what actually went (an image that became used
    since is skipped with a warning)."""
    done = Plan(keep=plan.keep)
    for cid in plan.containers_remove:  # stopped, never started again: Swarm's task history
        try:
            slots.client.api.remove_container(cid)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:  # its image is then kept, with a warning below
            emit(Event("warn", f"kept the stopped task container {cid[:12]}: "
                               f"{e.explanation or e}"))
            continue
        done.containers_remove.append(cid)
    for c in plan.remove:
        try:
            for ref in c.tags or (c.image_id,):
                slots.client.images.remove(ref, noprune=False)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            emit(Event("warn", f"kept image {c.image_id[7:19]} ({', '.join(c.versions)}): "
                               f"{e.explanation or e}"))
            continue
        done.remove.append(c)
    for path in plan.builds_remove:
        shutil.rmtree(path, ignore_errors=True)
        done.builds_remove.append(path)
    _remember(cfg, done.remove)
    return done


def run(cfg: AppConfig, slots: Slots, store: Store, live: str | None, emit: Emit,
        *, dry_run: bool = False) -> Plan:
    """Decide and (unless ``dry_run``) prune; the caller holds the app's lock."""
    plan = collect(cfg, slots, store, live)
    return plan if dry_run else apply(cfg, slots, plan, emit)


def after_deploy(engine: Any) -> None:
    """The post-deploy prune: a failure is a warning, never a failed deploy."""
    try:
        done = run(engine.cfg, engine.slots, engine.store, engine.live_slot(), engine.emit)
    except Exception as e:  # the deploy succeeded; a full disk is the next deploy's problem
        engine.emit(Event("warn", f"image retention failed (the deploy succeeded): "
                                  f"{type(e).__name__}: {e}"))
        return
    if done.remove or done.builds_remove:
        names = ", ".join(v for c in done.remove for v in c.versions[:1]) or "-"
        engine.emit(Event("info", f"pruned {len(done.remove)} old image(s) ({names}), "
                                  f"{human_bytes(done.bytes_freed)} freed; "
                                  f"{len(done.builds_remove)} build dir(s) "
                                  f"(retain = {engine.cfg.retain})",
                          data=done.to_dict()))


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# --- what was pruned, for rollback --to ---------------------------------------------------


def _record_path(cfg: AppConfig) -> Path:
    return cfg.state_dir / f"retention-{cfg.name}.json"


def pruned_versions(cfg: AppConfig) -> dict[str, dict[str, Any]]:
    """version -> {"image_id", "at"} of images this app pruned."""
    try:
        data = json.loads(_record_path(cfg).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(cfg: AppConfig, removed: Sequence[Choice]) -> None:
    if not removed:
        return
    data = pruned_versions(cfg)
    for c in removed:
        for v in c.versions:
            data[v] = {"image_id": c.image_id, "at": time.time()}
    path = _record_path(cfg)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)


def pruned_hint(cfg: AppConfig, version: str) -> str | None:
    """The one-line reason a version's image is gone, if retention removed it."""
    entry = pruned_versions(cfg).get(version)
    if not entry:
        return None
    at = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(entry.get("at", 0))))
    return f"its image was pruned on {at} (app.retain = {cfg.retain})"
