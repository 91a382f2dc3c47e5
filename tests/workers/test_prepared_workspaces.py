"""Prepared workspaces: a new conversation's first run starts in a directory the warm server has opened."""

from __future__ import annotations

from pathlib import Path

from bot.types import RunState
from plugins.agents.opencode_pool import PreparedWorkspaces
from plugins.agents.opencode_server import directory_header
from tests.fakes.openai_server import Turn
from tests.support.engines import EngineBuilder
from tests.workers.agent_support import agent_settings, ask, requires_opencode, wait_until
from tests.workers.test_opencode_server import events_of, runs_of, the_server, warm_engine
from workers.workspace import git


def ready_markers(data: Path) -> list[Path]:
    return sorted((data / "workspaces" / ".prepared").glob("*/*.ready"))


@requires_opencode
def test_a_new_conversation_runs_in_the_workspace_its_server_prepared(tmp_path: Path, model,
                                                                      make_engine: EngineBuilder) -> None:
    data = tmp_path / "data"
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    (marker,) = wait_until(lambda: ready_markers(data), 60, "a workspace prepared by the warm server")
    prepared = marker.with_suffix("")
    assert marker.read_text() == str(the_server().pid)
    # Prepared without a word to the model, and clean: an empty git repository with its first commit.
    assert model.scripted_requests == []
    assert git(prepared, "status", "--porcelain") == ""
    assert git(prepared, "log", "--format=%s").splitlines() == ["Workspace created by Threadwork"]

    model.script(Turn.bash("echo one > one.txt"), Turn.text("Wrote one.txt."))
    ask(engine, "/agent write one.txt")
    engine.queue.wait(timeout=120)

    (run,) = runs_of(engine)
    assert run.state == RunState.DONE
    assert all(e.name != "cold-fallback" for e in events_of(engine, run.id))
    workspace = data / "workspaces" / "1"
    assert workspace.is_symlink() and workspace.resolve() == prepared.resolve()
    assert (prepared / "one.txt").read_text() == "one\n"
    assert ("one.txt", b"one\n") in [(f.filename, f.data) for f in view.files]
    assert marker.with_suffix(".taken").exists()
    # The server knows the directory by the run's session alone: the preparation's was deleted.
    with the_server().client() as api:
        sessions = api.get("/session", headers=directory_header(prepared)).json()
    assert [s["id"] for s in sessions if s.get("directory") == str(prepared)] == [run.session_id]
    # The next new conversation's workspace is being made ready.
    (following,) = wait_until(lambda: ready_markers(data), 60, "the next prepared workspace")
    assert following != marker


def test_only_the_server_that_prepared_a_workspace_hands_it_out_and_only_once(tmp_path: Path) -> None:
    pool = PreparedWorkspaces(tmp_path / "pool")
    for token, pid in (("old", 111), ("current", 222)):
        (pool.pool / token / ".git").mkdir(parents=True)
        (pool.pool / f"{token}.ready").write_text(str(pid))

    assert pool.take(333) is None  # a server that prepared nothing
    assert pool.take(222) == pool.pool / "current"
    assert pool.take(222) is None  # taken once
    pool.discard_stale(222)  # the earlier server's workspace goes; the taken one stays
    assert sorted(p.name for p in pool.pool.iterdir()) == ["current", "current.taken"]
