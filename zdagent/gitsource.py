"""Deploy from a git ref: resolve it to a commit, export that commit into a clean build dir.

The operator's working copy is never touched: ``git archive`` exports exactly the committed
tree into ``<state_dir>/builds/<app>/<commit>``. git runs as an argv list with
``--end-of-options`` after a ref that was already checked against a strict pattern.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from zdagent.errors import ConfigError, DeployFailed, EnvironmentProblem, shorten

# A subset of git-check-ref-format: branch/tag names, or a (short) commit sha.
REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,127}$")
SHORT = 12


def check_ref(ref: str) -> str:
    """Refuse anything git would not call a plain ref (and anything a shell would love)."""
    bad = (not REF_RE.fullmatch(ref) or ".." in ref or "//" in ref or ref.endswith(("/", ".",
                                                                                     ".lock"))
           or "/." in ref)
    if bad:
        raise ConfigError(f"invalid git ref {ref!r}",
                          hint="use a branch, tag or commit sha (letters, digits, . _ / -)")
    return ref


def _git(repo: Path, *args: str, binary: bool = False) -> subprocess.CompletedProcess:
    """Run git in ``repo``. The operator named this repository in the config, so it is
    trusted although another user (e.g. ``git``) owns it: safe.directory on the command
    line, which git honours as protected configuration (for the daemon and ``--local``)."""
    if shutil.which("git") is None:
        raise EnvironmentProblem("git is not installed", hint="apt-get install git")
    return subprocess.run(["git", "-c", f"safe.directory={repo}", "-C", str(repo), *args],
                          capture_output=True, timeout=300, check=False, text=not binary)


def fetch(repo: Path) -> None:
    """Update remote-tracking refs when the repository has remotes (no-op otherwise)."""
    remotes = _git(repo, "remote")
    if remotes.returncode == 0 and remotes.stdout.strip():
        p = _git(repo, "fetch", "--all", "--prune", "--tags", "--quiet")
        if p.returncode != 0:
            raise DeployFailed(f"git fetch in {repo} failed: {shorten(p.stderr)}",
                               hint="check the repository's remotes and credentials")


def resolve(repo: Path, ref: str) -> str:
    """The full commit sha for ``ref``; DeployFailed if none.

    A branch name means what was pushed: in a non-bare clone the remote-tracking
    ``refs/remotes/<remote>/<ref>`` (just fetched; ``origin``, or the only remote) wins over
    a local branch that may lag behind. A bare mirror has no remote-tracking refs; its
    fetched ``refs/heads`` answer. Tags and commit shas resolve as themselves.
    """
    check_ref(ref)
    remote = _main_remote(repo)
    tracking = [f"refs/remotes/{remote}/{ref}"] if remote else []
    for candidate in (*tracking, ref):
        p = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options",
                 f"{candidate}^{{commit}}")
        if p.returncode == 0 and p.stdout.strip():
            return p.stdout.strip()
    raise DeployFailed(f"git ref {ref!r} not found in {repo}",
                       hint="push the branch/tag first; nothing was started")


def _main_remote(repo: Path) -> str | None:
    """``origin`` if present, else the only remote; None without one (or with several)."""
    p = _git(repo, "remote")
    names = p.stdout.split() if p.returncode == 0 else []
    if "origin" in names:
        return "origin"
    return names[0] if len(names) == 1 else None


def export(repo: Path, commit: str, dest: Path) -> Path:
    """Write the committed tree of ``commit`` into ``dest`` (replaced if present)."""
    p = _git(repo, "archive", "--format=tar", commit, binary=True)
    if p.returncode != 0:
        raise DeployFailed(f"git archive {commit[:SHORT]} failed: "
                           f"{shorten(p.stderr.decode(errors='replace'))}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest

