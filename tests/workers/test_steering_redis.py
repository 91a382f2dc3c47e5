"""Steering and an approval across processes: the bot dispatches, a real RQ worker runs the warm agent (Redis)."""

from __future__ import annotations

import time
from pathlib import Path

from bot.approvals import ANSWERED
from bot.db.repositories import Conversations, Runs
from bot.runs import STEER_STEP
from bot.types import Message, RunState
from tests.fakes.openai_server import Turn
from tests.support.engines import EngineBuilder
from tests.workers.agent_support import processes_with, requires_opencode, wait_until, warm_settings
from tests.workers.test_warm_workers import (
    WHERE,
    replies,
    start_worker,
    stop_worker,
    wait_for_server,
)

pytestmark = requires_opencode


def say(engine, text: str) -> None:
    engine.dispatch(Message(where=WHERE, text=text, user_id="U1", user_name="ana"))


def ended(engine):
    """Return the thread's first run once it has ended, else None."""
    with engine.db.reading() as session:
        conversation = Conversations(session).find(WHERE)
        run = Runs(session).in_conversation(conversation.id)[-1] if conversation else None
    return run if run is not None and run.state.is_final else None


def test_a_worker_run_is_steered_and_approved_over_redis(tmp_path: Path, model, redis_url: str,
                                                         make_engine: EngineBuilder) -> None:
    marker = f"sleep 4.{int(time.time()) % 10}"
    model.script(
        Turn.bash("touch redis.txt"),
        Turn.bash(marker, timeout_ms=600_000),
        Turn(content="No colour given.", instead_if=("use red", Turn.bash("echo red > colour.txt"))),
        Turn.text("Touched and painted red."),
    )
    settings = warm_settings(tmp_path, model, REDIS_URL=redis_url)
    manifest = Path(settings.manifest_path)
    manifest.write_text(manifest.read_text().replace("  mode: warm\n", '  mode: warm\n  ask: [{bash: "touch *"}]\n', 1))
    worker = start_worker(settings, "steer-a")
    engine, _ = make_engine(settings)  # this process only dispatches; the worker runs the agent
    try:
        wait_for_server(tmp_path, worker)
        say(engine, "/agent touch redis.txt, then wait")
        wait_until(lambda: any(text.startswith("🔐") for text in replies(engine)), 120, "the approval request")
        say(engine, "/approve")
        wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
        say(engine, "please use red")
        run = wait_until(lambda: ended(engine), 180, "the run to end")
    finally:
        stop_worker(worker)
    assert run.state == RunState.DONE, run.error
    workspace = tmp_path / "data" / "workspaces" / "1"
    assert (workspace / "redis.txt").exists() and (workspace / "colour.txt").read_text() == "red\n"
    with engine.db.reading() as session:
        conversation = Conversations(session).find(WHERE)
        assert len(Runs(session).in_conversation(conversation.id)) == 1  # the steer started no run
        events = Runs(session).events(run.id)
    assert any(e.name == STEER_STEP and e.text == "please use red" for e in events)
    (answered,) = [e for e in events if e.name == ANSWERED]
    assert (answered.raw["reply"], answered.raw["who"]) == ("once", "ana")
    texts = replies(engine)
    assert "✅ Approved once by ana: run `touch redis.txt`" in texts
