"""Moving opencode sessions between agent states: into a fork's state, and to another worker's server.

A warm session lives in the database of the server that made it (`agent-state/server-<pid>`),
and a cold one in its conversation's state. A follow-up may be taken by any worker, so before
a run prompts a session its worker's server gets the freshest copy there is: opencode 1.18
keeps every session as an event history (tables `event`, `event_sequence`), which
`POST /sync/replay` rebuilds on another server (measured: a session made on one server,
replayed on a second, continued there with its whole history). The history is read from the
holder's database file, so the holder's worker need not be alive.

Forks:

opencode keeps its sessions in one SQLite file under its XDG data directory, one per
conversation here (`AgentTask.state_dir`), and a session runs in the directory it was made in
(`opencode run --session` uses the session's directory, not `--dir`; a forked session keeps
it too: measured with 1.18.33, the fork wrote into the parent's workspace). So `/fork` copies
the parent's database into the fork's state and points the parent's session at the fork's
workspace there; the fork's first run then forks that copy into a session of its own. The
parent's own state is only read.

On the warm server (`agent.mode: warm`) `/fork` copies nothing: the fork's first run brings the
parent's session to its worker's server (as a follow-up would), forks it there with
`POST /session/:id/fork` and prompts the new session. A forked session keeps the parent's
directory on the server too (measured with 1.18.33, and PATCH cannot change it), so the new
session is re-homed: its event history, the directory in it changed to the fork's workspace,
replaces it (`DELETE`, then `POST /sync/replay`, which takes the directory from the events). A
fork's first run that takes the cold path gets the copy then, from the freshest holder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.types import AgentTask

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


def session_seq(state_dir: Path, session_id: str) -> int:
    """Return the last event number of the session in this state's database (-1: not there)."""
    path = state_dir / DATABASE
    if not path.is_file():
        return -1
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_TIMEOUT_S)) as db:
            row = db.execute("SELECT seq FROM event_sequence WHERE aggregate_id = ?", (session_id,)).fetchone()
    except sqlite3.Error:
        return -1
    return int(row[0]) if row else -1


def freshest_holder(states: Path, session_id: str) -> tuple[Path | None, int]:
    """Return the agent state (under `agent-state/`) holding the newest copy of the session, and its number."""
    best: tuple[Path | None, int] = (None, -1)
    for database in sorted(states.glob(f"*/{DATABASE}")):
        state = database.parents[len(DATABASE.parts) - 1]
        seq = session_seq(state, session_id)
        if seq > best[1]:
            best = (state, seq)
    return best


def session_history(state_dir: Path, session_id: str) -> list[dict[str, Any]]:
    """Return the session's event history from a state's database, in order, as `/sync/replay` takes it."""
    path = state_dir / DATABASE
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_TIMEOUT_S)) as db:
        rows = db.execute("SELECT id, aggregate_id, seq, type, data FROM event WHERE aggregate_id = ? ORDER BY seq",
                          (session_id,)).fetchall()
    return [{"id": event_id, "aggregateID": aggregate, "seq": seq, "type": kind, "data": json.loads(data)}
            for event_id, aggregate, seq, kind, data in rows]


def bring_session(api: Any, headers: dict[str, str], session_id: str, workspace: Path, own_state: Path,
                  states: Path) -> bool:
    """Give this server the freshest copy of the session (replayed from its holder); return whether it has it.

    `api` is an HTTP client of the server, `own_state` that server's agent state and `states`
    the directory of every agent state (`$BOT_DATA_DIR/agent-state`).
    """
    own = session_seq(own_state, session_id)
    holder, newest = freshest_holder(states, session_id)
    if holder is None or holder == own_state or newest <= own:
        return own >= 0 and api.get(f"/session/{session_id}", headers=headers).status_code == 200
    try:
        history = session_history(holder, session_id)
    except (sqlite3.Error, ValueError):
        log.exception("reading opencode session %s from %s failed", session_id, holder)
        return False
    if own >= 0:  # a stale copy from an earlier visit of this conversation: replaced whole
        api.delete(f"/session/{session_id}", headers=headers)
    answer = api.post("/sync/replay", headers=headers, json={"directory": str(workspace), "events": history})
    if answer.status_code != 200:
        log.warning("replaying opencode session %s from %s: HTTP %s %s", session_id, holder, answer.status_code,
                    answer.text[:200])
        return False
    log.info("opencode session %s carried over from %s (%d events)", session_id, holder.name, len(history))
    return True


def fork_on_server(api: Any, headers: dict[str, str], session_id: str, workspace: Path, own_state: Path) -> str | None:
    """Fork a session this server has (`POST /session/:id/fork`) into one homed in `workspace`; return its id.

    None: the server refused the fork, or the new session could not be re-homed (then it is deleted).
    """
    answer = api.post(f"/session/{session_id}/fork", headers=headers, json={})
    if answer.status_code != 200:
        log.warning("forking opencode session %s: HTTP %s %s", session_id, answer.status_code, answer.text[:200])
        return None
    forked = answer.json()
    fork_id, directory = str(forked["id"]), str(forked.get("directory") or "")
    if directory == str(workspace):
        return fork_id
    try:
        history = session_history(own_state, fork_id)
    except (sqlite3.Error, ValueError):
        log.exception("reading the forked opencode session %s failed", fork_id)
        history = []
    for event in history:
        info = event["data"].get("info") if isinstance(event["data"], dict) else None
        if isinstance(info, dict) and info.get("directory") == directory:
            info["directory"] = str(workspace)
            if info.get("path") == directory.lstrip("/"):
                info["path"] = str(workspace).lstrip("/")
    api.delete(f"/session/{fork_id}", headers=headers)
    if not history:
        return None
    replayed = api.post("/sync/replay", headers=headers, json={"directory": str(workspace), "events": history})
    if replayed.status_code != 200:
        log.warning("re-homing the forked opencode session %s: HTTP %s %s", fork_id, replayed.status_code,
                    replayed.text[:200])
        api.delete(f"/session/{fork_id}", headers=headers)
        return None
    log.info("opencode session %s forked into %s, in %s", session_id, fork_id, workspace)
    return fork_id


def with_fork_copy(task: AgentTask, states: Path) -> AgentTask:
    """Return the task for a fork's first run on the cold path: the parent's session copied into its state.

    A warm `/fork` copies nothing (the server forks the session), so a cold run copies it now
    from the freshest holder; when nothing holds it, the fork starts a fresh session.
    """
    if not task.fork_session or not task.session_id or session_seq(task.state_dir, task.session_id) >= 0:
        return task
    holder, _ = freshest_holder(states, task.session_id)
    if holder is not None and copy_session(task.session_id, holder, task.state_dir, task.workspace):
        return task
    log.warning("run %s: the parent's session %s is nowhere to fork; a fresh session", task.run_id, task.session_id)
    return replace(task, session_id=None, fork_session=False)
