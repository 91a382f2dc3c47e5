"""`python -m bot` processes for tests: started in a session of their own, stopped with their whole group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.engines import REPO

#: Seconds a stopped process gets to end by itself (a worker finishing its job, stopping its
#: agent server) before its group is killed.
STOP_WAIT_S = 20


def start_bot(args: list[str], env: dict[str, str], *, log: Path | None = None,
              cwd: Path = REPO) -> subprocess.Popen[Any]:
    """Start `python -m bot ARGS` with `env` in a process group of its own; its output to `log` or nowhere."""
    out = log.open("wb") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen([sys.executable, "-m", "bot", *args], env=env, cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log:
            out.close()


def start_worker(settings: Any, name: str, *, log: Path | None = None) -> subprocess.Popen[Any]:
    """Start `python -m bot worker --name NAME` with the settings' environment (over this process's)."""
    env = {**os.environ, **{k: v for k, v in settings.env.items() if v}, "PYTHONPATH": str(REPO)}
    return start_bot(["worker", "--name", name], env, log=log)


def stop(process: subprocess.Popen[Any], wait_s: float = STOP_WAIT_S) -> None:
    """Stop a started process: SIGTERM to its group, then SIGKILL if it has not ended in `wait_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def kill(process: subprocess.Popen[Any]) -> None:
    """SIGKILL a started process and its group (its work-horses and agents), as the OOM killer or `kill -9` would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
