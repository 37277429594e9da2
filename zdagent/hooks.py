"""What runs around a deploy: the release command, smoke checks and the host's hooks.

* The release command (``hooks.release``, e.g. migrations) runs once per deploy in a one-off
  container of the candidate image, with the app's env, env_file and network (zdagent.oneoff),
  before the candidate starts. The old version keeps serving meanwhile, so a migration must be
  backward compatible. Non-zero or a timeout fails the deploy; nothing was switched.
* Smoke checks (``[[smoke]]``) are HTTP requests to the healthy candidate's slot port, before
  the switch; the first that fails names itself in the deploy's error.
* Host hooks are executables on this host, run with an argv (never a shell), a small
  environment (``ZDAGENT_*`` and PATH: never the daemon's own) and a timeout.

Every one streams its output as ``log`` events and keeps the last lines for the error.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import docker.errors
import httpx

from zdagent.config import HOST_HOOKS, HooksConfig, SmokeCheck
from zdagent.errors import HookFailed, ReleaseFailed, SmokeCheckFailed, shorten
from zdagent.events import Emit, Event
from zdagent.oneoff import oneoff_container, oneoff_kwargs
from zdagent.probe import http_client, slot_url
from zdagent.slots import LABEL, Slots

TAIL_LINES = 5  # output lines kept for the error message (and so for history)
MAX_LINE = 2000  # longer lines are cut before they become events
SMOKE_TIMEOUT = 10.0  # seconds per smoke request without a max_latency
RELEASE_LABEL = f"{LABEL}.release"  # on the release's one-off container: its deploy id


class Output:
    """Splits a byte stream into lines: each one emitted as a ``log`` event, the last kept."""

    def __init__(self, emit: Emit, phase: str) -> None:
        self.emit = emit
        self.phase = phase
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = b""
        self._cut = False  # the current line was already emitted at MAX_LINE: skip its rest

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not self._cut:
                self._line(line)
            self._cut = False
        if len(self._partial) > MAX_LINE * 4:  # a line that never ends: keep it bounded
            if not self._cut:
                self._line(self._partial)
            self._partial, self._cut = b"", True

    def close(self) -> None:
        if self._partial and not self._cut:
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE]
        if text.strip():
            self.tail.append(text.strip())
        self.emit(Event("log", text, phase=self.phase))

    def last_lines(self) -> str:
        tail = shorten(" | ".join(self.tail), 600)
        return f"; last output: {tail}" if tail else "; it printed nothing"


def follow(chunks: Iterable[bytes], out: Output, deadline: float,
           exited: Callable[[], bool] = lambda: False) -> bool:
    """Feed ``out`` from ``chunks`` (read in a thread) until they end; False if ``deadline``
    passed first. Events are emitted from the calling thread only.

    When ``exited()`` turns true while the output stays open (a background child holding
    the pipe), what is buffered is read for one more second and the rest is left.
    """
    q: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        try:
            for chunk in chunks:
                q.put(chunk)
        except Exception:  # a stream cut by the kill or the removal: the end of the output
            pass
        finally:
            q.put(None)

    threading.Thread(target=read, daemon=True, name="zdagent-output").start()
    grace: float | None = None
    try:
        while True:
            now = time.monotonic()
            if grace is None and exited():
                grace = now + 1.0
            limit = deadline if grace is None else min(deadline, grace)
            if now >= limit:
                return grace is not None
            try:
                chunk = q.get(timeout=min(0.2, limit - now))
            except queue.Empty:
                continue
            if chunk is None:
                return True
            out.feed(chunk)
    finally:
        out.close()


# --- the release command ------------------------------------------------------------------

def run_release(slots: Slots, image_id: str, version: str, deploy_id: int,
                hooks: HooksConfig, emit: Emit) -> None:
    """Run ``hooks.release`` in a one-off container of the candidate image; raise
    ReleaseFailed on a non-zero exit or a timeout (the container is killed and removed)."""
    argv = hooks.release
    kwargs = oneoff_kwargs(slots, slots.oneoff_image(image_id), version, argv, tty=False)
    kwargs["environment"].update(ZDAGENT_SLOT="release", ZDAGENT_DEPLOY_ID=str(deploy_id))
    kwargs["labels"][RELEASE_LABEL] = str(deploy_id)
    kwargs["name"] = kwargs["name"].replace("-oneoff-", "-release-", 1)
    what = f"release command {argv[0]}"  # never its arguments: a token may sit there
    hint = "nothing was switched: the live slot kept serving; fix the command and deploy again"
    out = Output(emit, "release")
    with oneoff_container(slots, kwargs) as c:
        stream = slots.client.api.attach(c.id, stdout=True, stderr=True, stream=True,
                                         logs=True)
        try:
            c.start()
        except docker.errors.APIError as e:
            raise ReleaseFailed(f"{what} could not start: {e.explanation or e}",
                                hint="check the command exists in the image") from None
        deadline = time.monotonic() + hooks.release_timeout
        code = _exit_code(c, deadline) if follow(stream, out, deadline) else None
        if code is None:
            with contextlib.suppress(docker.errors.APIError):
                c.kill()
            raise ReleaseFailed(f"{what} did not finish within {hooks.release_timeout:g}s "
                                f"(hooks.release_timeout): killed{out.last_lines()}", hint=hint)
    if code != 0:
        raise ReleaseFailed(f"{what} failed with exit code {code}{out.last_lines()}", hint=hint)
    emit(Event("info", f"{what} succeeded"))


def _exit_code(c: Any, deadline: float) -> int | None:
    """The container's exit code once it has exited, or None at the deadline (its output
    may end before it does)."""
    while True:
        c.reload()
        if c.status in ("exited", "dead"):
            return int(c.attrs["State"].get("ExitCode", 1))
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def remove_release_containers(slots: Slots) -> int:
    """Remove release containers left by a run that died (reconcile); returns how many."""
    found = slots.client.containers.list(
        all=True, filters={"label": [f"{LABEL}.app={slots.cfg.name}", RELEASE_LABEL]})
    for c in found:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)
    return len(found)


# --- smoke checks -------------------------------------------------------------------------

def smoke_problem(check: SmokeCheck, status: int, body: str, seconds: float) -> str | None:
    """Why a response fails ``check`` (pure), or None."""
    if status != check.status:
        return f"status {status}, expected {check.status}"
    if check.contains and check.contains not in body:
        return f"the body does not contain {check.contains!r}"
    if check.max_latency is not None and seconds > check.max_latency:
        return f"took {seconds * 1000:.0f} ms, max_latency {check.max_latency * 1000:.0f} ms"
    return None


def run_smoke(checks: Iterable[SmokeCheck], port: int, emit: Emit) -> None:
    """Each check once against the slot on ``port``; the first failure raises, named."""
    with http_client("zdagent-smoke") as client:
        for check in checks:
            limit = check.max_latency or SMOKE_TIMEOUT
            headers = {"Host": check.host} if check.host else {}
            t0 = time.monotonic()
            try:
                r = client.request(check.method, slot_url(port, check.path), headers=headers,
                                   timeout=limit)
                seconds = time.monotonic() - t0
                problem = smoke_problem(check, r.status_code, r.text, seconds)
            except httpx.TimeoutException:
                problem = f"no answer within {limit:g}s"
            except httpx.HTTPError as e:
                problem = shorten(f"{type(e).__name__}: {e}", 200)
            if problem:
                raise SmokeCheckFailed(
                    f"smoke check \"{check.name}\" failed: {problem}",
                    hint="nothing was switched: the live slot kept serving; the candidate "
                         "was removed")
            emit(Event("log", f"smoke check \"{check.name}\": HTTP {r.status_code} in "
                              f"{seconds * 1000:.0f} ms", phase="smoke"))


# --- host hooks ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HookContext:
    """What a host hook is told, as ``ZDAGENT_*`` variables (empty when unknown)."""

    app: str
    version: str | None
    previous_version: str | None
    slot: str
    deploy_id: int
    performer: str
    reason: str | None = None

    def env(self, hook: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH") or os.defpath,
            "ZDAGENT_HOOK": hook,
            "ZDAGENT_APP": self.app,
            "ZDAGENT_VERSION": self.version or "",
            "ZDAGENT_PREVIOUS_VERSION": self.previous_version or "",
            "ZDAGENT_SLOT": self.slot,
            "ZDAGENT_DEPLOY_ID": str(self.deploy_id),
            "ZDAGENT_PERFORMER": self.performer,
            "ZDAGENT_REASON": self.reason or "",
        }


def _program(argv0: str) -> str | None:
    """The executable file a hook's argv[0] names (a bare name: found on PATH), or None."""
    exe = argv0 if "/" in argv0 else shutil.which(argv0, path=os.environ.get("PATH"))
    return exe if exe and os.path.isfile(exe) and os.access(exe, os.X_OK) else None


