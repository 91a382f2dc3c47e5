"""Starting an agent so that its whole process tree can be ended, children included.

opencode's bash tool starts commands in sessions of their own: they survive a kill of
opencode and of its process group (PLATFORM_FACTS). As root, the agent runs in a new PID
namespace (`unshare --pid --fork --kill-child`): ending its first process ends every process
in the namespace. Elsewhere, the tree is found through /proc and each process is killed.
This is the one place that choice is made.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: prctl option: the signal a process gets when its parent thread dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: Seconds a process tree gets to exit after SIGKILL before we stop waiting.
KILL_WAIT_S = 5.0


def namespace_wrapper() -> list[str]:
    """Return the command prefix that puts the agent in its own PID namespace, or []."""
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0:
        return [unshare, "--pid", "--fork", "--kill-child"]
    return []


def spawn(argv: Sequence[str], *, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start the agent with stdin from /dev/null and its stdout piped, in a tree we can end.

    The agent also dies with the thread that started it (PR_SET_PDEATHSIG), so a worker
    killed with SIGKILL leaves no agent behind.
    """
    return subprocess.Popen(
        [*namespace_wrapper(), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Return every live descendant of `pid`, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(process: subprocess.Popen[bytes]) -> list[int]:
    """End the process and everything it started; return the pids that were signalled."""
    pids = [process.pid, *descendants(process.pid)]
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        pass
    return pids
