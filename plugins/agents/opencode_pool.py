"""Prepared workspaces: a new conversation's first run starts in a directory its worker's server has opened.

A warm server spends ~1 s on the first prompt in a directory it has not served before it asks
the model (setting the directory up: its project, config, tools). With nothing else to do, the
worker does that ahead of time for the next new conversation (bench/opencode_prewarm.py: the
next prompt there reaches the model in 0.08-0.15 s instead of 0.93-1.20 s):

    the server's supervisor, between runs ─► an empty git repository in
        $BOT_DATA_DIR/workspaces/.prepared/server-<worker pid>/<token> ─► a throw-away session
        there prompted with `PROVIDER`, a model on a port nothing listens on ─► the session says
        "retry" (opencode has set the directory up and tried the model: nothing was sent)
        ─► abort, delete the session ─► <token>.ready (holding the server's pid)
    a new conversation's first run (in the work-horse) ─► rename <token>.ready to <token>.taken
        (one taker) ─► workspaces/<conversation id> is a symlink to it; the run gets the real path

Only a server that is still the one that prepared it hands a workspace out; one left by an
earlier server (restarted, or a worker that died) is removed by the next keeper. The session
gets a title, so opencode makes no title request to the real model either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from plugins.agents.opencode_server import HEALTH_TIMEOUT_S, OpencodeServer, directory_header
from workers import workspace as workspaces

log = logging.getLogger(__name__)

#: The opencode provider of the throw-away prompt: a model at an address that refuses connections.
PROVIDER = "threadwork-prepare"
#: Seconds the throw-away prompt gets to reach its model ("retry"; ~1-2 s on 2 cores). The
#: supervisor's watchdog waits meanwhile, so this stays near its health-check timeout.
PREPARE_TIMEOUT_S = 10.0
#: Seconds between looks at the throw-away session's status while it is being set up.
STATUS_POLL_S = 0.05
READY, TAKEN, DISCARDED = ".ready", ".taken", ".discarded"

_refusing: socket.socket | None = None
_refusing_lock = threading.Lock()


def refusing_port() -> int:
    """Return a port on 127.0.0.1 that refuses every connection, for as long as this process lives.

    A socket bound and never listened on: nothing else can take the port, and a connection to it
    is refused at once. A forked work-horse inherits it, so worker and horse write the same config.
    """
    global _refusing
    with _refusing_lock:
        if _refusing is None:
            _refusing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            _refusing.bind(("127.0.0.1", 0))
        return int(_refusing.getsockname()[1])


def provider_config() -> dict[str, Any]:
    """Return the opencode provider entry of the throw-away prompt."""
    return {PROVIDER: {
        "npm": "@ai-sdk/openai-compatible",
        "name": "Threadwork workspace preparation (never answers)",
        "options": {"baseURL": f"http://127.0.0.1:{refusing_port()}/v1", "apiKey": "none"},
        "models": {"none": {"name": "none", "limit": {"context": 1000, "output": 10}}},
    }}


class PreparedWorkspaces:
    """One worker's prepared workspaces: kept ready by its server's supervisor, taken by new conversations."""

    def __init__(self, pool: Path) -> None:
        #: $BOT_DATA_DIR/workspaces/.prepared/server-<worker pid>
        self.pool = pool

    def take(self, server_pid: int) -> Path | None:
        """Return a workspace prepared by the server of pid `server_pid`, now this caller's; None when there is none."""
        for marker in sorted(self.pool.glob(f"*{READY}")):
            if _pid_in(marker) != server_pid:
                continue
            with contextlib.suppress(FileNotFoundError):  # another taker was first
                marker.rename(marker.with_suffix(TAKEN))
                return self.pool / marker.stem
        return None

    def keep(self, server: OpencodeServer) -> None:
        """Make sure one workspace prepared by `server` is ready (called between runs, by its supervisor)."""
        if self.discard_stale(server.pid) or not server.pid:
            return
        token = secrets.token_hex(6)
        directory = self.pool / token
        started = time.monotonic()
        try:
            workspaces.prepare(directory, None)
            self._open(server, directory)
        except RunStarted:
            shutil.rmtree(directory, ignore_errors=True)  # the run has the server to itself; next time
            return
        except Exception as exc:  # boundary: a failed preparation only costs the next run its head start
            log.warning("could not prepare a workspace in %s: %s", directory, exc)
            shutil.rmtree(directory, ignore_errors=True)
            return
        (self.pool / f"{token}{READY}").write_text(str(server.pid), encoding="utf-8")
        log.info("workspace %s prepared on the opencode server (pid %s) in %.2f s", directory, server.pid,
                 time.monotonic() - started)

    def discard(self) -> None:
        """Remove every unclaimed workspace (the worker stops)."""
        self.discard_stale(0)

    def discard_stale(self, server_pid: int) -> int:
        """Remove the unclaimed workspaces of any other server (restarted, or its worker gone);
        return how many of `server_pid`'s are ready."""
        ready = 0
        for marker in self.pool.glob(f"*{READY}"):
            if _pid_in(marker) == server_pid:
                ready += 1
                continue
            discarded = marker.with_suffix(DISCARDED)
            try:
                marker.rename(discarded)
            except FileNotFoundError:
                continue
            shutil.rmtree(self.pool / marker.stem, ignore_errors=True)
            discarded.unlink(missing_ok=True)
        return ready

    @staticmethod
    def _open(server: OpencodeServer, directory: Path) -> None:
        """Have the server set `directory` up: a prompt to the refusing model, aborted once it was tried."""
        headers = directory_header(directory)
        with server.client(httpx.Timeout(HEALTH_TIMEOUT_S)) as api:
            answer = api.post("/session", headers=headers, json={"title": "Threadwork: preparing this workspace"})
            answer.raise_for_status()
            session_id = str(answer.json()["id"])
            try:
                api.post(f"/session/{session_id}/prompt_async", headers=headers, json={
                    "parts": [{"type": "text", "text": "."}],
                    "model": {"providerID": PROVIDER, "modelID": "none"},
                }).raise_for_status()
                # No event reader runs in the worker process (its horses have theirs): a short,
                # bounded look at the status; the setup ends in "retry" (the model was tried).
                deadline = time.monotonic() + PREPARE_TIMEOUT_S
                seen_busy = False
                while time.monotonic() < deadline:
                    status = (api.get("/session/status", headers=headers).json() or {}).get(session_id) or {}
                    kind = status.get("type", "idle")
                    if kind == "retry" or (kind == "idle" and seen_busy):
                        return
                    seen_busy = seen_busy or kind == "busy"
                    if server.ledger.read()[1]:
                        raise RunStarted
                    time.sleep(STATUS_POLL_S)
                raise TimeoutError(f"the server did not try the model within {PREPARE_TIMEOUT_S:g} s")
            finally:
                with contextlib.suppress(httpx.HTTPError):
                    api.post(f"/session/{session_id}/abort", headers=headers)
                    api.delete(f"/session/{session_id}", headers=headers)


class RunStarted(Exception):
    """A run started on the server while a workspace was being prepared: the preparation yields."""


def _pid_in(marker: Path) -> int:
    try:
        return int(marker.read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        return 0


def pool_of(data_dir: Path, worker_pid: int | None = None) -> PreparedWorkspaces:
    """Return the prepared workspaces of the worker process `worker_pid` (default: this one)."""
    return PreparedWorkspaces(data_dir.resolve() / "workspaces" / ".prepared" / f"server-{worker_pid or os.getpid()}")