def _writable_by_others(exe: str) -> str | None:
    """Why another user could change what ``exe`` runs (it runs as the daemon's user, root):
    the file or its directory writable by group or others, or owned by someone else."""
    me = os.geteuid()
    dirs = {os.path.dirname(os.path.abspath(exe)), os.path.dirname(os.path.realpath(exe))}
    for path in (exe, *sorted(dirs)):
        st = os.stat(path)
        if st.st_mode & 0o022 or st.st_uid not in (0, me):
            return (f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}, "
                    f"uid {st.st_uid})")
    return None


def hook_problem(argv0: str) -> str | None:
    """Why the program ``argv0`` names cannot run as a hook, or None."""
    exe = _program(argv0)
    if exe is None:
        return "is not an executable file"
    unsafe = _writable_by_others(exe)
    return f"is unsafe to run: {unsafe}" if unsafe else None


def hook_problems(hooks: HooksConfig) -> list[str]:
    """``hooks.<name>: <program> <problem>`` for each host hook that would fail here
    (``zdagent config check`` warns: a missing pre_deploy would fail every deploy)."""
    return [f"hooks.{name}: {argv[0]} {problem}" for name in HOST_HOOKS
            if (argv := getattr(hooks, name)) and (problem := hook_problem(argv[0]))]


