"""Secrets: the env file is read only when a container is created; a bad one stops the deploy
with exit 2 naming the key (the live slot untouched); an exposed one gets a warning; status
never reads it."""

from __future__ import annotations

import os


def with_env_file(app, env_file) -> None:
    text = app.config.read_text()
    app.config.write_text(text.replace("[container]\n", f'[container]\nenv_file = "{env_file}"\n',
                                       1))


def test_a_bad_env_file_fails_the_deploy_naming_the_key(make_app, tmp_path):
    app = make_app()
    env_file = tmp_path / "web.env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("ZDT_SECRET=first\n")
    with_env_file(app, env_file)
    app.ok("deploy", "v1", "--local")
    assert app.served_version() == "v1"

    env_file.write_bytes(b"ZDT_SECRET=\xff\xfe\n")  # not UTF-8
    p = app.cli("deploy", "v2", "--local")
    assert p.returncode == 2, p.stderr
    assert "container.env_file" in p.stderr and "not UTF-8" in p.stderr
    assert "Traceback" not in p.stderr and "\\xff" not in p.stderr
    assert app.served_version() == "v1"  # the live slot never noticed

    env_file.unlink()  # status and config check never read it
    st = app.cli("status", "--local")
    assert st.returncode == 0, st.stderr
    p = app.cli("deploy", "v2", "--local")
    assert p.returncode == 2 and "container.env_file" in p.stderr, p.stderr
    assert app.served_version() == "v1"


def test_an_env_file_others_can_read_gets_a_warning(make_app, tmp_path, docker_client):
    app = make_app()
    env_file = tmp_path / "web.env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write("ZDT_SECRET=s3cret-value\n")
    with_env_file(app, env_file)
    p = app.ok("deploy", "v1", "--local")
    assert f"container.env_file {env_file} is readable by its group or everyone" in p.stderr
    assert "s3cret" not in p.stderr + p.stdout
    env = docker_client.containers.get(f"{app.name}-blue").attrs["Config"]["Env"]
    assert "ZDT_SECRET=s3cret-value" in env
