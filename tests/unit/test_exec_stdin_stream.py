"""`zdagent exec` stdin: which stdin is forwarded, and the demultiplexing of Docker's
non-TTY attach stream (frames split anywhere across reads)."""

from __future__ import annotations

import io
import os
import pty

import pytest

from tests.unit.test_config import MINIMAL, write
from zdagent.config import load_config
from zdagent.oneoff import Demux, forwards_stdin, oneoff_kwargs
from zdagent.slots import Slots


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("chunk", [1, 3, 8, 9, 1000])
def test_demux_splits_stdout_and_stderr_whatever_the_chunks(chunk):
    out, err = io.BytesIO(), io.BytesIO()
    demux = Demux({1: out, 2: err})
    stream = (frame(1, b"hello ") + frame(2, b"oops\n") + frame(1, b"") +
              frame(1, b"world\n" * 50) + frame(2, b"x"))
    for i in range(0, len(stream), chunk):
        demux.feed(stream[i:i + chunk])
    assert out.getvalue() == b"hello " + b"world\n" * 50
    assert err.getvalue() == b"oops\nx"
    assert demux.buffer == bytearray()


def test_demux_waits_for_a_whole_frame():
    out = io.BytesIO()
    demux = Demux({1: out, 2: io.BytesIO()})
    demux.feed(frame(1, b"abcdef")[:-2])
    assert out.getvalue() == b""
    demux.feed(b"ef")
    assert out.getvalue() == b"abcdef"


def test_pipes_files_and_dev_null_are_forwarded_a_terminal_and_a_closed_fd_are_not(tmp_path):
    r, w = os.pipe()
    master, slave = pty.openpty()
    f = os.open(tmp_path / "input", os.O_RDONLY | os.O_CREAT)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        assert forwards_stdin(r) and forwards_stdin(f) and forwards_stdin(null)
        assert not forwards_stdin(slave)
    finally:
        for fd in (r, w, master, slave, f, null):
            os.close(fd)
    assert not forwards_stdin(r)  # closed now


def test_stdin_keeps_the_container_stdin_open_once(tmp_path):
    slots = Slots(load_config(write(tmp_path, MINIMAL)), client=None)
    piped = oneoff_kwargs(slots, "img", "v1", ["cat"], tty=False, stdin=True)
    assert (piped["stdin_open"], piped["tty"], piped["detach"]) == (True, False, False)
    plain = oneoff_kwargs(slots, "img", "v1", ["true"], tty=False)
    assert (plain["stdin_open"], plain["detach"]) == (False, True)
    console = oneoff_kwargs(slots, "img", "v1", ["sh"], tty=True)
    assert (console["stdin_open"], console["tty"], console["detach"]) == (True, True, False)
