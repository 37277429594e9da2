"""container.* settings on real Docker + Nginx: what the slot and one-off containers get, the
app still serving, and a named volume written by v1 read by v2 after the switch."""

from __future__ import annotations

import contextlib
import json

import docker.errors
import pytest

from tests.conftest import labelled_containers, remove_container

pytestmark = pytest.mark.integration

MiB = 1024**2


def _container(client, app, slot: str):
    found = client.containers.list(all=True, filters={"label": [
        f"zdagent.app={app.name}", f"zdagent.slot={slot}"]})
    assert len(found) == 1, found
    return found[0]


def _cgroup_limits(app) -> tuple[int, int]:
    """(memory bytes, CPU quota per 100 ms period) as seen inside a one-off container,
    cgroup v2 or v1."""
    script = ("cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max 2>/dev/null || "
              "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
              "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")
    words = app.ok("exec", "--", "/bin/busybox", "sh", "-c", script).stdout.split()
    memory, quota, period = int(words[0]), int(words[1]), int(words[2])
    return memory, quota * 100_000 // period


def test_settings_reach_docker_and_a_named_volume_survives_the_switch(
        make_app, docker_client, tmp_path):
    app = make_app()
    volume = f"{app.name}-data"
    uploads = tmp_path / "uploads"
    uploads.mkdir(mode=0o755)
    (uploads / "hello.txt").write_text("from the host\n")
    (uploads / "hello.txt").chmod(0o644)
    text = app.config.read_text().replace("[container]\n", f"""[container]
volumes = ["{volume}:/www/data", "{uploads}:/www/up:ro"]
entrypoint = ["/bin/busybox", "env", "ZDT_ENTRY=1"]
command = ["/bin/busybox", "sh", "-c", "echo custom command; exec /bin/busybox sh /start.sh"]
memory = "64m"
cpus = 0.5
labels = {{ team = "web", "com.example.tier" = "front" }}
user = "1000:1000"
log_driver = "local"
log_options = {{ max-size = "1m", max-file = "2" }}
""", 1)
    app.config.write_text(text)
    try:
        app.ok("deploy", "v1", "--local")
        blue = _container(docker_client, app, "blue")
        host, cfg = blue.attrs["HostConfig"], blue.attrs["Config"]
        assert host["Memory"] == 64 * MiB
        assert host["NanoCpus"] == 500_000_000
        assert sorted(host["Binds"]) == sorted([f"{volume}:/www/data:rw",
                                                f"{uploads}:/www/up:ro"])
        assert host["LogConfig"] == {"Type": "local",
                                     "Config": {"max-size": "1m", "max-file": "2"}}
        assert cfg["User"] == "1000:1000"
        assert cfg["Entrypoint"] == ["/bin/busybox", "env", "ZDT_ENTRY=1"]
        assert cfg["Cmd"][-1] == "echo custom command; exec /bin/busybox sh /start.sh"
        assert cfg["Labels"]["team"] == "web" and cfg["Labels"]["com.example.tier"] == "front"
        assert cfg["Labels"]["zdagent.slot"] == "blue"
        assert {m["Type"]: m["RW"] for m in blue.attrs["Mounts"]} == {"volume": True,
                                                                        "bind": False}
        # it serves, as user 1000, with the settings
        assert app.served_version() == "v1"
        assert app.get("/up/hello.txt").text == "from the host\n"
        assert "custom command" in app.ok("logs").stdout  # `zdagent logs` reads the local driver
        top = blue.top(ps_args="-o pid,uid")
        assert {p[1] for p in top["Processes"]} == {"1000"}, top

        # v1 writes into the named volume (the volume's root is root's: write as root) ...
        blue.exec_run(["/bin/busybox", "sh", "-c", "echo written by v1 > /www/data/note.txt"],
                      user="0")
        # ... v2 reads it through Nginx after the switch
        app.ok("deploy", "v2", "--local")
        assert app.served_version() == "v2"
        assert app.get("/data/note.txt").text == "written by v1\n"
        green = _container(docker_client, app, "green")
        assert green.attrs["HostConfig"]["Memory"] == 64 * MiB
        assert f"{volume}:/www/data:rw" in green.attrs["HostConfig"]["Binds"]
        status = json.loads(app.ok("status", "--json", "--local").stdout)
        assert status["slots"]["green"]["version"] == "v2"

        # a one-off gets the volume, the user and the limits (seen from inside)
        assert app.ok("exec", "--", "/bin/busybox", "cat", "/www/data/note.txt").stdout \
            == "written by v1\n"
        assert app.ok("exec", "--", "/bin/busybox", "id", "-u").stdout.strip() == "1000"
        assert _cgroup_limits(app) == (64 * MiB, 50_000)
    finally:
        for cid, _, _ in labelled_containers(docker_client, f"zdagent.app={app.name}"):
            remove_container(docker_client, cid)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(volume).remove()


def test_a_setting_docker_refuses_fails_before_the_switch(make_app, docker_client):
    app = make_app()
    app.ok("deploy", "v1", "--local")
    app.config.write_text(app.config.read_text().replace(
        "[container]\n", "[container]\ncpus = 512\n", 1))  # valid, but more than this host has
    p = app.cli("deploy", "v2", "--local")
    assert p.returncode == 1, p.stderr
    assert "Range of CPUs" in p.stderr and "hint:" in p.stderr and "Traceback" not in p.stderr
    assert app.served_version() == "v1"
