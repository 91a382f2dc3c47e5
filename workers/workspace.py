"""Workspaces: one git repository per conversation, so every run's changes can be diffed.

A channel may name a repository to start from (`channels."platform:channel".repo` in the
manifest); otherwise the workspace starts empty. After each run its changes are committed,
and the files it added or changed are what the thread gets as attachments.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
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


def read_regular_file(workspace: Path, relative: str, max_bytes: int | None = None) -> bytes:
    """Return the bytes of a regular file inside the workspace, never following a symlink.

    The agent controls the workspace: a symlink (`passwd-link -> /etc/passwd`), a path through
    a symlinked folder, `..`, a FIFO or a device would otherwise hand the host's files to the
    thread; a file of gigabytes would fill the worker's memory (refused past `max_bytes`).
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
            if max_bytes is None:
                return file.read()
            data = file.read(max_bytes + 1)  # the file may still be growing
            if len(data) > max_bytes:
                size = max(os.fstat(file.fileno()).st_size, len(data))
                raise UnsafeFile(f"too large ({size / 2**20:,.1f} MiB; the limit is {max_bytes / 2**20:,.0f} MiB)")
            return data
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


def commit_run(workspace: Path, run_id: int, prompt: str, max_file_bytes: int | None = None) -> RunChanges:
    """Commit what the run changed; return the files it added or modified (not deleted).

    Only regular files are read; a symlink, anything else that is not a plain file inside the
    workspace, or a file over `max_file_bytes` is refused with the reason. Files that large
    count as binary in the run's diff, so the diff never holds their text.
    """
    git(workspace, "add", "--all")
    status = git(workspace, "diff", "--cached", "--name-status", "--no-renames", "-z")
    if not status.strip("\0"):
        return RunChanges()
    summary = " ".join(prompt.split())[:60]
    git(workspace, "commit", "--quiet", "-m", f"Run {run_id}: {summary}")
    big = ("-c", f"core.bigFileThreshold={max_file_bytes}") if max_file_bytes else ()
    changes = RunChanges(diff=git(workspace, *big, "show", "--format=", "--patch", "--no-color", "HEAD"))
    fields = status.split("\0")
    for flag, path in zip(fields[0::2], fields[1::2], strict=False):
        if flag not in ("A", "M", "T"):
            continue
        try:
            data = read_regular_file(workspace, path, max_file_bytes)
        except UnsafeFile as exc:
            changes.refused.append(RefusedFile(path, str(exc)))
            continue
        changes.files.append(ChangedFile(path, len(data), hashlib.sha256(data).hexdigest(), data))
    return changes


# -- forks: a fork's workspace is a clone of its parent's, merged back with git ----------------------

#: The ref a fork's HEAD is fetched into, in its parent's repository, for `/diff` and `/merge`.
FORK_REF = "refs/threadwork/forks/{fork_id}"
#: The lock file (inside `.git`) that keeps two merges into one workspace from overlapping.
MERGE_LOCK = "threadwork-merge.lock"


@dataclass(frozen=True)
class FileStat:
    """One file a comparison touches: lines added and removed (None for a binary file)."""

    path: str
    added: int | None
    removed: int | None


@dataclass(frozen=True)
class ForkComparison:
    """What a fork changed since it branched (or was last merged): per-file counts and the diff."""

    files: list[FileStat] = field(default_factory=list)
    #: The fork's changes as one unified diff ("" when it has none).
    diff: str = ""
    #: The fork's HEAD commit that was compared.
    head: str = ""

    @property
    def added(self) -> int:
        return sum(stat.added or 0 for stat in self.files)

    @property
    def removed(self) -> int:
        return sum(stat.removed or 0 for stat in self.files)


@dataclass(frozen=True)
class MergeOutcome:
    """How a merge of a fork went: the merge commit, or the conflicting files (and nothing changed)."""

    comparison: ForkComparison
    commit: str = ""
    conflicts: list[str] = field(default_factory=list)


def head_of(workspace: Path) -> tuple[str, str]:
    """Return the workspace's HEAD commit (short) and its subject line."""
    line = git(workspace, "log", "-1", "--format=%h%x00%s").strip()
    short, _, subject = line.partition("\0")
    return short, subject


def clone_for_fork(parent: Path, fork: Path) -> None:
    """Clone the parent's workspace at its HEAD into `fork` (local clone: hardlinked, fast).

    Only committed work goes along: a run still going in the parent commits later, so the
    fork starts from the last finished state.
    """
    fork.parent.mkdir(parents=True, exist_ok=True)
    git(fork.parent, "clone", "--quiet", str(parent), str(fork))


def uncommitted(workspace: Path) -> list[str]:
    """Return the paths with uncommitted changes in the workspace (empty when clean)."""
    lines = git(workspace, "status", "--porcelain", "--untracked-files=all").splitlines()
    return [line[3:] for line in lines if line.strip()]


def compare_fork(parent: Path, fork: Path, fork_id: int) -> ForkComparison:
    """Fetch the fork's HEAD into the parent's repository; return what merging it would bring."""
    ref = FORK_REF.format(fork_id=fork_id)
    git(parent, "fetch", "--quiet", "--no-tags", str(fork), f"+HEAD:{ref}")
    head = git(parent, "rev-parse", ref).strip()
    base = git(parent, "merge-base", "HEAD", ref).strip()
    numstat = git(parent, "diff", "--numstat", "--no-renames", "-z", base, ref)
    files = []
    for entry in numstat.split("\0"):
        if not entry.strip():
            continue
        added, removed, path = entry.split("\t", 2)
        files.append(FileStat(path, None if added == "-" else int(added), None if removed == "-" else int(removed)))
    diff = git(parent, "diff", "--no-color", "--no-renames", base, ref) if files else ""
    return ForkComparison(files, diff, head)


def merge_fork(parent: Path, fork: Path, fork_id: int, message: str) -> MergeOutcome:
    """Merge the fork's HEAD into the parent's workspace with a merge commit (never a fast-forward).

    On a conflict the merge is aborted: both workspaces stay exactly as they were, and the
    conflicting files are returned. Nothing is merged when the fork brings nothing new.
    """
    comparison = compare_fork(parent, fork, fork_id)
    if not comparison.files:
        return MergeOutcome(comparison)
    ref = FORK_REF.format(fork_id=fork_id)
    with _merge_lock(parent):
        try:
            git(parent, "merge", "--no-ff", "--no-edit", "-m", message, ref)
        except UserFacingError:
            if not (parent / ".git" / "MERGE_HEAD").exists():
                raise  # refused before it started (git says why): nothing to undo
            conflicts = git(parent, "diff", "--name-only", "--diff-filter=U", "-z").split("\0")
            git(parent, "merge", "--abort")
            return MergeOutcome(comparison, conflicts=[path for path in conflicts if path] or ["(git named no file)"])
    return MergeOutcome(comparison, commit=head_of(parent)[0])


@contextmanager
def _merge_lock(workspace: Path) -> Iterator[None]:
    """Hold the workspace's merge lock (any process), or say that another merge is under way.

    Without it a second merge would fail on git's index lock and then abort the first one's merge.
    """
    with open(workspace / ".git" / MERGE_LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserFacingError("Another merge into this thread's workspace is under way; try again when it ends.") \
                from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
