"""Slots join a shared Docker network by config and reach a shared service by its name
(what compose/shared-services.yml sets up for a database)."""

from __future__ import annotations

import uuid


def test_slots_join_the_configured_network_and_reach_shared_services(make_app, docker_client):
    net_name = f"zdt-net-{uuid.uuid4().hex[:6]}"
    network = docker_client.networks.create(net_name, labels={"zdagent.test": "1"})
    db = docker_client.containers.run("zdtest:v3", detach=True, name=f"{net_name}-db",
                                      labels={"zdagent.test": "1"})
    try:
        network.connect(db, aliases=["db"])  # the shared service, as compose would name it
        app = make_app()
        app.config.write_text(app.config.read_text().replace(
            "stop_timeout = 2", f'stop_timeout = 2\nnetwork = "{net_name}"'))
        app.ok("deploy", "v1")
        slot = docker_client.containers.get(f"{app.name}-blue")
        assert net_name in slot.attrs["NetworkSettings"]["Networks"]
        code, out = slot.exec_run(["/bin/busybox", "wget", "-qO-",
                                   "http://db:8080/cgi-bin/version"])
        assert code == 0 and out.decode().startswith("v3"), out
        assert app.served_version() == "v1"  # still published on 127.0.0.1 for Nginx
        slot.remove(force=True)
    finally:
        db.remove(force=True)
        network.remove()
