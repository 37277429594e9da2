"""app.backend = "swarm": config rules, the service spec as data, doctor's swarm verdicts."""

from __future__ import annotations

import pytest

from tests.unit.test_config import MINIMAL, error_of, write
from zdagent import doctor as d
from zdagent.config import load_config
from zdagent.services import (
    ServiceSlots,
    by_digest,
    local_image_ids,
    service_kwargs,
    short_of,
    slot_backend,
    spent_tasks,
)
from zdagent.slots import SlotInfo, Slots

SWARM = MINIMAL.replace('state_dir = "state"', 'state_dir = "state"\nbackend = "swarm"')


def swarm_cfg(tmp_path, section: str = "", base: str = SWARM):
    return load_config(write(tmp_path, base + ("\n[swarm]\n" + section if section else "")))


def test_swarm_defaults_and_keys(tmp_path):
    cfg = swarm_cfg(tmp_path, 'replicas = 3\npublish_mode = "host"\nmin_healthy = 2\n'
                              'constraints = ["node.labels.web == true"]\n'
                              'secrets = ["db_password"]\nrestart_delay = 1.5\n'
                              'healthcheck = ["/bin/busybox", "wget", "-q", "http://x/"]')
    assert cfg.backend == "swarm"
    s = cfg.swarm
    assert (s.replicas, s.publish_mode, s.floor, s.restart_delay) == (3, "host", 2, 1.5)
    assert s.constraints == ("node.labels.web == true",) and s.secrets == ("db_password",)
    assert load_config(write(tmp_path, MINIMAL)).backend == "container"
    assert swarm_cfg(tmp_path, "replicas = 4").swarm.floor == 4  # min_healthy 0: all


def test_a_swarm_app_refuses_a_local_build_with_a_hint(tmp_path):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    text = SWARM.replace('[source]\nimage = "registry.local/web"',
                         '[source.build]\ncontext = "ctx"')
    from zdagent.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert "needs source.image" in e.value.message and "pulls the image" in e.value.message
    assert "docker push" in (e.value.hint or "")
    # the same build source is fine for the container backend
    load_config(write(tmp_path, text.replace('backend = "swarm"\n', "")))


@pytest.mark.parametrize(("section", "key", "fragment"), [
    ("replicas = 0", "swarm.replicas", "between 1 and 1000"),
    ('publish_mode = "mesh"', "swarm.publish_mode", "ingress"),
    ("replicas = 2\nmin_healthy = 3", "swarm.min_healthy", "at most swarm.replicas (2)"),
    ('constraints = ["rm -rf /"]', "swarm.constraints", "placement constraint"),
    ('secrets = ["a b"]', "swarm.secrets", "secret name"),
])
def test_swarm_errors_name_the_key(tmp_path, section, key, fragment):
    msg = error_of(tmp_path, SWARM + "\n[swarm]\n" + section)
    assert key in msg and fragment in msg, msg


def test_release_hook_is_refused_only_beside_swarm_secrets(tmp_path):
    """A one-off container gets no Docker secrets: a release command there would run
    without what the tasks have."""
    release = '\n[hooks]\nrelease = ["migrate"]\n'
    assert swarm_cfg(tmp_path, base=SWARM + release).hooks.release == ("migrate",)
    msg = error_of(tmp_path, SWARM + release + '\n[swarm]\nsecrets = ["db"]\n')
    assert "hooks.release" in msg and "swarm.secrets" in msg and "tasks only" in msg, msg


@pytest.mark.parametrize(("image", "ref"), [
    ("127.0.0.1:5000/web:v2@sha256:ab", "127.0.0.1:5000/web@sha256:ab"),
    ("reg/team/web@sha256:ab", "reg/team/web@sha256:ab"),
    ("web:v2@sha256:ab", "web@sha256:ab"),
    ("sha256:0123", "sha256:0123"),  # an image id: as it is
])
def test_a_one_off_pulls_the_digest_alone(image, ref):
    assert by_digest(image) == ref


