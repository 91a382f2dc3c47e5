"""Copying an opencode session into a fork's agent state, so `--session ID --fork` can fork it there.

opencode keeps its sessions in one SQLite file under its XDG data directory, one per
conversation here (`AgentTask.state_dir`), and a session runs in the directory it was made in
(`opencode run --session` uses the session's directory, not `--dir`; a forked session keeps
it too: measured with 1.18.33, the fork wrote into the parent's workspace). So `/fork` copies
the parent's database into the fork's state and points the parent's session at the fork's
workspace there; the fork's first run then forks that copy into a session of its own. The
parent's own state is only read.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

#: opencode's database inside an agent state dir: XDG_DATA_HOME is `state_dir/xdg_data_home`
#: (plugins.agents.cli_runner), and opencode 1.18 keeps `opencode/opencode.db` there.
DATABASE = Path("xdg_data_home") / "opencode" / "opencode.db"
#: Seconds to wait for a running agent's write lock on the parent's database.
LOCK_TIMEOUT_S = 5.0


def copy_session(session_id: str, parent_state: Path, fork_state: Path, fork_workspace: Path) -> bool:
    """Copy the parent's opencode sessions into the fork's state, the session re-homed; return whether it worked.

    The SQLite backup API copies a consistent snapshot even while the parent's agent writes.
    """
    source_path = parent_state / DATABASE
    if not source_path.is_file():
        return False
    target_path = fork_state / DATABASE
    target_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sqlite3.connect(source_path, timeout=LOCK_TIMEOUT_S) as source, \
                sqlite3.connect(target_path, timeout=LOCK_TIMEOUT_S) as target:
            source.backup(target)
            moved = target.execute("UPDATE session SET directory = ? WHERE id = ?",
                                   (str(fork_workspace), session_id)).rowcount
        source.close()
        target.close()
    except sqlite3.Error:
        log.exception("copying opencode session %s into %s failed", session_id, fork_state)
        target_path.unlink(missing_ok=True)
        return False
    if moved != 1:
        target_path.unlink(missing_ok=True)
    return moved == 1
