"""A third-party CLI agent on the shared runner: a toy script, registered through the manifest.

No model and no opencode: `tests/workers/toy_agent.py` prints JSON event lines (and sleeps
when asked), and `tests/workers/toy_agent_plugin.py` plugs it in as `agent.name: toy`.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from bot.db.repositories import Runs
from bot.engine import Engine
from bot.types import AgentTask, RunState
from plugins.agents.cli_runner import CliInvocation, agent_environment, run_cli
from tests.support.engines import EngineBuilder
from tests.support.ports import RecordingPort
from tests.workers.agent_support import ask, processes_with, wait_until
from tests.workers.toy_agent_plugin import SCRIPT, ToyAgent, parse_line

PLUGIN = "tests.workers.toy_agent_plugin"


@pytest.fixture
def toy(make_engine: EngineBuilder) -> tuple[Engine, RecordingPort]:
    """An engine whose agent is the toy, loaded from the manifest like third-party code."""
    return make_engine(manifest={"plugins": {"modules": [PLUGIN]}, "agent": {"name": "toy"},
                                 "permissions": {"cancel": ["U2"]}})  # bo may cancel anyone's run


def state_of(engine: Engine, run_id: int) -> RunState:
    with engine.db.reading() as session:
        return Runs(session).get(run_id).state


def status_messages(view: RecordingPort) -> list[str]:
    return [m for m in view.order if "**Agent run" in view.texts(m)[0]]


def test_a_toy_cli_agent_plugin_runs_to_done_and_a_second_run_is_cancelled(toy) -> None:
    engine, view = toy
    assert engine.pm.get_plugin(PLUGIN) is not None  # loaded from the manifest, like third-party code
    assert "toy" in engine.agents
    assert isinstance(engine.agents["toy"], ToyAgent)

    ask(engine, "/agent list the files slowly")
    assert engine.queue.wait(timeout=60)
    assert state_of(engine, 1) == RunState.DONE
    first = status_messages(view)[0]
    texts = view.texts(first)
    assert texts[0].startswith("🕒 **Agent run 1** · queued")
    assert any(t.startswith("⏳ **Agent run 1** · running") and "✓ ran `ls`" in t for t in texts[1:-1])
    assert texts[-1].startswith("✅ **Agent run 1** · done") and "✓ ran `ls`" in texts[-1]
    assert "Tokens 120 in / 30 out" in texts[-1] and "Cancel with" not in texts[-1]
    assert view.last(view.order[-1]) == "Listed the files of 1: there are none yet."  # the answer, as a reply
    with engine.db.reading() as session:
        assert Runs(session).get(1).session_id == "toy-session-1"

    marker = f"sleep 31{int(time.time()) % 10}"  # unique enough to find in /proc
    ask(engine, f"/agent {marker}")
    wait_until(lambda: processes_with(marker, starting=True), 30, "the toy's sleep to start")
    started = time.monotonic()
    ask(engine, "/cancel", user="U2", name="bo")
    wait_until(lambda: not processes_with(marker) and not processes_with(str(SCRIPT)), 5,
               "every process of the run to be gone")
    assert time.monotonic() - started < 5
    assert engine.queue.wait(timeout=30)
    assert state_of(engine, 2) == RunState.CANCELLED
    second = status_messages(view)[1]
    assert view.texts(second)[0].startswith("🕒 **Agent run 2** · queued")
    assert "⏳ **Agent run 2** · running" in "\n".join(view.texts(second))
    final = view.last(second)
    assert final.startswith("⏹️ **Agent run 2** · cancelled") and "Cancelled by bo." in final
    # The notice is edited to the outcome, not left under a status that says "cancelled".
    (notice,) = [m for m in view.order if view.texts(m)[0] == "Stopping run 2…"]
    assert view.last(notice) == "⏹️ Stopped run 2 (cancelled by bo)."


def test_a_toy_run_past_its_timeout_fails_and_leaves_no_process(toy) -> None:
    engine, view = toy
    engine.manifest.agent.timeout_seconds = 2
    marker = f"sleep 32{int(time.time()) % 10}"
    ask(engine, f"/agent {marker}")
    assert engine.queue.wait(timeout=30)
    with engine.db.reading() as session:
        run = Runs(session).get(1)
    assert run.state == RunState.FAILED and run.error == "timed out after 2 s"
    assert "Failed: timed out after 2 s" in view.last(status_messages(view)[0])
    assert not processes_with(marker)


def test_a_toy_that_exits_with_an_error_fails_with_its_last_stderr_line(toy) -> None:
    engine, view = toy
    ask(engine, "/agent fail please")
    assert engine.queue.wait(timeout=30)
    final = view.last(status_messages(view)[0])
    assert final.startswith("❌ **Agent run 1** · failed") and "Failed: toy: the workspace is on fire" in final
    assert any(f.filename == "run-1-log.md" for f in view.files)  # a failed run attaches its log


def test_the_runner_gives_an_agent_its_own_home_and_none_of_the_bots_variables(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-not-for-agents")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///bot.db")
    task = AgentTask(run_id=1, workspace=tmp_path, prompt="", state_dir=tmp_path / "state", timeout_s=1,
                     env={"MODEL_KEY": "k"})
    env = agent_environment(task, {"TOY_AGENT": "1", "HOME": "/overridden"})
    assert "SLACK_BOT_TOKEN" not in env and "DATABASE_URL" not in env
    assert env["MODEL_KEY"] == "k" and env["TOY_AGENT"] == "1"
    assert env["XDG_DATA_HOME"] == str(tmp_path / "state" / "xdg_data_home")
    assert (tmp_path / "state" / "home").is_dir()


def test_cancel_before_the_agent_starts_still_ends_it_at_once(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    task = AgentTask(run_id=1, workspace=tmp_path, prompt="sleep 333", state_dir=tmp_path / "state", timeout_s=60)
    started = time.monotonic()
    outcome = run_cli(CliInvocation("toy", [sys.executable, str(SCRIPT), "--", task.prompt], parse_line),
                      task, lambda event: None, cancel)
    assert outcome.cancelled and time.monotonic() - started < 5
    assert not processes_with("sleep 333")