def test_retention_maps_digest_refs_to_this_hosts_images():
    images = [{"Id": "sha256:1", "RepoDigests": ["reg:5000/web@sha256:aa"]},
              {"Id": "sha256:2", "RepoDigests": ["other/x@sha256:bb", "reg:5000/web@sha256:bb"]},
              {"Id": "sha256:3", "RepoDigests": None}]
    refs = ["reg:5000/web:v1@sha256:aa", "reg:5000/web:v2@sha256:bb",
            "reg:5000/web:v3@sha256:cc"]  # v3 was never pulled here: another node has it
    assert local_image_ids(refs, images) == {"reg:5000/web:v1@sha256:aa": "sha256:1",
                                             "reg:5000/web:v2@sha256:bb": "sha256:2"}
    assert Slots.local_ids(None, ["sha256:9"], images) == {"sha256:9": "sha256:9"}  # type: ignore[arg-type]


def test_only_this_apps_stopped_task_containers_are_spent():
    task = {"zdagent.app": "web", "com.docker.swarm.task.id": "t"}
    containers = [
        {"Id": "c1", "ImageID": "sha256:1", "Labels": task, "State": "exited"},
        {"Id": "c2", "ImageID": "sha256:2", "Labels": task, "State": "running"},
        {"Id": "c3", "ImageID": "sha256:1", "Labels": {**task, "zdagent.app": "api"},
         "State": "exited"},  # another app's
        {"Id": "c4", "ImageID": "sha256:1", "Labels": {"zdagent.app": "web"},
         "State": "exited"},  # a container of ours that is no task (a one-off, a slot)
        {"Id": "c5", "ImageID": "sha256:3", "Labels": task, "State": "dead"},
        {"Id": "c6", "ImageID": "sha256:3", "Labels": task, "State": "created"},  # starting
    ]
    assert spent_tasks(containers, "web") == {"c1": "sha256:1", "c5": "sha256:3"}
    assert Slots.spent(None, containers) == {}  # type: ignore[arg-type]


