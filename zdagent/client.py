"""The CLI's side of the control socket, on the standard library alone.

The thin client (``zdagent.thin``) must start in milliseconds, so this speaks just enough
HTTP/1.1 over the unix socket with ``json`` and ``_socket``: ``http.client`` alone costs
~30 ms to import, and ``socket`` (the Python wrapper, which builds enums of every constant
and imports ``selectors``) ~5-10 ms that a unix-socket client does not need. Replies may
be close-delimited, sized by ``Content-Length`` or chunked. An ``{"error": …}`` reply becomes
a :class:`DaemonError` carrying the daemon's exit code.
"""

from __future__ import annotations

import _socket
import json

from zdagent.errors import EXIT_ENVIRONMENT, ZdError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

DEFAULT_SOCKET = "/run/zdagent/zdagent.sock"  # the one definition (thin CLI: no api)
READ_TIMEOUT = 30.0  # a status read collects Docker's and Nginx's facts: may take seconds
LOST_HINT = "check the daemon's log (journalctl -u zdagent)"
MAX_HEAD = 64 * 1024
MAX_LINE = 16 * 1024 * 1024  # one NDJSON line (an event or a result)


class DaemonError(ZdError):
    """The daemon answered with an error: its message, hint and exit code."""

    def __init__(self, message: str, hint: str = "", exit_code: int = 1) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code

    @classmethod
    def from_reply(cls, error: Any) -> DaemonError:
        if not isinstance(error, dict):
            return cls(f"the daemon answered an error: {error!r}", exit_code=EXIT_ENVIRONMENT)
        code = error.get("exit_code")
        return cls(str(error.get("message", "the daemon reported an error")),
                   str(error.get("hint") or ""), code if isinstance(code, int) else 1)


class _Reader:
    """Buffered reads from a socket: lines, exact sizes, or everything up to EOF."""

    def __init__(self, sock: _socket.socket, buf: bytes = b"") -> None:
        self.sock = sock
        self.buf = buf

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def line(self, limit: int) -> bytes | None:
        """The next line with its b"\\n", or what is left at EOF (None when nothing is)."""
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > limit:
                raise ValueError("the daemon's reply has an oversized line")
            if not self._fill():
                rest, self.buf = self.buf, b""
                return rest or None
        out, self.buf = self.buf[:end + 1], self.buf[end + 1:]
        return out

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ValueError("the daemon's reply was cut short")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def read_head(reader: _Reader) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a reply."""
    while b"\r\n\r\n" not in reader.buf:
        if len(reader.buf) > MAX_HEAD:
            raise ValueError("the daemon's reply head is too large")
        if not reader._fill():
            raise ValueError("the daemon closed the connection without a reply")
    head, _, reader.buf = reader.buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP reply from the daemon: {status_line[:80]!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers


def body_lines(reader: _Reader, headers: dict[str, str]) -> Iterator[bytes]:
    """The reply body, line by line, whatever its framing."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        yield from _split_lines(_chunks(reader))
        return
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ValueError(f"bad Content-Length from the daemon: {length!r}")
        yield from _split_lines(iter([reader.exact(int(length))]))
        return
    while (line := reader.line(MAX_LINE)) is not None:
        yield line


def _chunks(reader: _Reader) -> Iterator[bytes]:
    while True:
        size_line = reader.line(1024)
        if size_line is None:
            raise ValueError("the daemon's chunked reply was cut short")
        size_text = size_line.split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"bad chunk size from the daemon: {size_text[:20]!r}") from None
        if size == 0:
            return  # trailers, if any, are not needed
        yield reader.exact(size)
        reader.exact(2)  # the chunk's CRLF


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
        if len(pending) > MAX_LINE:
            raise ValueError("the daemon's reply has an oversized line")
    if pending:
        yield pending


class DaemonClient:
    """Requests to the daemon: one connection each (the daemon closes after replying)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def _request(self, method: str, url: str, body: dict[str, Any] | None,
                 timeout: float | None) -> tuple[int, dict[str, str], Iterator[bytes]]:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            data = json.dumps(body).encode() if body is not None else b""
            head = (f"{method} {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
            sock.sendall(head.encode() + data)
            sock.settimeout(timeout)
            reader = _Reader(sock)
            status, headers = read_head(reader)
        except BaseException:
            sock.close()
            raise
        return status, headers, _closing(sock, body_lines(reader, headers))

    def get(self, url: str, timeout: float | None = None) -> dict[str, Any]:
        """One JSON object; raises DaemonError for an error reply, ValueError for garbage."""
        status, _, lines = self._request("GET", url, None, timeout or self.timeout)
        raw = b"".join(lines)
        try:
            data = json.loads(raw)
        except ValueError:
            raise ValueError(f"the daemon's reply (HTTP {status}) is not JSON") from None
        if not isinstance(data, dict):
            raise ValueError(f"the daemon's reply (HTTP {status}) is not a JSON object")
        if "error" in data and (status >= 400 or len(data) == 1):
            raise DaemonError.from_reply(data["error"])
        return data

    def stream(self, url: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """NDJSON items of a streamed operation (no read timeout: a deploy may take long)."""
        status, _, lines = self._request("POST", url, body, None)
        for line in lines:
            if not line.strip():
                continue
            item = json.loads(line)
            if status >= 400 and isinstance(item, dict) and "error" in item:
                raise DaemonError.from_reply(item["error"])
            yield item


def _closing(sock: _socket.socket, lines: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from lines
    finally:
        sock.close()
