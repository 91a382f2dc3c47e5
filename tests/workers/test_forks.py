"""Fork and merge: `/fork` branches a thread (workspace, agent session, links), `/merge` brings it back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bot.db.repositories import Conversations, Resources, Runs
from bot.engine import Engine
from bot.types import Conversation, RunState, ThreadRef
from plugins.agents.opencode_server import directory_header, running_servers, stop_all
from plugins.agents.opencode_sessions import DATABASE
from tests.fakes.openai_server import FakeOpenAIServer, Turn, is_side_request
from tests.support.engines import WHERE, EngineBuilder, message
from tests.support.ports import RecordingPort
from tests.workers.agent_support import agent_settings, ask, requires_opencode, wait_until, warm_settings
from workers.workspace import commit_run, prepare


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def workspace(engine: Engine, conversation_id: int) -> Path:
    return engine.settings.data_dir / "workspaces" / str(conversation_id)


def say(engine: Engine, view: RecordingPort, text: str, where: ThreadRef = WHERE, user: str = "U1") -> str:
    """Dispatch a line as ana; return the text of the last message the thread got."""
    engine.dispatch(message(text, user, where))
    return view.last(view.order[-1])


def forks_of(engine: Engine, conversation_id: int) -> list[Conversation]:
    with engine.db.reading() as session:
        return Conversations(session).forks_of(conversation_id)


@pytest.fixture
def thread(make_engine: EngineBuilder) -> tuple[Engine, RecordingPort, Conversation]:
    """A thread whose workspace holds a.txt, committed as a run would have."""
    engine, view = make_engine(manifest={"permissions": {"agent": ["U1"]}})
    conversation = engine.inbox.conversation(WHERE, "try things")
    prepare(workspace(engine, conversation.id), None)
    (workspace(engine, conversation.id) / "a.txt").write_text("one\n")
    commit_run(workspace(engine, conversation.id), 1, "write a.txt")
    return engine, view, conversation


def test_fork_clones_the_workspace_links_both_threads_and_threads_shows_the_tree(thread) -> None:
    engine, view, parent = thread
    reply = say(engine, view, "/fork")
    [child] = forks_of(engine, parent.id)
    assert child.forked_from_id == parent.id and child.where.channel == WHERE.channel
    assert (workspace(engine, child.id) / "a.txt").read_text() == "one\n"
    assert git(workspace(engine, child.id), "log", "-1", "--format=%s").strip() == "Run 1: write a.txt"
    # The parent gets a line linking the fork; the fork opens with a link back and where it starts.
    assert f"Forked into thread `{child.where.thread}` (fork 1)" in reply and "/merge 1" in reply
    opening = "\n".join(view.posts)
    assert "🍴 Fork of thread `T1` by ana" in opening
    assert "Forked from thread `T1` by ana, at commit" in opening and "Run 1: write a.txt" in opening
    assert not list(workspace(engine, parent.id).parent.glob(".fork-of-*"))  # no staging clone left behind
    say(engine, view, "/fork")
    tree = say(engine, view, "/threads")
    lines = tree.splitlines()
    parent_line = next(i for i, line in enumerate(lines) if line.startswith("- `T1`"))
    assert lines[parent_line + 1].startswith("  - fork 1: ") and lines[parent_line + 2].startswith("  - fork 2: ")


def test_diff_then_merge_bring_the_forks_file_and_a_conflict_is_aborted_losing_nothing(thread) -> None:
    engine, view, parent = thread
    say(engine, view, "/fork")
    [child] = forks_of(engine, parent.id)
    fork_ws, parent_ws = workspace(engine, child.id), workspace(engine, parent.id)
    (fork_ws / "b.txt").write_text("two\n")
    commit_run(fork_ws, 2, "add b.txt")

    shown = say(engine, view, "/diff")
    assert "1 file(s), +1 −0" in shown and "- `b.txt` +1 −0" in shown and "Nothing is merged" in shown
    assert not (parent_ws / "b.txt").exists()
    assert view.files[-1].filename.endswith(".diff") and b"+two" in view.files[-1].data

    merged = say(engine, view, "/merge 1")
    assert "Merged fork 1" in merged and "- `b.txt` +1 −0" in merged
    assert (parent_ws / "b.txt").read_text() == "two\n"
    assert git(parent_ws, "log", "-1", "--format=%s %p").startswith("Merge fork 1")
    assert len(git(parent_ws, "log", "-1", "--format=%p").split()) == 2  # a merge commit, never a fast-forward
    with engine.db.reading() as session:
        kinds = [(r.kind, r.path) for r in Resources(session).in_conversation(parent.id)]
    assert ("diff", f"merge-fork-1-of-{parent.id}.diff") in kinds
    assert say(engine, view, "/merge").startswith("Fork 1 (thread") and "nothing to merge" in view.last(view.order[-1])

    # Both sides change the same line differently: reported by file, aborted, both kept.
    (parent_ws / "a.txt").write_text("parent\n")
    commit_run(parent_ws, 3, "parent edit")
    (fork_ws / "a.txt").write_text("fork\n")
    commit_run(fork_ws, 4, "fork edit")
    head_before = git(parent_ws, "rev-parse", "HEAD")
    refused = say(engine, view, "/merge")
    assert "Not merged" in refused and "`a.txt`" in refused and "aborted" in refused
    assert (parent_ws / "a.txt").read_text() == "parent\n" and (fork_ws / "a.txt").read_text() == "fork\n"
    assert git(parent_ws, "rev-parse", "HEAD") == head_before
    assert git(parent_ws, "status", "--porcelain") == "" and not (parent_ws / ".git" / "MERGE_HEAD").exists()


def test_bad_input_and_races_get_one_sentence_and_change_nothing(thread, make_engine: EngineBuilder) -> None:
    engine, view, parent = thread
    assert "This thread has no forks: `/fork [what to try]` makes one." in say(engine, view, "/merge")
    say(engine, view, "/fork")
    [child] = forks_of(engine, parent.id)
    assert "This thread has no fork `nope`" in say(engine, view, "/merge nope")
    assert "is itself a fork of thread `T1`" in say(engine, view, "/merge", where=child.where)
    assert "agent permission" in say(engine, view, "/merge", user="U2")
    # A run queued in the fork, or in this thread, holds the merge back until it ends.
    with engine.db.session() as session:
        run, _ = Runs(session).create(child.id, "opencode", "keep working")
    assert f"Not merging while run {run.id} in fork 1 is queued" in say(engine, view, "/merge")
    with engine.db.session() as session:
        Runs(session).transition(run.id, RunState.CANCELLED, allowed_from=(RunState.QUEUED,))
        here, _ = Runs(session).create(parent.id, "opencode", "more here")
        Runs(session).transition(here.id, RunState.RUNNING, allowed_from=(RunState.QUEUED,))
    assert f"Not merging while run {here.id} in this thread is running" in say(engine, view, "/merge")
    # `/fork` while a run is going on starts from the last finished state, and says so.
    assert f"Run {here.id} was still running there" in say(engine, view, "/fork")
    with engine.db.session() as session:
        Runs(session).transition(here.id, RunState.DONE, allowed_from=(RunState.RUNNING,))
    # A fork whose workspace is gone; a thread with no workspace at all.
    import shutil

    shutil.rmtree(workspace(engine, child.id))
    assert "Fork 1's workspace is gone" in say(engine, view, "/merge 1")
    assert "no workspace yet" in say(engine, view, "/fork", where=ThreadRef("test", "C1", "T9"))
    assert git(workspace(engine, parent.id), "status", "--porcelain") == ""


@requires_opencode
def test_fork_and_merge_end_to_end_with_opencode_and_a_forked_session(tmp_path: Path,
                                                                       make_engine: EngineBuilder) -> None:
    model = FakeOpenAIServer().start()
    try:
        model.script(Turn.write("a.txt", "one\n"), Turn.text("Wrote a.txt."),
                     Turn.write("b.txt", "two\n"), Turn.text("Wrote b.txt."))
        engine, view = make_engine(agent_settings(tmp_path, model))
        ask(engine, "/agent write a.txt")
        engine.queue.wait(timeout=120)
        with engine.db.reading() as session:
            parent = Conversations(session).find(WHERE)
            parent_session = Runs(session).in_conversation(parent.id)[0].session_id
        assert (workspace(engine, parent.id) / "a.txt").read_text() == "one\n"

        reply = say(engine, view, "/fork add b.txt")
        assert "The agent is starting on: add b.txt." in reply
        [child] = forks_of(engine, parent.id)
        wait_until(lambda: _runs(engine, child.id) and _runs(engine, child.id)[0].state.is_final, 120,
                   "the fork's run to end")
        engine.queue.wait(timeout=60)
        fork_run = _runs(engine, child.id)[0]
        assert fork_run.state == RunState.DONE, fork_run.error
        # The fork's run forked the parent's session: the model saw the parent's request, in a new session.
        fork_request = [body for body in model.scripted_requests if not is_side_request(body)][-1]
        history = " ".join(str(m.get("content")) for m in fork_request["messages"])
        assert "write a.txt" in history and "add b.txt" in history
        assert fork_run.session_id and fork_run.session_id != parent_session
        assert (workspace(engine, child.id) / "b.txt").read_text() == "two\n"
        assert not (workspace(engine, parent.id) / "b.txt").exists()  # the fork worked in its own workspace

        merged = say(engine, view, "/merge")
        assert "Merged fork 1" in merged and "- `b.txt` +1 −0" in merged
        assert (workspace(engine, parent.id) / "b.txt").read_text() == "two\n"
        assert git(workspace(engine, parent.id), "log", "-1", "--format=%s").startswith("Merge fork 1")
        assert view.files[-1].filename == f"merge-fork-1-of-{parent.id}.diff" and b"+two" in view.files[-1].data

        # The agent changes the same line on both sides: the merge names the file and keeps both.
        model.script(Turn.write("a.txt", "parent\n"), Turn.text("Changed a.txt here."),
                     Turn.write("a.txt", "fork\n"), Turn.text("Changed a.txt in the fork."))
        ask(engine, "/agent change a.txt")
        engine.queue.wait(timeout=120)
        engine.dispatch(message("/agent change a.txt differently", where=child.where))
        wait_until(lambda: all(run.state.is_final for run in _runs(engine, child.id)), 120, "the fork's second run")
        engine.queue.wait(timeout=60)
        refused = say(engine, view, "/merge")
        assert "Not merged" in refused and "`a.txt`" in refused
        assert (workspace(engine, parent.id) / "a.txt").read_text() == "parent\n"
        assert (workspace(engine, child.id) / "a.txt").read_text() == "fork\n"
        assert git(workspace(engine, parent.id), "status", "--porcelain") == ""
    finally:
        model.stop()


@requires_opencode
def test_a_warm_fork_forks_the_parents_session_on_the_server_and_the_parent_does_not_see_the_fork(
        tmp_path: Path, make_engine: EngineBuilder) -> None:
    model = FakeOpenAIServer().start()
    try:
        model.script(Turn.write("a.txt", "one\n"), Turn.text("Wrote a.txt."),
                     Turn.write("b.txt", "two\n"), Turn.text("Wrote b.txt."),
                     Turn.text("Here only a.txt was written."))
        engine, view = make_engine(warm_settings(tmp_path, model))
        assert engine.manifest.agent.mode == "warm"
        engine.agents["opencode"].warm_up()  # as `chat`, `run` and every worker do at start
        [server] = running_servers()
        wait_until(lambda: server.alive() and server.healthy(), 90, "the warm server to be ready")
        ask(engine, "/agent write a.txt")
        engine.queue.wait(timeout=120)
        with engine.db.reading() as session:
            parent = Conversations(session).find(WHERE)
        [parent_run] = _runs(engine, parent.id)
        assert parent_run.state == RunState.DONE and parent_run.session_id, parent_run.error
        assert not (tmp_path / "data" / "agent-state" / str(parent.id) / DATABASE).exists()  # warm: the server's

        reply = say(engine, view, "/fork add b.txt")
        assert "The agent is starting on: add b.txt." in reply
        [child] = forks_of(engine, parent.id)
        assert "The agent continues a copy of that thread's session" in "\n".join(view.posts)
        wait_until(lambda: _runs(engine, child.id) and _runs(engine, child.id)[0].state.is_final, 120,
                   "the fork's run to end")
        engine.queue.wait(timeout=60)
        fork_run = _runs(engine, child.id)[0]
        assert fork_run.state == RunState.DONE, fork_run.error
        with engine.db.reading() as session:
            names = [event.name for event in Runs(session).events(fork_run.id)]
            assert Conversations(session).get(child.id).agent_session_id == fork_run.session_id
        assert "cold-fallback" not in names  # forked on the warm server, not by `opencode run --fork`
        assert not (tmp_path / "data" / "agent-state" / str(child.id) / DATABASE).exists()
        # The fork's run continued the parent's history, in a session of its own, homed in its workspace.
        fork_request = [body for body in model.scripted_requests if not is_side_request(body)][-1]
        history = " ".join(str(m.get("content")) for m in fork_request["messages"])
        assert "write a.txt" in history and "Wrote a.txt." in history and "add b.txt" in history
        assert fork_run.session_id.startswith("ses") and fork_run.session_id != parent_run.session_id
        with server.client() as api:
            forked = api.get(f"/session/{fork_run.session_id}", headers=directory_header(workspace(engine, child.id)))
        assert forked.json()["directory"] == str(workspace(engine, child.id))
        assert (workspace(engine, child.id) / "b.txt").read_text() == "two\n"
        assert not (workspace(engine, parent.id) / "b.txt").exists()

        # The parent's next run continues its own session, which has none of the fork's exchange.
        ask(engine, "/agent what did you write?")
        engine.queue.wait(timeout=120)
        again = _runs(engine, parent.id)[0]
        assert again.state == RunState.DONE and again.session_id == parent_run.session_id, again.error
        parent_request = [body for body in model.scripted_requests if not is_side_request(body)][-1]
        history = " ".join(str(m.get("content")) for m in parent_request["messages"])
        assert "write a.txt" in history and "what did you write?" in history
        # (the bot's recalled context may quote the fork's thread; the session itself has only its own turns)
        turns = parent_request["messages"]
        agent_turns = json.dumps([m for m in turns if m.get("role") in ("assistant", "tool")])
        assert "Wrote a.txt." in agent_turns and "b.txt" not in agent_turns
        assert len([m for m in turns if m.get("role") == "user"]) == 2  # its first prompt and this one
    finally:
        model.stop()
        stop_all()


@requires_opencode
def test_a_warm_fork_whose_first_run_is_cold_copies_the_parents_session_then(tmp_path: Path,
                                                                              make_engine: EngineBuilder) -> None:
    model = FakeOpenAIServer().start()
    try:
        model.script(Turn.write("a.txt", "one\n"), Turn.text("Wrote a.txt."),
                     Turn.write("b.txt", "two\n"), Turn.text("Wrote b.txt."))
        engine, view = make_engine(warm_settings(tmp_path, model))
        engine.agents["opencode"].warm_up()
        [server] = running_servers()
        wait_until(lambda: server.alive() and server.healthy(), 90, "the warm server to be ready")
        ask(engine, "/agent write a.txt")
        engine.queue.wait(timeout=120)
        with engine.db.reading() as session:
            parent = Conversations(session).find(WHERE)
        [parent_run] = _runs(engine, parent.id)
        assert parent_run.state == RunState.DONE, parent_run.error
        say(engine, view, "/fork")
        [child] = forks_of(engine, parent.id)
        engine.manifest.agent.mode = "cold"  # the fork's first run takes `opencode run --fork`
        engine.dispatch(message("/agent add b.txt", where=child.where))
        wait_until(lambda: _runs(engine, child.id) and _runs(engine, child.id)[0].state.is_final, 120,
                   "the fork's run to end")
        engine.queue.wait(timeout=60)
        fork_run = _runs(engine, child.id)[0]
        assert fork_run.state == RunState.DONE, fork_run.error
        assert (tmp_path / "data" / "agent-state" / str(child.id) / DATABASE).exists()  # copied for the cold run
        fork_request = [body for body in model.scripted_requests if not is_side_request(body)][-1]
        assert "Wrote a.txt." in json.dumps(fork_request["messages"])
        assert fork_run.session_id and fork_run.session_id != parent_run.session_id
        assert (workspace(engine, child.id) / "b.txt").read_text() == "two\n"
        assert not (workspace(engine, parent.id) / "b.txt").exists()
    finally:
        model.stop()
        stop_all()


def _runs(engine: Engine, conversation_id: int):
    with engine.db.reading() as session:
        return Runs(session).in_conversation(conversation_id)


def test_a_discord_fork_is_a_new_thread_in_the_channel_opened_with_its_first_message(
        discord_server, make_engine: EngineBuilder) -> None:
    from bot.queue import InProcessQueue

    engine, _ = make_engine(queue=InProcessQueue(), DISCORD_TOKEN=discord_server.token, **discord_server.env)
    port = engine.port_for("discord")
    try:
        where = ThreadRef("discord", discord_server.channel_id, discord_server.channel_id)
        opened = engine.open_thread(where, "🍴 Fork of <#1> by ana: add b.txt")
        assert opened.channel == discord_server.channel_id and opened.thread in discord_server.threads
        assert discord_server.threads[opened.thread]["name"].startswith("🍴 Fork of")
        assert [m.content for m in discord_server.messages_in(opened.thread)] == ["🍴 Fork of <#1> by ana: add b.txt"]
    finally:
        port.close()


def test_a_slack_fork_is_a_new_top_level_message_by_the_bot_whose_ts_is_the_thread(slack_server) -> None:
    from adapters.slack_port import SlackPort
    from tests.fakes.slack_fixtures import bolt_web_client

    port = SlackPort(bolt_web_client(slack_server))
    opened = port.open_thread(ThreadRef("slack", "C0DEV", "1700000000.000100"), "🍴 Fork of the thread: add b.txt")
    assert opened.channel == "C0DEV" and opened.thread
    [first] = slack_server.messages_in_thread("C0DEV", opened.thread)
    assert first.thread_ts is None and "Fork of the thread" in first.text  # top-level: it starts the thread
