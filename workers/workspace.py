"""Workspaces: one git repository per conversation, so every run's changes can be diffed.

A channel may name a repository to start from (`channels."platform:channel".repo` in the
manifest); otherwise the workspace starts empty. After each run its changes are committed,
and the files it added or changed are what the thread gets as attachments.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class RefusedFile:
    """A file a run made that is not read, and why (told to the thread)."""

    path: str
    reason: str


@dataclass(frozen=True)
class RunChanges:
    """What a run added or changed: the files safe to read, and the ones refused."""

    files: list[ChangedFile] = field(default_factory=list)
    refused: list[RefusedFile] = field(default_factory=list)
    #: The run's commit as a unified diff ("" when it changed nothing).
    diff: str = ""


class UnsafeFile(Exception):
    """A workspace path that must not be read; the message says why."""


def read_regular_file(workspace: Path, relative: str) -> bytes:
    """Return the bytes of a regular file inside the workspace, never following a symlink.

    The agent controls the workspace: a symlink (`passwd-link -> /etc/passwd`), a path through
    a symlinked folder, `..`, a FIFO or a device would otherwise hand the host's files to the
    thread.
    """
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts:
        raise UnsafeFile("a path outside the workspace")
    root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    fds = [root]
    try:
        for folder in parts[:-1]:  # walk down without following a symlinked folder
            try:
                fds.append(os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
            except OSError:
                raise UnsafeFile("inside a symlinked or missing folder") from None
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fds[-1])
        except OSError as exc:
            if os.path.islink(workspace / relative):
                raise UnsafeFile("a symlink") from None
            raise UnsafeFile(f"cannot be opened ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise UnsafeFile("not a regular file")
            return file.read()
    finally:
        for fd in fds:
            os.close(fd)


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


def commit_run(workspace: Path, run_id: int, prompt: str) -> RunChanges:
    """Commit what the run changed; return the files it added or modified (not deleted).

    Only regular files are read; a symlink or anything else that is not a plain file inside
    the workspace is refused with the reason.
    """
    git(workspace, "add", "--all")
    status = git(workspace, "diff", "--cached", "--name-status", "--no-renames", "-z")
    if not status.strip("\0"):
        return RunChanges()
    summary = " ".join(prompt.split())[:60]
    git(workspace, "commit", "--quiet", "-m", f"Run {run_id}: {summary}")
    changes = RunChanges(diff=git(workspace, "show", "--format=", "--patch", "--no-color", "HEAD"))
    fields = status.split("\0")
    for flag, path in zip(fields[0::2], fields[1::2], strict=False):
        if flag not in ("A", "M", "T"):
            continue
        try:
            data = read_regular_file(workspace, path)
        except UnsafeFile as exc:
            changes.refused.append(RefusedFile(path, str(exc)))
            continue
        changes.files.append(ChangedFile(path, len(data), hashlib.sha256(data).hexdigest(), data))
    return changes
