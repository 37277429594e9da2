"""``zdagent logs`` and ``zdagent exec``: read a slot's logs, run a one-off command.

Both go through the Docker SDK (never the docker CLI). A one-off container runs the live
slot's image with the app's env (container.env + env_file, read at that moment only),
network, volumes, user, resource limits and version, without published ports, labelled
``zdagent.oneoff`` and without a ``zdagent.slot`` label so no slot lookup ever takes it for a
slot; it is removed afterwards whatever happens, and its exit code is passed through.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, BinaryIO

import docker.errors

from zdagent.config import read_env_file
from zdagent.errors import DeployFailed, UsageError, disk_full, is_disk_full, shorten
from zdagent.slots import LABEL, SLOTS, Slots, other, runtime_kwargs

SLOT_CHOICES = ("live", "standby", *SLOTS)
_DURATION = re.compile(r"^(\d{1,9})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float | None = None) -> int:
    """``10m`` / ``90s`` / ``2h`` / ``1d`` ago, or an ISO time, as a Unix timestamp."""
    m = _DURATION.fullmatch(value.strip())
    if m:
        return int((now if now is not None else time.time())
                   - int(m.group(1)) * _UNITS[m.group(2)])
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        raise UsageError(f"--since {value!r} is neither a duration nor a time",
                         hint="e.g. --since 10m, 90s, 2h, 1d or 2026-01-31T12:00") from None


def resolve_slot(which: str, live: str | None) -> str:
    """live/standby to blue/green, by the slot Nginx routes to."""
    if which not in SLOT_CHOICES:
        raise UsageError(f"--slot must be one of {', '.join(SLOT_CHOICES)}, got {which!r}")
    if which in SLOTS:
        return which
    if live is None:
        raise DeployFailed("nothing is deployed yet, so there is no live or standby slot",
                           hint="pass --slot blue or --slot green, or deploy first")
    return live if which == "live" else other(live)


def stream_logs(slots: Slots, slot: str, out: BinaryIO, *, follow: bool,
                since: int | None, tail: int | None) -> None:
    """Copy the slot's stdout+stderr (its container's, or its service's tasks') to ``out``
    as Docker delivers it."""
    chunks = slots.log_stream(slot, follow=follow, since=since, tail=tail)
    if chunks is None:
        raise DeployFailed(f"the {slot} slot has no {slots.UNIT}",
                           hint="`zdagent status` shows both slots")
    for chunk in chunks:
        out.write(chunk)
        out.flush()


# --- exec ---------------------------------------------------------------------------------


def oneoff_labels(app: str, version: str | None) -> dict[str, str]:
    """Ours (zdagent.app, for cleanup and audits) but never a slot: no zdagent.slot."""
    return {f"{LABEL}.app": app, f"{LABEL}.oneoff": "1",
            f"{LABEL}.version": version or "", f"{LABEL}.started-at": f"{time.time():.3f}"}


def oneoff_kwargs(slots: Slots, image_id: str, version: str | None, argv: Sequence[str],
                  *, tty: bool, stdin: bool = False) -> dict[str, Any]:
    """The arguments of ``containers.create`` (env read from env_file now).

    ``stdin``: keep the container's stdin open for us, closed when we close ours
    (``StdinOnce``, which the SDK sets for a non-detached create)."""
    cfg = slots.cfg
    env = dict(cfg.container.env)
    if cfg.container.env_file:
        env.update(read_env_file(cfg.container.env_file))
    env.update({"ZDAGENT_VERSION": version or "", "ZDAGENT_SLOT": "oneoff"})
    kwargs: dict[str, Any] = {
        "image": image_id, "command": list(argv),
        "name": f"{cfg.name}-oneoff-{uuid.uuid4().hex[:8]}",
        "labels": oneoff_labels(cfg.name, version), "environment": env,
        "tty": tty, "stdin_open": tty or stdin, "detach": not (tty or stdin),
        # network, volumes, user and limits as the slots; not the slots' command, entrypoint,
        # labels or log settings: the one-off runs argv and its output streams back here.
        **runtime_kwargs(cfg.container),
    }
    return kwargs


def forwards_stdin(fd: int) -> bool:
    """Without --tty, stdin is forwarded when it is a pipe, a file or /dev/null; never a
    terminal (interactive use is --tty) nor a closed descriptor."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return not os.isatty(fd)


@contextlib.contextmanager
def oneoff_container(slots: Slots, kwargs: dict[str, Any]) -> Iterator[Any]:
    """Create the one-off container and always remove it, also on Ctrl-C."""
    try:
        c = slots.client.containers.create(**kwargs)
    except docker.errors.ImageNotFound:
        raise DeployFailed("the live slot's image is gone",
                           hint="deploy again; `zdagent prune --dry-run` shows what is kept"
                           ) from None
    except docker.errors.APIError as e:
        if is_disk_full(e):
            raise disk_full("Docker refused the one-off container",
                            str(e.explanation or e)) from None
        raise DeployFailed(f"Docker refused the one-off container: {e.explanation or e}",
                           hint="check the command and the [container] settings (network, "
                                "volumes, user, memory, cpus)") from None
    try:
        yield c
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)


