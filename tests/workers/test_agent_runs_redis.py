"""Agent runs on a real redis-server, executed by real `python -m bot worker` processes."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

from sqlalchemy import text

from bot.db.repositories import Runs
from bot.types import Message, RunState, ThreadRef
from tests.fakes.openai_server import Turn
from tests.support.engines import EngineBuilder, run_bot
from tests.support.processes import start_worker, stop
from tests.workers.agent_support import agent_settings, processes_with, requires_opencode, wait_until

pytestmark = requires_opencode


def test_rq_workers_run_the_agent_and_the_console_sees_every_edit(tmp_path: Path, model, redis_url: str) -> None:
    model.script(Turn.write("app.py", "print(40 + 2)\n"), Turn.bash("python3 app.py"),
                 Turn.text("app.py prints 42."))
    settings = agent_settings(tmp_path, model, REDIS_URL=redis_url)
    workers = [start_worker(settings, f"agent-worker-{n}") for n in (1, 2)]
    try:
        chat = run_bot(["chat"], tmp_path, input="/agent write app.py printing 42 and run it\n", timeout=240,
                       REDIS_URL=redis_url, BOT_MANIFEST=str(settings.manifest_path),
                       OPENCODE_CONFIG=settings.get("OPENCODE_CONFIG"))
    finally:
        for worker in workers:
            stop(worker)
    assert chat.returncode == 0, chat.stderr
    assert "queued" in chat.stdout and "running" in chat.stdout
    assert "✓ ran `python3 app.py`" in chat.stdout and "done" in chat.stdout
    assert chat.stdout.rstrip().endswith("app.py prints 42.")
    db = sqlite3.connect(tmp_path / "data" / "threadwork.db")
    state, worker = db.execute("select state, worker from agent_runs").fetchone()
    assert state == "done" and worker  # executed by a worker process, not the chat
    assert (tmp_path / "data" / "workspaces" / "1" / "app.py").read_text() == "print(40 + 2)\n"


def test_a_killed_worker_leaves_no_run_shown_as_running(tmp_path: Path, model, redis_url: str,
                                                        make_engine: EngineBuilder) -> None:
    marker = "sleep 297"
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("never reached"))
    settings = agent_settings(tmp_path, model, manifest_extra="", REDIS_URL=redis_url)
    manifest = Path(settings.manifest_path)
    manifest.write_text(manifest.read_text().replace("stale_after_seconds: 30", "stale_after_seconds: 5"))
    doomed = start_worker(settings, "doomed-worker")
    engine, _view = make_engine(settings)  # jobs go to Redis, for the worker processes
    rescuer = None
    try:
        where = ThreadRef("console", "local", "kill-test")
        engine.dispatch(Message(where=where, text=f"/agent run {marker}", user_id="U1", user_name="ana"))
        wait_until(lambda: processes_with(marker, starting=True), 90, "the agent's sleep to start in the worker")
        with engine.db.reading() as session:
            horse = int(Runs(session).get(1).worker.rsplit(":", 1)[1])  # the process executing the job
        os.kill(horse, signal.SIGKILL)  # the work-horse and its worker, mid-run
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        wait_until(lambda: not processes_with(marker), 10, "every process of the run to die with its worker")
        rescuer = start_worker(settings, "rescuer-worker")

        def run_state():
            with engine.db.reading() as session:
                return Runs(session).get(1).state

        def status_text() -> str:
            with engine.db.reading() as session:
                run = Runs(session).get(1)
                return session.execute(text("select text from messages where external_id = :id"),
                                       {"id": run.status_message_id}).scalar_one()

        wait_until(lambda: run_state() == RunState.FAILED, 60, "the run to be marked failed")
        # The status message, as last edited (the rescuer stores the final text after its edit).
        wait_until(lambda: "failed" in status_text(), 10, "the status message to say the run failed")
        assert "the worker running it stopped" in status_text()
    finally:
        stop(doomed)
        if rescuer:
            stop(rescuer)
