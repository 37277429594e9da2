"""Overlapping runs on one Docker engine (CI beside a developer's tests or a benchmark)
share one single-node swarm (benchmarks.harness.single_node_swarm): the run that finishes
first never leaves the swarm under the other's services; the last one out restores it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN = """
import sys, docker
from benchmarks.harness import single_node_swarm
client = docker.from_env()
with single_node_swarm(client):
    print("in", flush=True)
    sys.stdin.readline()
client.close()
"""


def test_the_first_run_to_finish_leaves_the_swarm_to_the_other(docker_client):
    from benchmarks import harness
    from benchmarks.harness import swarm_active

    before = swarm_active(docker_client)
    runs = [subprocess.Popen([sys.executable, "-c", RUN], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for _ in range(2)]
    try:
        first, second = runs
        assert first.stdout.readline() == "in\n"  # joined the swarm (or found it)
        assert second.stdout.readline() == "in\n"
        first.stdin.write("\n")
        first.stdin.close()
        assert first.wait(timeout=120) == 0
        assert swarm_active(docker_client)  # the second run's swarm is still there
        second.stdin.write("\n")
        second.stdin.close()
        assert second.wait(timeout=120) == 0
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.wait()
    fd = os.open(harness.SWARM_LOCK, os.O_RDWR)
    try:
        with contextlib.suppress(BlockingIOError):  # no other run uses it: as found
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert swarm_active(docker_client) == before
    finally:
        os.close(fd)