def run_oneoff(slots: Slots, live: str | None, argv: Sequence[str], *, tty: bool,
               stdout: BinaryIO, stderr: BinaryIO, stdin_fd: int = 0) -> int:
    """Run ``argv`` in a new container of the live slot's image; return its exit code."""
    if not argv:
        raise UsageError("no command given", hint="zdagent exec -- CMD [ARG...]")
    if live is None:
        raise DeployFailed("nothing is deployed yet, so there is no live image to run",
                           hint="deploy a version first")
    info = slots.info(live)
    if not info.image_id:
        raise DeployFailed(f"the live slot {live} has no image", hint="deploy again")
    stdin = not tty and forwards_stdin(stdin_fd)
    image = slots.oneoff_image(info.image_id)
    kwargs = oneoff_kwargs(slots, image, info.version, argv, tty=tty, stdin=stdin)
    with oneoff_container(slots, kwargs) as c:
        if tty:
            return _interactive(slots, c, stdin_fd)
        demux = Demux({1: stdout, 2: stderr})
        with _attach(slots, c, stdin=stdin) as sock:
            _pump(stdin_fd if stdin else None, sock, demux.feed)
        return int(c.wait().get("StatusCode", 1))


@contextlib.contextmanager
def _attach(slots: Slots, c: Any, *, stdin: bool) -> Iterator[socket.socket]:
    """The container's attach socket, opened before it starts so no output is missed."""
    sock = slots.client.api.attach_socket(c.id, params={
        "stdin": int(stdin), "stdout": 1, "stderr": 1, "stream": 1})
    try:
        try:
            c.start()
        except docker.errors.APIError as e:  # e.g. the command is not in the image
            why = shorten(str(e.explanation or e), 300)
            raise DeployFailed(f"the command could not start: {why}",
                               hint="check that the command exists in the image "
                                    "(`zdagent exec -- ls /bin`)") from None
        yield getattr(sock, "_sock", sock)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


class Demux:
    """Docker's multiplexed stream (no TTY): frames of an 8-byte header (stream 1 stdout or
    2 stderr, 3 zero bytes, big-endian size) and the payload, split anywhere across reads."""

    def __init__(self, outputs: dict[int, BinaryIO]) -> None:
        self.outputs = outputs
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 8:
            size = int.from_bytes(self.buffer[4:8], "big")
            if len(self.buffer) < 8 + size:
                return
            out = self.outputs.get(self.buffer[0], self.outputs[1])
            out.write(bytes(self.buffer[8:8 + size]))
            out.flush()
            del self.buffer[:8 + size]


def _interactive(slots: Slots, c: Any, fd: int) -> int:
    """A console: the local terminal in raw mode, bytes both ways over the attach socket."""
    import termios
    import tty as tty_mod

    api = slots.client.api
    interactive = os.isatty(fd)

    def resize(*_: object) -> None:
        with contextlib.suppress(OSError, docker.errors.APIError):
            size = os.get_terminal_size(fd)
            api.resize(c.id, height=size.lines, width=size.columns)

    out_fd = sys.stdout.fileno()
    with _attach(slots, c, stdin=True) as sock:
        saved = termios.tcgetattr(fd) if interactive else None
        old_handler = signal.signal(signal.SIGWINCH, resize) if interactive else None
        try:
            if interactive:
                resize()
                tty_mod.setraw(fd, termios.TCSANOW)  # keep what was typed ahead
            _pump(fd, sock, lambda data: _write_all(out_fd, data))
        finally:
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            if old_handler is not None:
                signal.signal(signal.SIGWINCH, old_handler)
    return int(c.wait().get("StatusCode", 1))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _pump(in_fd: int | None, sock: socket.socket, on_output: Callable[[bytes], None]) -> None:
    """Copy ``in_fd`` to the container and its output to ``on_output`` until the container
    closes its end. At EOF of ``in_fd`` the write side is shut (the container sees EOF).
    Input goes out without blocking, so a container that never reads its stdin cannot stall
    the copying of its output."""
    pending = b""
    reading = in_fd is not None
    shut = in_fd is None
    while True:
        readers: list[Any] = [sock]
        if reading and not pending:
            readers.append(in_fd)
        ready, writable, _ = select.select(readers, [sock] if pending else [], [])
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            on_output(data)
        if writable:
            try:
                pending = pending[_send_some(sock, pending):]
            except BlockingIOError:
                pass
            except OSError:  # the container closed its stdin: drop the rest
                pending, reading = b"", False
        if in_fd is not None and in_fd in ready:
            try:
                pending = os.read(in_fd, 65536)
            except OSError:
                pending = b""
            reading = bool(pending)
        if not reading and not pending and not shut:
            shut = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)


def _send_some(sock: socket.socket, data: bytes) -> int:
    """Send what fits now (select said the socket is writable), never waiting for more."""
    try:
        return sock.send(data, socket.MSG_DONTWAIT)
    except ValueError:  # a TLS socket (DOCKER_HOST=tcp:// with TLS) takes no flags
        return sock.send(data[:16384])
