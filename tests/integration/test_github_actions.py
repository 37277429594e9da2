"""The example GitHub Actions workflow, its own shell steps run against a real sshd, as the
README's non-root deploy user whose key is forced through the gate to the daemon."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "github-actions" / "deploy.yml"


def load() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_workflow_is_safe_by_construction():
    wf = load()
    assert wf["concurrency"]["cancel-in-progress"] is False
    assert wf["concurrency"]["group"]
    assert wf[True]["push"]["branches"] == ["main"]  # YAML 1.1 reads `on:` as True
    text = WORKFLOW.read_text()
    assert "StrictHostKeyChecking yes" in text and "StrictHostKeyChecking no" not in text
    for step in wf["jobs"]["deploy"]["steps"]:
        assert "${{" not in step.get("run", ""), "no expression interpolation inside scripts"


def run_steps(host, home: Path, app: str, sha: str) -> list[int]:
    """Run each step's script like the runner would (bash -e), with the secrets as env."""
    wf = load()
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "GITHUB_SHA": sha, "APP": app,
        "ZDAGENT_USER": host.deploy_user, "ZDAGENT_HOST": "127.0.0.1",
        "ZDAGENT_SSH_PORT": str(host.port),
        "DEPLOY_KEY": host.keys["deploy"].read_text(),
        "KNOWN_HOSTS": (host.ssh_dir / "known_hosts").read_text(),
    }
    codes, failed = [], False
    for step in wf["jobs"]["deploy"]["steps"]:
        if failed and step.get("if") != "always()":
            continue
        p = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True,
                           text=True, timeout=300, check=False)
        codes.append(p.returncode)
        failed = failed or p.returncode != 0
    return codes


def test_workflow_steps_deploy_through_the_gate(operator_host, tmp_path):
    host, app = operator_host, operator_host.test_app
    assert run_steps(host, tmp_path / "home1", app.name, "v1") == [0, 0, 0]
    assert run_steps(host, tmp_path / "home2", app.name, "v2") == [0, 0, 0]
    assert app.served_version() == "v2"
    # a failing deploy fails the job, and the status step still runs
    assert run_steps(host, tmp_path / "home3", app.name, "crash") == [0, 1, 0]
    assert app.served_version() == "v2"
    log = host.gate_log.read_text()  # every step went through the gate, as the deploy user
    assert log.count("allowed") == 6 and log.count("exit=1") == 1
