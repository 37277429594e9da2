"""Follow Nginx's JSON access log of one app, through log rotation, into traffic windows.

``LogFollower.read`` is called on a timer: it returns the complete lines written since the
last call and never blocks (a regular file read of what is there, bounded per call). It
survives rotation: when the path names another file (logrotate's rename + ``nginx -s
reopen``) the rest of the old file is read first, then the new one from its start; when the
file shrank (``copytruncate``) it is read again from its start. A missing file is retried
on the next call. ``feed`` parses each line; a bad line is counted and skipped, never raised.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from zdagent.nginx import answering_upstream
from zdagent.traffic.windows import TrafficWindows

MAX_READ = 4 << 20  # bytes per call: one busy second of a busy site; the rest comes next call
MAX_LINE = 64 << 10  # a longer "line" is garbage: dropped, not buffered without bound
START_TAIL = 1 << 20  # on start, read back this much: the last minute's figures, not all history


class LogFollower:
    """The lines appended to ``path``; see the module doc for rotation."""

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = path
        self.fd: int | None = None
        self.ino: tuple[int, int] | None = None
        self.pos = 0
        self.partial = b""
        self.rotations = 0
        self.from_start = from_start  # the first open reads the whole file (tests)
        self.dropped = 0  # over-long lines
        self._skip_partial = False  # started mid-file: drop the first, partial line
        self._full = False  # the last read was cut at MAX_READ

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _open(self, *, first: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        st = os.fstat(fd)
        self.fd, self.ino = fd, (st.st_dev, st.st_ino)
        self.pos = 0
        if first and not self.from_start and st.st_size > START_TAIL:
            self.pos = st.st_size - START_TAIL
            self.partial = b""
            self._skip_partial = True
        return True

    def read(self) -> list[bytes]:
        """Complete new lines (without newline) since the last call."""
        if self.fd is None and not self._open(first=self.ino is None):
            return []
        lines = self._drain()
        try:
            st = os.stat(self.path)
        except OSError:
            return lines  # rotated away, not yet recreated: keep the old file, look again
        if (st.st_dev, st.st_ino) != self.ino:  # rotated: finish the old file, then the new
            lines += self._drain()
            if self._full:  # more of the old file is left: the new one waits for next call
                return lines
            self.close()
            self.partial = b""
            self.rotations += 1
            if self._open(first=False):
                lines += self._drain()
        elif st.st_size < self.pos:  # truncated in place
            self.pos, self.partial = 0, b""
            self.rotations += 1
            lines += self._drain()
        return lines

    def _drain(self) -> list[bytes]:
        assert self.fd is not None
        data = os.pread(self.fd, MAX_READ, self.pos)
        self._full = len(data) == MAX_READ  # there may be more right now
        if not data:
            return []
        self.pos += len(data)
        chunk = self.partial + data
        *lines, self.partial = chunk.split(b"\n")
        if self._skip_partial and lines:  # started mid-file: the first piece is half a line
            lines = lines[1:]
            self._skip_partial = False
        if len(self.partial) > MAX_LINE:
            self.partial = b""
            self.dropped += 1
        return lines


Try = tuple[int | None, float]  # (upstream port, its time in s) of a try that failed


def parse(line: bytes) -> tuple[float, int, float, int | None, bool, list[Try]] | None:
    """(end time, status, latency s, upstream port or None, zdagent's own request, failed
    tries) from one JSON line; None if bad.

    The latency is the upstream's (the app's own time) when Nginx reached one, else the whole
    request's. ``$upstream_addr``/``$upstream_response_time`` list every try ("a, b"): the
    last one answered; the ones before it failed (error or timeout: the backup took over).
    """
    try:
        rec = json.loads(line)
        when, status = float(rec["t"]), int(rec["s"])
        latency = float(rec["rt"])
        addrs = str(rec.get("ua") or "")
        times = str(rec.get("ut") or "")
        addr = answering_upstream(addrs)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None
    upstream = answering_upstream(times)
    if upstream and upstream != "-":  # "-": no upstream answered; keep the request time
        with contextlib.suppress(ValueError):
            latency = float(upstream)
    # json reads NaN, Infinity and 1e400, which no window can count (int(inf) raises)
    if not (math.isfinite(when) and math.isfinite(latency) and latency >= 0):
        return None
    return when, status, latency, _port(addr), rec.get("z") == "1", _failed(addrs, times)


def _port(addr: str | None) -> int | None:
    tail = addr.rsplit(":", 1)[1] if addr and ":" in addr else ""
    return int(tail) if tail.isdigit() else None


def _failed(addrs: str, times: str) -> list[Try]:
    """The tries before the last one of the last upstream group ("a, b : c" is a redirect
    from one group to another, not a retry)."""
    tries = addrs.rsplit(" : ", 1)[-1].split(", ")[:-1]
    if not tries:
        return []
    spent = times.rsplit(" : ", 1)[-1].split(", ")
    out: list[Try] = []
    for i, addr in enumerate(tries):
        try:
            took = float(spent[i])
        except (IndexError, ValueError):
            took = 0.0
        out.append((_port(addr.strip()), took if math.isfinite(took) and took >= 0 else 0.0))
    return out


def feed(windows: TrafficWindows, lines: list[bytes], slot_for_port: dict[int, str]) -> None:
    """Count each line into its slot's window; bad lines, foreign upstreams and zdagent's own
    requests are counted apart."""
    for line in lines:
        if not line.strip():
            continue
        windows.lines += 1
        rec = parse(line)
        if rec is None:
            windows.bad_lines += 1
            continue
        when, status, latency, port, own, failed = rec
        if own:  # the watchdog's probe through Nginx, a switch check: not the app's traffic
            windows.own += 1
            continue
        for try_port, took in failed:  # each failed try is a 5xx of its slot...
            try_slot = slot_for_port.get(try_port) if try_port is not None else None
            # ...unless Nginx tried the same server again (a kept-alive connection it had
            # closed: Nginx retries that without counting it as the server's failure)
            if try_slot is not None and try_port != port:
                windows.add(try_slot, when, 502, took)
        slot = slot_for_port.get(port) if port is not None else None
        if slot is None:
            windows.unrouted += 1
            continue
        windows.add(slot, when, status, latency)
