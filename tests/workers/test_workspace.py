"""Workspaces: a git repository per conversation, started from the channel's repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from workers.workspace import commit_run, prepare


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def test_a_workspace_starts_from_the_channels_repository_and_commits_each_run(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    git(source, "init", "-q")
    (source / "README.md").write_text("# Service\n")
    git(source, "add", "-A")
    git(source, "commit", "-qm", "initial")

    workspace = tmp_path / "workspaces" / "7"
    prepare(workspace, str(source))
    assert (workspace / "README.md").read_text() == "# Service\n"
    prepare(workspace, str(source))  # a second run reuses it

    (workspace / "README.md").write_text("# Service\n\nNow documented.\n")
    (workspace / "docs.md").write_text("docs\n")
    changed = commit_run(workspace, 3, "document the service")
    assert sorted((c.path, c.size) for c in changed.files) == [("README.md", 27), ("docs.md", 5)]
    assert git(workspace, "log", "-1", "--format=%s").strip() == "Run 3: document the service"
    assert commit_run(workspace, 4, "nothing").files == []  # a run that changed nothing commits nothing


def test_an_empty_workspace_is_a_repository_from_the_start(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    prepare(workspace, None)
    assert git(workspace, "log", "--format=%s").strip() == "Workspace created by Threadwork"


def test_a_symlink_fifo_or_symlinked_folder_is_refused_never_read(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    prepare(workspace, None)
    (workspace / "ok.txt").write_text("fine\n")
    (workspace / "passwd-link").symlink_to("/etc/passwd")
    (workspace / "etc-dir").symlink_to("/etc")
    os.mkfifo(workspace / "pipe")
    changes = commit_run(workspace, 1, "make links")
    assert [(f.path, f.data) for f in changes.files] == [("ok.txt", b"fine\n")]
    assert {(r.path, r.reason) for r in changes.refused} == {("passwd-link", "a symlink"), ("etc-dir", "a symlink")}
    # git does not track FIFOs, so the pipe is neither read nor listed; nothing blocked on it.