def test_service_spec_as_data(tmp_path):
    cfg = swarm_cfg(tmp_path, 'replicas = 3\nhealthcheck = ["/bin/check"]\n'
                              'constraints = ["node.role == worker"]',
                    base=SWARM.replace("port = 8080", 'port = 8080\nmemory = "64m"\ncpus = 0.5'
                                       '\nuser = "1000"\ncommand = ["serve"]'))
    kw = service_kwargs(cfg, "green", "reg/web:v2@sha256:ab", "v2", 7, {"A": "1"}, [])
    assert kw["name"] == "web-green" and kw["image"] == "reg/web:v2@sha256:ab"
    assert kw["labels"]["zdagent.app"] == "web" and kw["labels"]["zdagent.slot"] == "green"
    assert kw["labels"]["zdagent.deploy-id"] == "7"
    assert kw["container_labels"]["zdagent.slot"] == "green"
    assert sorted(kw["env"]) == ["A=1", "ZDAGENT_SLOT=green", "ZDAGENT_VERSION=v2"]
    assert kw["mode"].replicas == 3
    (port,) = kw["endpoint_spec"]["Ports"]
    assert port == {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 18002,
                    "PublishMode": "ingress"}
    assert kw["update_config"]["Order"] == "start-first"
    assert kw["healthcheck"]["Test"] == ["CMD", "/bin/check"]
    assert kw["resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20}
    assert kw["constraints"] == ["node.role == worker"] and kw["maxreplicas"] == 0
    assert kw["user"] == "1000" and kw["args"] == ["serve"]
    host = service_kwargs(swarm_cfg(tmp_path, 'publish_mode = "host"'), "blue", "i", "v1", 1,
                          {}, [])
    # host mode: the old task holds the port, so it goes first; one task per node
    assert host["update_config"]["Order"] == "stop-first" and host["maxreplicas"] == 1
    assert "healthcheck" not in host  # none configured: the image's own HEALTHCHECK


def test_the_backend_is_chosen_once_from_config(tmp_path):
    assert type(slot_backend(swarm_cfg(tmp_path), None)) is ServiceSlots
    assert type(slot_backend(load_config(write(tmp_path, MINIMAL)), None)) is Slots


def test_tasks_per_slot_in_words():
    assert SlotInfo("blue", 1, "running", tasks_running=2, tasks_desired=3).tasks == \
        "2/3 running"
    info = SlotInfo("blue", 1, "running")
    assert info.tasks is None and info.to_dict()["tasks"] is None


RULES = """-N DOCKER-USER
-A DOCKER-USER -i eth0 -p tcp -m conntrack --ctorigdstport 18001:18002 --ctdir ORIGINAL -j DROP
-A DOCKER-USER -j RETURN
"""


def test_firewall_rules_are_read_for_the_slot_ports():
    assert d.firewalled(RULES, 18001) and d.firewalled(RULES, 18002)
    assert not d.firewalled(RULES, 18003)
    assert d.firewalled("-A DOCKER-USER -p tcp --dport 9000 -j REJECT", 9000)
    assert not d.firewalled("-A DOCKER-USER -p tcp --dport 9000 -j ACCEPT", 9000)


# Lines as `iptables -S DOCKER-USER` (iptables 1.8.9, nf_tables) prints them.
@pytest.mark.parametrize("rules, port, dropped", [
    # appended after Docker's own unconditional RETURN: never reached
    ("-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n"
     "-A DOCKER-USER -p tcp -m tcp --dport 18001 -j DROP", 18001, False),
    # negated: drops every port but this one
    ("-A DOCKER-USER -p tcp -m tcp ! --dport 18001 -j DROP", 18001, False),
    ("-A DOCKER-USER -p tcp -m conntrack ! --ctorigdstport 18001 --ctdir ORIGINAL -j DROP",
     18001, False),
    # another protocol: the slot's TCP port stays open
    ("-A DOCKER-USER -p udp -m udp --dport 18001 -j DROP", 18001, False),
    ("-A DOCKER-USER ! -p tcp -m tcp --dport 18001 -j DROP", 18001, False),
    # accepted before the drop
    ("-A DOCKER-USER -p tcp -m tcp --dport 18001 -j ACCEPT\n"
     "-A DOCKER-USER -p tcp -m tcp --dport 18001 -j DROP", 18001, False),
    # multiport lists and ranges
    ("-A DOCKER-USER -p tcp -m multiport --dports 18001,18005:18006 -j DROP", 18006, True),
    ("-A DOCKER-USER -p tcp -m multiport --dports 18001,18005:18006 -j DROP", 18003, False),
    # the rule doctor's hint gives, inserted before RETURN
    (RULES, 18002, True),
])
def test_firewall_rules_count_only_a_drop_that_applies(rules, port, dropped):
    assert d.firewalled(rules, port) is dropped


def test_swarm_verdicts(tmp_path):
    cfg = swarm_cfg(tmp_path)
    good = d.swarm_verdicts(cfg, d.SwarmFacts("active", True, True, RULES))
    assert [r.status for r in good] == [d.OK, d.OK]
    assert "every interface" in good[1].message
    off = d.swarm_verdicts(cfg, d.SwarmFacts("inactive", False, True, RULES))
    assert off[0].status == d.FAIL and "docker swarm init" in off[0].hint
    worker = d.swarm_verdicts(cfg, d.SwarmFacts("active", False, True, RULES))
    assert worker[0].status == d.FAIL and "manager" in worker[0].hint
    no_mesh = d.swarm_verdicts(cfg, d.SwarmFacts("active", True, False, RULES))
    assert no_mesh[1].status == d.FAIL and "IPVS" in no_mesh[1].message
    host = swarm_cfg(tmp_path, 'publish_mode = "host"')
    assert all(r.status == d.OK for r in d.swarm_verdicts(host, d.SwarmFacts(
        "active", True, False, RULES)))  # host mode needs no mesh
    open_ = d.swarm_verdicts(cfg, d.SwarmFacts("active", True, True, "-N DOCKER-USER\n"))
    assert open_[-1].status == d.WARN and "18001/18002" in open_[-1].message
    assert "--ctorigdstport 18001:18002" in open_[-1].hint
    unread = d.swarm_verdicts(cfg, d.SwarmFacts("active", True, True, None))
    assert "cannot read" in unread[-1].message


def test_the_watchdog_floor_counts_running_tasks():
    assert short_of("green", (3, 3), 2) is None
    assert short_of("green", (2, 3), 2) is None
    assert short_of("green", (1, 3), 2) == "green has 1/3 tasks running (min_healthy 2)"
    assert short_of("green", None, 1) == "green has no service"


def test_host_mode_needs_a_node_per_replica(tmp_path):
    cfg = swarm_cfg(tmp_path, 'publish_mode = "host"\nreplicas = 3')
    few = d.swarm_verdicts(cfg, d.SwarmFacts("active", True, False, RULES, nodes=1))
    (placement,) = [r for r in few if r.check.endswith("/placement")]
    assert placement.status == d.FAIL and "swarm has 1 ready" in placement.message
    enough = d.swarm_verdicts(cfg, d.SwarmFacts("active", True, False, RULES, nodes=3))
    assert all(r.status == d.OK for r in enough)


def test_the_firewall_hint_never_drops_ports_between_the_slots(tmp_path):
    text = SWARM.replace("green_port = 18002", "green_port = 18010")
    cfg = load_config(write(tmp_path, text))
    (exposure,) = [r for r in d.swarm_verdicts(cfg, d.SwarmFacts("active", True, True, ""))
                   if r.check.endswith("/exposure")]
    assert "--ctorigdstport 18001 " in exposure.hint and "--ctorigdstport 18010 " in exposure.hint
    assert "18001:18010" not in exposure.hint


TASK_PORTS = 'replicas = 3\npublish_mode = "task-ports"\nmin_healthy = 2'


def test_task_ports_spec_lets_docker_pick_each_tasks_port_on_this_node(tmp_path):
    cfg = swarm_cfg(tmp_path, TASK_PORTS)
    assert cfg.swarm.task_ports
    assert not swarm_cfg(tmp_path, 'publish_mode = "host"').swarm.task_ports
    kw = service_kwargs(cfg, "green", "i", "v2", 1, {}, [], "node-7")
    (port,) = kw["endpoint_spec"]["Ports"]
    assert port == {"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}  # no port
    assert kw["constraints"] == ["node.id == node-7"]  # next to Nginx, which dials 127.0.0.1
    # every task has a port of its own: new tasks start first, several per node
    assert kw["update_config"]["Order"] == "start-first" and kw["maxreplicas"] == 0


def test_task_ports_refuse_a_custom_template_that_renders_one_port(tmp_path):
    (tmp_path / "up.j2").write_text("upstream {{ upstream }} { server 127.0.0.1:{{ live_port }}; }")
    text = SWARM.replace("[nginx]", '[nginx]\nupstream_template = "up.j2"')
    msg = error_of(tmp_path, text + "\n[swarm]\n" + TASK_PORTS)
    assert "nginx.upstream_template" in msg and "live_ports" in msg, msg
    load_config(write(tmp_path, text))  # the slot-port modes need no loop


TASKS = [  # what `service.tasks()` returns, trimmed to what zdagent reads
    {"DesiredState": "running", "Status": {"State": "running",
                                           "ContainerStatus": {"ContainerID": "a"}}},
    {"DesiredState": "running", "Status": {"State": "starting",
                                           "ContainerStatus": {"ContainerID": "b"}}},
    {"DesiredState": "shutdown", "Status": {"State": "running",
                                            "ContainerStatus": {"ContainerID": "c"}}},
    {"DesiredState": "running", "Status": {"State": "running"}},  # no container yet
]


def test_only_running_tasks_meant_to_run_are_served():
    from zdagent.services import running_containers

    assert running_containers(TASKS) == ["a"]


def test_a_tasks_port_is_its_ipv4_binding():
    """Docker 20.10 gave a dynamic port's IPv6 binding another number (seen here:
    0.0.0.0:32972 and [::]:32970); Nginx dials 127.0.0.1."""
    from zdagent.services import ipv4_host_port

    attrs = {"NetworkSettings": {"Ports": {"8080/tcp": [
        {"HostIp": "::", "HostPort": "32970"}, {"HostIp": "0.0.0.0", "HostPort": "32972"}]}}}
    assert ipv4_host_port(attrs, 8080) == 32972
    assert ipv4_host_port(attrs, 9090) is None
    assert ipv4_host_port({"NetworkSettings": {"Ports": {}}}, 8080) is None  # stopped


def test_task_ports_exposure_names_the_ephemeral_range(tmp_path):
    cfg = swarm_cfg(tmp_path, TASK_PORTS)
    facts = d.SwarmFacts("active", True, False, RULES, nodes=1, ephemeral=(32768, 60999))
    (exposure,) = [r for r in d.swarm_verdicts(cfg, facts) if r.check.endswith("/exposure")]
    assert exposure.status == d.WARN and "32768-60999" in exposure.message, exposure
    assert "--ctorigdstport 32768:60999" in exposure.hint
    ok = RULES.replace("18001:18002", "32768:60999")
    (exposure,) = [r for r in d.swarm_verdicts(cfg, d.SwarmFacts(
        "active", True, False, ok, nodes=1)) if r.check.endswith("/exposure")]
    assert exposure.status == d.OK
    # one node is enough, and no mesh is needed
    assert [r.check for r in d.swarm_verdicts(cfg, facts) if r.status == d.FAIL] == []
