"""Two apps behind one Nginx port, told apart by server_name: each switch is verified against
its own server block (zdagent sends the app's server_name as Host), not the default one."""

from __future__ import annotations

import uuid

import httpx

from benchmarks import harness
from benchmarks.harness import free_port
from tests import conftest
from tests.conftest import IMAGE_SOURCE, TEST_PREFIX


def test_two_apps_on_one_port_each_switch_verifies_its_own_server_block(
        tmp_path, nginx_server, docker_client, images):
    apps: list[conftest.TestApp] = []
    try:
        for host in ("a.test", "b.test"):  # a.test's site sorts first: the default server
            name = f"{TEST_PREFIX}{uuid.uuid4().hex[:6]}"
            cfg_dir = tmp_path / name
            cfg_dir.mkdir()
            blue, green = free_port(), free_port()
            config = cfg_dir / f"{name}.toml"
            config.write_text(harness.app_config(
                name, cfg_dir / "state", nginx_server, blue, green, IMAGE_SOURCE,
                f'server_name = "{host} www.{host}"', listen=nginx_server.port))
            app = conftest.TestApp(name, config, nginx_server, blue, green, nginx_server.port)
            sites = nginx_server.prefix / "sites"
            (sites / f"{host}.conf").write_text(app.ok("nginx", "render", "--site").stdout)
            (nginx_server.prefix / "zdagent" / f"{name}.upstream.conf").write_text(
                app.ok("nginx", "render", "--live", "none").stdout)
            apps.append(app)
        nginx_server.start()
        a, b = apps
        b.ok("deploy", "v2")  # verified through a.test's default server it would fail
        a.ok("deploy", "v1")
        b.ok("deploy", "v3")

        def version(host: str) -> str:
            r = httpx.get(f"{nginx_server.url}/cgi-bin/version", timeout=10,
                          headers={"Host": host, "Connection": "close"})
            assert r.status_code == 200, r.text
            return r.text.split()[0]

        assert version("a.test") == "v1"
        assert version("b.test") == "v3"
        assert version("www.b.test") == "v3"
    finally:
        for app in apps:
            for c in docker_client.containers.list(
                    all=True, filters={"label": f"zdagent.app={app.name}"}):
                c.remove(force=True)