def run_host_hook(hook: str, argv: tuple[str, ...], ctx: HookContext, timeout: float,
                  emit: Emit) -> None:
    """Run one host hook to its end; raise HookFailed on a non-zero exit, a timeout (its
    process group is killed) or a program that is not there."""
    env = ctx.env(hook)
    exe = _program(argv[0])
    if exe is None:
        raise HookFailed(f"{hook} hook: {argv[0]} is not an executable file",
                         hint=f"fix hooks.{hook} (an absolute path, or relative to the "
                              "config's directory) and chmod +x it")
    unsafe = _writable_by_others(exe)
    if unsafe:
        raise HookFailed(f"{hook} hook: {argv[0]} is unsafe to run: {unsafe}",
                         hint="hooks run as the daemon's user: chown it to root and "
                              "`chmod go-w` it and its directory")
    # the program only: its arguments are how a hook gets a token or a webhook URL
    what = f"{hook} hook {argv[0]}"
    emit(Event("info", f"running the {what}"))
    out = Output(emit, hook)
    try:
        proc = subprocess.Popen([exe, *argv[1:]], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own group: killed as one
    except OSError as e:
        raise HookFailed(f"{what} could not start: {e.strerror or e}",
                         hint=f"check hooks.{hook}") from None
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    ended = False
    try:
        if follow(_read_all(proc.stdout), out, deadline,
                  exited=lambda: proc.poll() is not None):
            # its output ended; it may not have (it closed stdout and went on)
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            ended = True
    except subprocess.TimeoutExpired:
        pass
    finally:
        if not ended:  # the timeout, or Ctrl-C: its own session never sees the terminal's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
    if not ended:
        raise HookFailed(f"{what} did not finish within {timeout:g}s (hooks.timeout): "
                         f"killed{out.last_lines()}", hint=f"check hooks.{hook}")
    if code != 0:
        raise HookFailed(f"{what} failed with exit code {code}{out.last_lines()}",
                         hint=f"check hooks.{hook}")


def _read_all(pipe: BinaryIO) -> Iterator[bytes]:
    """The pipe's chunks; closed by the thread that reads it (closing it from another thread
    would wait for that read: a background child of the hook may hold it open)."""
    with pipe:
        yield from iter(lambda: pipe.read1(65536), b"")
