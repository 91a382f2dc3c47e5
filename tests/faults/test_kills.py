"""Fault suite, item 6: SIGKILL of the agent leaves no live process and no run "running".

The real opencode runs a long `sleep` (its bash tool starts it in a session of its own, so it
would outlive a killed parent); the test SIGKILLs opencode itself. The run must fail, say so in
its status message, and leave no process of the run behind. (SIGKILL of a whole worker and its
work-horse mid-run: tests/workers/test_agent_runs_redis.py, test_a_killed_worker_leaves_no_run_shown_as_running.)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import yaml

from bot.db.repositories import Runs
from bot.types import RunState
from tests.fakes.openai_server import Turn
from tests.support.engines import EngineBuilder
from tests.workers.agent_support import agent_settings, ask, processes_with, requires_opencode, wait_until

pytestmark = requires_opencode


def test_a_killed_agent_fails_its_run_and_leaves_no_process(tmp_path: Path, model,
                                                            make_engine: EngineBuilder) -> None:
    marker = f"sleep 31{int(time.time()) % 10}1"  # unique enough to find in /proc
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("never reached"))
    settings = agent_settings(tmp_path, model)
    manifest = Path(settings.manifest_path)  # the CLI path: the opencode process of this run is the one killed
    data = yaml.safe_load(manifest.read_text())
    data["agent"]["mode"] = "cold"
    manifest.write_text(yaml.safe_dump(data))
    engine, view = make_engine(settings)
    ask(engine, f"/agent run {marker}")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    agents = processes_with(" run --format json --dir " + str(tmp_path))
    assert agents
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    engine.queue.wait(timeout=60)

    wait_until(lambda: not processes_with(marker), 10, "the agent's sleep to be gone with it")
    with engine.db.reading() as session:
        run = Runs(session).get(1)
    assert run.state == RunState.FAILED
    status = view.last(view.order[0])
    assert "failed" in status and "Traceback" not in status
