"""The warm agent: runs on one real `opencode serve` per worker process, with the scripted model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bot.db.repositories import Conversations, Runs
from bot.types import EventKind, RunState
from plugins.agents.opencode_server import kill, running_servers, serving_pid
from tests.fakes.openai_server import Turn
from tests.support.engines import WHERE, EngineBuilder
from tests.workers.agent_support import agent_settings, ask, processes_with, requires_opencode, wait_until

pytestmark = requires_opencode


def warm_engine(make_engine: EngineBuilder, settings):
    """Return an engine (and its port) whose opencode runs on the warm server, started and ready."""
    engine, view = make_engine(settings)
    engine.manifest.agent.mode = "warm"
    engine.agents["opencode"].warm_up()  # as `chat`, `run` and every worker do at start
    server = the_server()
    wait_until(lambda: server.alive() and server.healthy(), 90, "the warm server to be ready")
    return engine, view


def runs_of(engine) -> list:
    with engine.db.reading() as session:
        return Runs(session).in_conversation(Conversations(session).find(WHERE).id)


def events_of(engine, run_id: int) -> list:
    with engine.db.reading() as session:
        return Runs(session).events(run_id)


def the_server():
    servers = running_servers()
    assert len(servers) == 1, servers
    return servers[0]


def test_a_run_and_its_follow_up_share_one_warm_server(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("echo one > one.txt"), Turn.text("Wrote one.txt."),
                 Turn.text("Earlier I wrote one.txt."))
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    ask(engine, "/agent write one.txt")
    engine.queue.wait(timeout=120)
    server = the_server()
    pid = server.pid
    assert (tmp_path / "data" / "workspaces" / "1" / "one.txt").read_text() == "one\n"
    first = runs_of(engine)[0]
    assert first.state == RunState.DONE and first.session_id.startswith("ses")
    # The server reports a tool as it starts: the step in progress is an event of its own.
    names = [(e.kind, e.name) for e in events_of(engine, first.id)]
    assert (EventKind.STEP, "tool-running") in names and (EventKind.TOOL, "bash") in names
    assert all(name != "cold-fallback" for _, name in names)

    ask(engine, "/agent what did you do before?")
    engine.queue.wait(timeout=120)
    second = runs_of(engine)[1]
    assert second.state == RunState.DONE and second.session_id == first.session_id
    assert the_server().pid == pid and server.restarts == 0  # no new server start
    history = json.dumps(model.scripted_requests[-1]["messages"])
    assert "write one.txt" in history and "what did you do before?" in history and "echo one" in history
    assert "Earlier I wrote one.txt." in view.last(view.order[-1])


def test_cancel_on_the_warm_server_ends_the_command_within_five_seconds(tmp_path: Path, model,
                                                                       make_engine: EngineBuilder) -> None:
    marker = f"sleep 30{int(time.time()) % 10}"
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("never reached"))
    settings = agent_settings(tmp_path, model)
    manifest = Path(settings.manifest_path)
    manifest.write_text(manifest.read_text().replace("  cancel: []", "  cancel: [U2]"))
    engine, view = warm_engine(make_engine, settings)
    ask(engine, f"/agent run {marker}")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    # The status knew what was running before it ended.
    assert any(e.name == "tool-running" and marker in e.text for e in events_of(engine, 1))
    started = time.monotonic()
    ask(engine, "/cancel", user="U2", name="bo")
    wait_until(lambda: not processes_with(marker), 5, "the sleep to be gone")
    assert time.monotonic() - started < 5
    engine.queue.wait(timeout=30)
    assert runs_of(engine)[0].state == RunState.CANCELLED
    assert "Cancelled by bo." in view.last(view.order[0])
    assert the_server().alive()  # the server stays, only the session was aborted


def test_a_server_killed_mid_run_is_replaced_and_the_run_still_completes(tmp_path: Path, model,
                                                                         make_engine: EngineBuilder) -> None:
    marker = f"sleep 20.{os.getpid()}"  # unique: other tests' sleeps run on this machine too
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("Finished after the restart."))
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    ask(engine, "/agent sleep a while")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    server = the_server()
    old_pid = server.pid
    kill(serving_pid(old_pid))
    engine.queue.wait(timeout=120)
    run = runs_of(engine)[0]
    assert run.state == RunState.DONE, run.error
    assert "Finished after the restart." in view.last(view.order[-1])
    assert any(e.name == "cold-fallback" for e in events_of(engine, run.id))
    assert not processes_with(marker)  # the killed server's command died with it
    # The watchdog started a new server for the next run.
    wait_until(lambda: server.alive() and server.pid != old_pid and server.healthy(), 60, "a new server")
    assert server.restarts >= 1


def test_a_dead_server_before_a_run_costs_the_conversation_nothing(tmp_path: Path, model,
                                                                   make_engine: EngineBuilder) -> None:
    model.script(Turn.write("first.txt", "1\n"), Turn.text("first done"), Turn.text("second done"))
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    ask(engine, "/agent write first.txt")
    engine.queue.wait(timeout=120)
    server = the_server()
    kill(serving_pid(server.pid))
    wait_until(lambda: not server.alive(), 10, "the server to die")
    ask(engine, "/agent second")  # the cold path, or the server the watchdog restarts meanwhile
    engine.queue.wait(timeout=120)
    first, second = runs_of(engine)
    assert second.state == RunState.DONE, second.error
    assert "second done" in view.last(view.order[-1])
    # Either way the session made on the warm server goes on, with its history.
    assert second.session_id == first.session_id
    history = " ".join(str(m.get("content")) for m in model.scripted_requests[-1]["messages"])
    assert "write first.txt" in history and "second" in history


def test_mode_cold_never_starts_a_server(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.text("cold answer"))
    engine, view = make_engine(agent_settings(tmp_path, model))
    engine.manifest.agent.mode = "cold"  # selectable; the test manifests pin it (tests/support/engines.py)
    ask(engine, "/agent answer")
    engine.queue.wait(timeout=120)
    assert runs_of(engine)[0].state == RunState.DONE
    assert running_servers() == []
