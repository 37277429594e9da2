"""Deploy from a git ref: each commit serves its own content; a missing ref starts nothing."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import make_context


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def commit_content(repo, text: str) -> str:
    (repo / "www" / "content.txt").write_text(text + "\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", text)
    return git(repo, "rev-parse", "HEAD")


def test_each_commit_serves_its_content_and_a_missing_ref_fails_cleanly(make_app, tmp_path,
                                                                        docker_client):
    repo = make_context(tmp_path / "repo")
    git(repo, "init", "-q", "-b", "main")
    first = commit_content(repo, "first")
    git(repo, "tag", "v1.0")
    second = commit_content(repo, "second")
    (repo / "www" / "content.txt").write_text("uncommitted work in the operator's copy\n")

    app = make_app(source=f'[source.git]\nrepo = "{repo}"\ntag = "zdtest-git"')
    p = app.ok("deploy", "v1.0")
    assert f"git ref v1.0 is commit {first}" in p.stderr
    assert app.get("/content.txt").text == "first\n"
    assert app.served_version() == first[:12]  # the image is tagged with the commit

    app.ok("deploy", "main")
    assert app.get("/content.txt").text == "second\n"  # the commit, not the working copy
    assert docker_client.images.get(f"zdtest-git:{second[:12]}")

    p = app.cli("deploy", "no-such-branch")
    assert p.returncode == 1
    assert "git ref 'no-such-branch' not found" in p.stderr
    assert app.get("/content.txt").text == "second\n"
    rows = json.loads(app.ok("history", "--json").stdout)
    assert [r["source_ref"] for r in rows] == [f"main@{second}", f"v1.0@{first}"]
    assert rows[0]["version"] == second[:12]

    bad = app.cli("deploy", "../etc")
    assert bad.returncode == 2 and "invalid git ref" in bad.stderr
    # the operator's working copy is untouched
    assert "uncommitted" in (repo / "www" / "content.txt").read_text()
    for tag in (first[:12], second[:12]):
        docker_client.images.remove(f"zdtest-git:{tag}", force=True)


def test_after_a_fetch_a_branch_is_the_remotes_branch_in_a_clone_and_a_mirror(make_app,
                                                                             tmp_path,
                                                                             docker_client):
    """A non-bare clone whose local main lags behind: `deploy main` builds the pushed main.
    A bare mirror (refs/heads updated by the fetch) keeps working."""
    origin = make_context(tmp_path / "origin")
    git(origin, "init", "-q", "-b", "main")
    old = commit_content(origin, "old")
    clone, mirror = tmp_path / "clone", tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    subprocess.run(["git", "clone", "-q", "--mirror", str(origin), str(mirror)], check=True)
    new = commit_content(origin, "new")  # pushed after the clone: the clone's main is stale
    assert git(clone, "rev-parse", "main") == old

    app = make_app(source=f'[source.git]\nrepo = "{clone}"\ntag = "zdtest-git"')
    p = app.ok("deploy", "main")
    assert f"git ref main is commit {new}" in p.stderr
    assert app.get("/content.txt").text == "new\n"
    assert git(clone, "rev-parse", "main") == old  # the operator's branch is not moved

    newest = commit_content(origin, "newest")
    app.config.write_text(app.config.read_text().replace(f'repo = "{clone}"',
                                                         f'repo = "{mirror}"'))
    p = app.ok("deploy", "main")
    assert f"git ref main is commit {newest}" in p.stderr
    assert app.get("/content.txt").text == "newest\n"
    for commit in (new, newest):
        docker_client.images.remove(f"zdtest-git:{commit[:12]}", force=True)


def test_a_repository_owned_by_another_user_is_trusted(tmp_path):
    """The configured repo may belong to a `git` user: git's ownership check must not stop
    zdagent (root, the daemon or --local), which names exactly that repo."""
    import os
    import shutil

    from zdagent import gitsource

    repo = tmp_path / "owned"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "Dockerfile").write_text("FROM scratch\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    head = git(repo, "rev-parse", "HEAD")
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, 65534, 65534)  # nobody
    plain = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                           text=True, check=False)
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr  # the check is real
    gitsource.fetch(repo)
    assert gitsource.resolve(repo, "main") == head
    gitsource.export(repo, head, tmp_path / "export")
    assert (tmp_path / "export" / "Dockerfile").read_text() == "FROM scratch\n"
    shutil.rmtree(tmp_path / "export")
