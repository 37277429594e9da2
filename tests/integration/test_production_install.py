"""The production install: a wheel of this checkout, `pip install` with NO extras, in a venv of
Debian's /usr/bin/python3. Every verb answers --help, init works from the installed package
(its bundled unit), and the SSH gate refuses and allows as documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import require


def run(venv: Path, *argv: str, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "NO_COLOR": "1",
                "HOME": os.environ.get("HOME", "/root"), **(env or {})}
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False,
                          cwd="/")  # never pick up the checkout from the working directory


def commands(help_text: str) -> list[str]:
    """Command names listed under 'Commands:' in a typer/click help page."""
    names, inside = [], False
    for line in help_text.splitlines():
        if line.strip().startswith("Commands"):
            inside = True
        elif inside and (m := re.match(r"^\s{1,4}([a-z][a-z-]*)\s", line + " ")):
            names.append(m.group(1))
        elif inside and line and not line.startswith(" "):
            inside = False
    return names


def test_every_module_imports_from_the_installed_package(prod_venv):
    """A clean install imports every module (tests/unit/test_declared_dependencies.py checks
    the function-level imports statically), and it is the installed copy, not the checkout."""
    p = run(prod_venv, "python", "-c", (
        "import importlib, pathlib, pkgutil, zdagent\n"
        "for m in pkgutil.iter_modules(zdagent.__path__):\n"
        "    if m.name != '__main__':\n"
        "        importlib.import_module('zdagent.' + m.name)\n"
        "print(pathlib.Path(zdagent.__file__).parent)"))
    assert p.returncode == 0, p.stderr
    assert "site-packages" in p.stdout, p.stdout


def test_every_verb_answers_help(prod_venv):
    top = run(prod_venv, "zdagent", "--help")
    assert top.returncode == 0, top.stderr
    verbs = commands(top.stdout)
    assert {"deploy", "rollback", "status", "history", "ssh-gate", "init", "daemon",
            "config", "nginx"} <= set(verbs), verbs
    for verb in verbs:
        p = run(prod_venv, "zdagent", verb, "--help")
        assert p.returncode == 0, (verb, p.stderr)
        for sub in commands(p.stdout):
            q = run(prod_venv, "zdagent", verb, sub, "--help")
            assert q.returncode == 0, (verb, sub, q.stderr)
    d = run(prod_venv, "zdagentd", "--help")
    assert d.returncode == 0 and "--socket-group" in d.stdout, d.stderr
    ex = run(prod_venv, "zdagent", "config", "example")
    assert ex.returncode == 0 and "[app]" in ex.stdout
    rb = run(prod_venv, "zdagent", "runbook", "nginx-down")  # hints name it: it must ship
    assert rb.returncode == 0 and rb.stdout.startswith("## nginx-down\n"), rb.stderr


def test_init_from_the_installed_package(prod_venv, test_group, tmp_path):
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (systemd)")
    root = tmp_path / "root"
    p = run(prod_venv, "zdagent", "init", "web", "--root", str(root), "--group", test_group,
            "--image", "registry.local/web", "--listen", "127.0.0.1:8088")
    assert p.returncode == 0, p.stderr
    unit = root / "etc/systemd/system/zdagent.service"
    text = unit.read_text()
    assert f"ExecStart={prod_venv}/bin/zdagentd " in text
    assert f"--socket-group {test_group}" in text
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, check=False, timeout=60)
    assert v.returncode == 0 and not v.stdout.strip() and not v.stderr.strip(), v.stderr
    check = run(prod_venv, "zdagent", "config", "check", "--config",
                str(root / "etc/zdagent/apps/web.toml"))
    assert check.returncode == 0, check.stderr


def test_gate_refuses_and_allows_from_the_installed_package(prod_venv, make_app, tmp_path):
    app = make_app()
    apps = tmp_path / "apps"
    apps.mkdir()
    shutil.copy(app.config, apps / f"{app.name}.toml")
    log = tmp_path / "gate.log"

    def gate(command: str | None, *scope: str) -> subprocess.CompletedProcess:
        env = {"ZDAGENT_GATE_LOG": str(log), "SSH_CLIENT": "192.0.2.7 5555 22"}
        if command is not None:
            env["SSH_ORIGINAL_COMMAND"] = command
        return run(prod_venv, "zdagent", "ssh-gate", "--config-dir", str(apps), *scope,
                   env=env)

    refused = [None, "", "bash", f"deploy {app.name} v1; id", "deploy no-such-app v1",
               f"deploy {app.name} ../x"]
    for command in refused:
        p = gate(command)
        assert p.returncode == 2, (command, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: refused: "), p.stderr
    p = gate(f"deploy {app.name} v1", f"--apps={app.name}", "--verbs=status")
    assert p.returncode == 2 and "may not run 'deploy'" in p.stderr, p.stderr
    assert not (app.config.parent / "state" / "zdagent.db").exists()  # nothing ran

    p = gate(f"deploy {app.name} v1", f"--apps={app.name}")
    assert p.returncode == 0, p.stderr
    assert app.served_version() == "v1"
    p = gate(f"status {app.name} --json")
    assert p.returncode == 0 and f'"app": "{app.name}"' in p.stdout, p.stderr

    entries = log.read_text().splitlines()
    assert sum("refused:" in e for e in entries) == len(refused) + 1
    assert all("client=192.0.2.7" in e for e in entries)
    assert sum(e.endswith("exit=0") for e in entries) == 2
