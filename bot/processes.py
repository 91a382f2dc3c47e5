"""Whether a process on this host is alive: the one answer the reaper, the metrics and the agent servers share."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Return whether a process of this id runs on this host.

    A zombie is dead: it has exited, and only waits for a parent to collect its status. Where
    PID 1 collects nobody's (some containers and sandboxes), an orphaned work-horse SIGKILLed
    with its worker stays a zombie for good, and would otherwise pass for alive forever.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return not Path("/proc/self").exists()  # no procfs: trust the signal
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
