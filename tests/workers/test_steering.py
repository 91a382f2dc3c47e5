"""Steering: a message in a thread whose run is still running goes to that run (real opencode, scripted model)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bot.runs import CANNOT_STEER
from bot.types import RunState
from tests.fakes.openai_server import Turn
from tests.support.engines import EngineBuilder
from tests.workers.agent_support import agent_settings, ask, processes_with, requires_opencode, wait_until
from tests.workers.test_opencode_server import runs_of, warm_engine

pytestmark = requires_opencode


def test_a_message_during_a_warm_run_steers_what_the_agent_does_next(tmp_path: Path, model,
                                                                     make_engine: EngineBuilder) -> None:
    marker = f"sleep 4.{int(time.time()) % 10}"  # long enough to steer while it runs
    model.script(
        Turn.bash(marker, timeout_ms=600_000),
        # Unsteered, the agent would stop here; with "use blue" in its next request it paints.
        Turn(content="Finished without a colour.", instead_if=("use blue", Turn.bash("echo blue > colour.txt"))),
        Turn.text("Painted it blue, as asked."),
        Turn.text("Queued task done."),
    )
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    ask(engine, "/agent paint the fence")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    ask(engine, "actually, use blue please", user="U2", name="bo")
    ask(engine, "/queue tidy up afterwards")
    assert engine.queue.wait(timeout=120)

    first, second = sorted(runs_of(engine), key=lambda run: run.id)
    assert first.state == RunState.DONE and second.state == RunState.DONE  # the steer started no run
    assert second.prompt == "tidy up afterwards"
    workspace = tmp_path / "data" / "workspaces" / "1"
    assert (workspace / "colour.txt").exists(), ([view.texts(m) for m in view.order], model.scripted_requests[1:])
    assert (workspace / "colour.txt").read_text() == "blue\n"
    steered = json.dumps(model.scripted_requests[1]["messages"])
    assert "actually, use blue please" in steered  # the very next model request had it
    status = view.order[0]
    assert any("↪ steering: actually, use blue please" in text for text in view.texts(status))
    assert "↪ steering: actually, use blue please" in view.last(status)
    answers = [view.last(m) for m in view.order]
    assert "Painted it blue, as asked." in answers and "Queued task done." in answers
    assert not any(CANNOT_STEER.split("{")[0] in text for text in answers)


def test_in_cold_mode_a_message_during_a_run_is_queued_and_the_thread_is_told(tmp_path: Path, model,
                                                                             make_engine: EngineBuilder) -> None:
    marker = f"sleep 3{int(time.time()) % 10}"
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("First done."), Turn.text("Second done."))
    engine, view = make_engine(agent_settings(tmp_path, model))
    assert engine.manifest.agent.mode == "cold"
    ask(engine, "/agent wait a bit")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    ask(engine, "then write the docs")
    notice = CANNOT_STEER.format(run=1, agent="opencode")
    wait_until(lambda: any(view.last(m) == notice for m in view.order), 5, "the thread to be told")
    assert engine.queue.wait(timeout=180)
    runs = sorted(runs_of(engine), key=lambda run: run.id)
    assert [run.state for run in runs] == [RunState.DONE, RunState.DONE]
    assert runs[1].prompt == "then write the docs"
    assert "Second done." in view.last(view.order[-1])


def test_stop_during_a_warm_run_ends_it_quickly_and_the_notice_says_how_it_ended(tmp_path: Path, model,
                                                                                 make_engine: EngineBuilder) -> None:
    marker = f"sleep 5{int(time.time()) % 10}"
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("never reached"))
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    ask(engine, "/agent wait a long time")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    started = time.monotonic()
    ask(engine, "/stop")
    wait_until(lambda: not processes_with(marker), 5, "the sleep to be gone")
    assert time.monotonic() - started < 5
    assert engine.queue.wait(timeout=30)
    assert runs_of(engine)[0].state == RunState.CANCELLED
    (notice,) = [m for m in view.order if view.texts(m)[0] == "Stopping run 1…"]
    assert view.last(notice) == "⏹️ Stopped run 1 (cancelled by ana)."
    assert "Cancelled by ana." in view.last(view.order[0])


def test_only_people_who_may_start_the_agent_steer_it(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    marker = f"sleep 3.{int(time.time()) % 10}"
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("Done, unsteered."))
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    engine.manifest.permissions.agent = ["U1"]  # bo (U2) may ask in chat, not start or steer the agent
    ask(engine, "/agent wait a little")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    ask(engine, "use purple instead", user="U2", name="bo")
    assert engine.queue.wait(timeout=120)
    assert "use purple" not in json.dumps(model.scripted_requests)
    assert not any("steering" in text for text in view.texts(view.order[0]))
    assert [run.state for run in runs_of(engine)] == [RunState.DONE]  # and no run of bo's
