"""Workspaces: one git repository per conversation, so every run's changes can be diffed.

A channel may name a repository to start from (`channels."platform:channel".repo` in the
manifest); otherwise the workspace starts empty. After each run its changes are committed,
and the files it added or changed are what the thread gets as attachments.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bot.errors import UserFacingError

#: Seconds git gets for one command (a clone of a large repository may need the most).
GIT_TIMEOUT_S = 300
#: Identity of the commits the bot makes after each run.
GIT_IDENTITY = ("-c", "user.name=Threadwork", "-c", "user.email=threadwork@localhost")


@dataclass(frozen=True)
class ChangedFile:
    """A file a run added or changed."""

    path: str
    size: int
    sha256: str
    data: bytes


def git(workspace: Path, *args: str) -> str:
    """Run git in the workspace; return its stdout, raising a user-facing error on failure."""
    result = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=workspace, capture_output=True, text=True,
                            timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise UserFacingError(f"git {args[0]} failed in the workspace: {detail[-1] if detail else result.returncode}")
    return result.stdout


def prepare(workspace: Path, source_repo: str | None) -> None:
    """Make sure the workspace is a git repository with at least one commit."""
    if (workspace / ".git").is_dir():
        return
    workspace.parent.mkdir(parents=True, exist_ok=True)
    if source_repo:
        git(workspace.parent, "clone", "--quiet", source_repo, str(workspace))
        return
    workspace.mkdir(parents=True, exist_ok=True)
    git(workspace, "init", "--quiet")
    git(workspace, "commit", "--quiet", "--allow-empty", "-m", "Workspace created by Threadwork")


def commit_run(workspace: Path, run_id: int, prompt: str) -> list[ChangedFile]:
    """Commit what the run changed; return the files it added or modified (not deleted)."""
    git(workspace, "add", "--all")
    status = git(workspace, "diff", "--cached", "--name-status", "--no-renames")
    if not status.strip():
        return []
    summary = " ".join(prompt.split())[:60]
    git(workspace, "commit", "--quiet", "-m", f"Run {run_id}: {summary}")
    changed = []
    for line in status.splitlines():
        flag, _, path = line.partition("\t")
        if flag in ("A", "M") and (workspace / path).is_file():
            data = (workspace / path).read_bytes()
            changed.append(ChangedFile(path, len(data), hashlib.sha256(data).hexdigest(), data))
    return changed
