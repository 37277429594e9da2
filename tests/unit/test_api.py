"""The control API against a real unix socket (no Docker): every request gets an answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from zdagent import api
from zdagent.errors import EnvironmentProblem

LIMITS = api.Limits(max_head=8192, max_body=4096, max_depth=16, read_timeout=0.5,
                    max_connections=3)


class ServerThread:
    """api.Server on a temp socket, its event loop in a thread."""

    def __init__(self, limits: api.Limits = LIMITS) -> None:
        self.dir = tempfile.mkdtemp(prefix="zdapi-")
        self.path = Path(self.dir) / "api.sock"
        self.loop = asyncio.new_event_loop()
        self.logs: list[str] = []
        self.gone_seen = threading.Event()
        self.server = api.Server(self.handle, limits, self.logs.append)
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.srv = self.loop.run_until_complete(
                asyncio.start_unix_server(self.server, path=str(self.path)))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    async def handle(self, req: api.Request) -> api.Reply:
        if req.path == "/echo":
            return {"method": req.method, "body": req.body, "user": req.peer.user,
                    "uid": req.peer.uid, "query": req.query}
        if req.path == "/docker-down":
            raise EnvironmentProblem("cannot reach the Docker engine", hint="start dockerd")
        if req.path == "/bug":
            raise KeyError("boom")
        if req.path == "/stream":
            return self._stream(req)
        if req.path == "/big":  # a status page of many apps, say
            return api.Raw(b"x" * (32 << 20), "text/plain")
        raise api.ApiError(404, "no such endpoint")

    async def _stream(self, req: api.Request) -> AsyncIterator[dict]:
        yield {"event": {"kind": "info", "message": "started"}}
        await req.gone.wait()  # a long operation; ends when the client goes away
        self.gone_seen.set()
        yield {"result": {}}

    def stop(self) -> None:
        async def shutdown() -> None:
            self.srv.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.path.unlink(missing_ok=True)
        os.rmdir(self.dir)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    s = ServerThread()
    yield s
    s.stop()


def connect(server: ServerThread) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(server.path))
    return s


def exchange(server: ServerThread, raw: bytes) -> tuple[int, dict]:
    """Send raw bytes, read the whole answer: (HTTP status, JSON body)."""
    with connect(server) as s:
        # The server may answer and close before it read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(raw)
        return parse(read_all(s))


def read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def parse(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: zdagent\r\nContent-Length: {len(body)}\r\n{extra}"
            "\r\n").encode() + body


def test_a_good_request_is_answered_with_the_callers_identity(server):
    status, body = exchange(server, post("/echo?limit=3", b'{"version": "v2"}'))
    assert status == 200
    assert body["body"] == {"version": "v2"} and body["query"] == {"limit": ["3"]}
    assert body["uid"] == os.getuid()  # from SO_PEERCRED, not from anything the client said
    assert body["user"] == pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.parametrize("raw", [
    b"garbage\r\n\r\n",
    b"\x00\xff\xfe binary \r\n\r\n",
    b"GET /echo HTTP/1.1\r\n\r\n",  # no Host
    b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nnot json",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n[1,2,3]",
])
def test_garbage_gets_400_with_a_json_error(server, raw):
    status, body = exchange(server, raw)
    assert status == 400
    assert body["error"]["exit_code"] == 2 and body["error"]["message"]


def test_a_70_kb_request_line_gets_431(server):
    status, body = exchange(server, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 431 and body["error"]["exit_code"] == 2


def test_too_many_headers_get_431(server):
    headers = "".join(f"X-H{i}: {'v' * 50}\r\n" for i in range(400))
    status, _ = exchange(server, f"GET /echo HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    assert status == 431


def test_an_oversize_body_gets_413_before_it_is_read(server):
    raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    status, body = exchange(server, raw)  # the megabyte is never sent: answered on the header
    assert status == 413 and "4096" in body["error"]["message"]


def test_an_oversize_chunked_body_gets_413(server):
    chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
    raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
    status, _ = exchange(server, raw)
    assert status == 413


def test_json_nested_4000_deep_gets_400(server):
    for body in (b"[" * 4000 + b"]" * 4000, b'{"a":' * 800 + b"1" + b"}" * 800):
        status, reply = exchange(server, post("/echo", body[:4096]))
        assert status in (400, 413)
        status, reply = exchange(server, post("/echo", b"[" * 4000))
        assert status == 400 and "nested" in reply["error"]["message"]


def test_json_depth_ignores_brackets_in_strings():
    assert api.json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[", "b": [1, {"c": 2}]}') == 3
    assert api.json_depth(b'{"a": "\\"[[["}') == 1


def test_a_client_that_sends_nothing_gets_408_and_is_let_go(server):
    with connect(server) as s:
        status, body = parse(read_all(s))  # the server speaks first, after read_timeout
    assert status == 408 and body["error"]["exit_code"] == 2


def test_a_slow_client_is_cut_at_the_read_timeout(server):
    with connect(server) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\n")  # then never finishes the headers
        status, _ = parse(read_all(s))
    assert status == 408


def test_a_client_that_never_reads_its_answer_is_let_go():
    """A whole reply (the status page's JSON, /metrics) to a client that sent its request and
    then stopped reading waited in drain() forever: max_connections such clients kept the
    listener full (503 for everybody) and the replies in memory."""
    import dataclasses

    s = ServerThread(dataclasses.replace(LIMITS, write_timeout=0.5))
    try:
        with connect(s) as c:
            c.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(200):  # ordered by state: the server is sending
                if s.server.open == 1:
                    break
                threading.Event().wait(0.01)
            for _ in range(1000):  # never read: the server gives up within write_timeout
                if s.server.open == 0:
                    break
                threading.Event().wait(0.01)
            assert s.server.open == 0
    finally:
        s.stop()


def test_connections_over_the_cap_get_503_at_once(server):
    idle = [connect(server) for _ in range(LIMITS.max_connections)]
    try:
        for _ in range(200):  # ordered by state: wait until the server counts them all
            if server.server.open == LIMITS.max_connections:
                break
            threading.Event().wait(0.01)
        assert server.server.open == LIMITS.max_connections
        status, body = exchange(server, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and body["error"]["exit_code"] == 3
        assert "too many connections" in body["error"]["message"]
    finally:
        for s in idle:
            s.close()
    for _ in range(500):  # the idle ones are let go: the server answers again
        if server.server.open == 0:
            break
        threading.Event().wait(0.01)
    status, _ = exchange(server, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200


def test_a_zdagent_error_keeps_its_exit_code(server):
    status, body = exchange(server, b"GET /docker-down HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503
    assert body["error"] == {"message": "cannot reach the Docker engine", "hint": "start dockerd",
                             "exit_code": 3}


def test_an_unexpected_error_is_answered_70_and_logged(server):
    status, body = exchange(server, b"GET /bug HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 500 and body["error"]["exit_code"] == 70
    assert any("KeyError" in line for line in server.logs)


def test_wrong_method_gets_405(server):
    status, _ = exchange(server, b"DELETE /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405


def test_the_client_raises_the_daemons_error_with_its_exit_code(server):
    from zdagent.client import DaemonClient, DaemonError

    client = DaemonClient(str(server.path))
    assert client.get("/echo")["method"] == "GET"
    with pytest.raises(DaemonError) as e:
        client.get("/docker-down")
    assert e.value.exit_code == 3 and e.value.hint == "start dockerd"


def test_a_client_leaving_mid_stream_is_noticed(server):
    s = connect(server)
    s.sendall(post("/stream", b"{}"))
    first = b""
    while b"started" not in first:
        first += s.recv(4096)
    assert b"application/x-ndjson" in first
    s.close()
    assert server.gone_seen.wait(10)
