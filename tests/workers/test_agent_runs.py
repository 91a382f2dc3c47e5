"""Agent runs with the real opencode binary, pointed at a scripted model on 127.0.0.1."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bot.db.repositories import Conversations, Resources, Runs
from bot.types import RunState
from tests.fakes.openai_server import Turn
from tests.support.engines import WHERE, EngineBuilder, run_bot
from tests.workers.agent_support import agent_settings, ask, processes_with, requires_opencode, wait_until
from workers import agent_run

pytestmark = requires_opencode


def run_of(engine, run_id: int):
    with engine.db.reading() as session:
        return Runs(session).get(run_id)


def test_the_console_shows_a_run_through_its_states_and_the_agent_really_works(tmp_path: Path, model) -> None:
    model.script(
        Turn.write("hello.py", "print('hello from the agent')\n", usage=(900, 12)),
        Turn.bash("python3 hello.py > out.txt", usage=(950, 9)),
        Turn.text("I wrote hello.py and ran it; it prints a greeting.", usage=(1000, 14)),
    )
    settings = agent_settings(tmp_path, model)
    chat = run_bot(["chat"], tmp_path, input="/agent write hello.py that prints a greeting and run it\n",
                   BOT_MANIFEST=str(settings.manifest_path), OPENCODE_CONFIG=settings.get("OPENCODE_CONFIG"))
    assert chat.returncode == 0, chat.stderr
    out = chat.stdout
    # One status message, edited through its states, then the final answer as a reply.
    status_id = out.split("bot[", 1)[1].split("]", 1)[0]
    edits = [block for block in out.split("bot[") if block.startswith(f"{status_id}] edited")]
    assert "queued" in out.split("bot[")[1]
    assert any("running" in edit for edit in edits)
    assert "done" in edits[-1] and "✓ wrote `hello.py`" in edits[-1] and "✓ ran `python3 hello.py > out.txt`" in edits[-1]
    assert "I wrote hello.py and ran it" in out.rsplit("bot[", 1)[1]
    assert "file: hello.py" in out

    workspace = tmp_path / "data" / "workspaces" / "1"
    assert (workspace / "out.txt").read_text() == "hello from the agent\n"  # the bash tool really ran
    log = subprocess.run(["git", "log", "--format=%s"], cwd=workspace, capture_output=True, text=True).stdout
    assert log.splitlines()[0].startswith("Run 1: write hello.py")

    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "threadwork.db")
    state, tokens_in, tokens_out, session_id = db.execute(
        "select state, tokens_in, tokens_out, session_id from agent_runs").fetchone()
    assert state == "done" and tokens_in > 0 and tokens_out > 0 and session_id.startswith("ses")
    kinds = [row[0] for row in db.execute("select kind || ':' || name from run_events order by seq")]
    assert "tool:write" in kinds and "tool:bash" in kinds and "text:" in kinds and "tokens:stop" in kinds
    assert sorted(db.execute("select path from resources").fetchall()) == [("hello.py",), ("out.txt",), ("run-1.diff",)]


def test_a_follow_up_continues_the_same_opencode_session(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.write("notes.md", "first\n"), Turn.text("Wrote notes.md."),
                 Turn.text("You asked me to write notes.md earlier."))
    engine, view = make_engine(agent_settings(tmp_path, model))
    ask(engine, "/agent write notes.md")
    engine.queue.wait(timeout=120)
    with engine.db.reading() as session:
        first_session = Conversations(session).find(WHERE).agent_session_id
    assert first_session
    ask(engine, "/agent what did you do before?")
    engine.queue.wait(timeout=120)
    with engine.db.reading() as session:
        runs = Runs(session).in_conversation(Conversations(session).find(WHERE).id)
    assert [run.state for run in runs] == [RunState.DONE, RunState.DONE]
    assert runs[0].session_id == first_session  # the second run continued the first's session
    last_request = model.scripted_requests[-1]
    history = " ".join(str(m.get("content")) for m in last_request["messages"])
    assert "write notes.md" in history and "what did you do before?" in history
    # The thread's context for the agent leaves out the runs' status messages.
    assert "**Agent run" not in str(last_request["messages"][-1].get("content"))


def test_cancel_ends_the_whole_process_tree_within_five_seconds(tmp_path: Path, model,
                                                                make_engine: EngineBuilder) -> None:
    marker = f"sleep 30{int(time.time()) % 10}"  # unique enough to find in /proc
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("never reached"))
    settings = agent_settings(tmp_path, model)
    manifest = Path(settings.manifest_path)  # bo may cancel other people's runs
    manifest.write_text(manifest.read_text().replace("  cancel: []", "  cancel: [U2]"))
    engine, view = make_engine(settings)
    ask(engine, f"/agent run {marker}")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    started = time.monotonic()
    ask(engine, "/cancel", user="U2", name="bo")
    wait_until(lambda: not processes_with(marker), 5, "every process of the run to be gone")
    assert time.monotonic() - started < 5
    engine.queue.wait(timeout=30)
    run = run_of(engine, 1)
    assert run.state == RunState.CANCELLED
    status_text = view.last(view.order[0])
    assert "cancelled" in status_text and "Cancelled by bo." in status_text
    assert not processes_with(" run --format json --dir " + str(tmp_path))


def test_cancel_of_a_queued_run_and_one_run_at_a_time_per_thread(tmp_path: Path, model,
                                                                 make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("sleep 3"), Turn.text("first done"), Turn.text("second done"))
    engine, view = make_engine(agent_settings(tmp_path, model))

    def status_of(run_id: int) -> list[str]:
        ids = [m for m in view.order if view.texts(m)[0].startswith(("🕒", "⏳")) and
               f"Agent run {run_id}**" in view.texts(m)[0]]
        return view.texts(ids[0]) if ids else []

    for n, task in enumerate(("first task", "second task", "third task"), start=1):
        ask(engine, f"/agent {task}")
        wait_until(lambda n=n: status_of(n), 30, f"the status message of run {n}")
    # The later requests wait in line, and their status says so.
    assert "waiting for 1 earlier run in this thread" in status_of(2)[0]
    assert "waiting for 2 earlier runs in this thread" in status_of(3)[0]
    ask(engine, "/cancel 3")
    engine.queue.wait(timeout=120)
    with engine.db.reading() as session:
        rows = [Runs(session).get(n) for n in (1, 2, 3)]
    assert [r.state for r in rows] == ["done", "done", "cancelled"]
    assert rows[1].started_at >= rows[0].finished_at  # never two at once in one thread
    assert "Cancelled by ana before it started." in status_of(3)[-1]
    assert rows[2].started_at is None
    assert any("running" in text for text in status_of(2))


def test_a_double_delivery_never_starts_the_same_run_twice(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.text("done once"))
    engine, view = make_engine(agent_settings(tmp_path, model))
    message_id = ask(engine, "/agent do it once")
    engine.queue.wait(timeout=120)
    from workers.jobs import handle_message

    handle_message(message_id, "agent", "do it once", False)  # a redelivered job
    agent_run.run_agent(1)  # a duplicate run job
    with engine.db.reading() as session:
        conversation = Conversations(session).find(WHERE)
        assert len(Runs(session).in_conversation(conversation.id)) == 1
    assert len(model.scripted_requests) == 1


def test_the_agent_sees_none_of_the_bots_secrets(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("env > env.txt"), Turn.text("printed the environment"))
    secrets = {"SLACK_BOT_TOKEN": "xoxb-999-888-secretsecret", "DISCORD_TOKEN": "discord-secret-token-value",
               "ANTHROPIC_API_KEY": "sk-ant-api-secret-key", "DATABASE_URL": f"sqlite:///{tmp_path}/data/threadwork.db",
               "REDIS_URL": ""}
    settings = agent_settings(tmp_path, model, **secrets)
    import os

    old = {name: os.environ.get(name) for name in secrets}
    os.environ.update({k: v for k, v in secrets.items() if v})
    try:
        engine, view = make_engine(settings)
        ask(engine, "/agent print the environment")
        engine.queue.wait(timeout=120)
        engine.close()
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    seen = (tmp_path / "data" / "workspaces" / "1" / "env.txt").read_text()
    for name, value in secrets.items():
        if value:
            assert name not in seen and value not in seen
    assert "HOME=" + str(tmp_path / "data" / "agent-state" / "1" / "home") in seen
    assert "OPENCODE_DISABLE_MODELS_FETCH=1" in seen


def test_a_run_past_its_timeout_fails_and_says_so(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("sleep 120", timeout_ms=600_000), Turn.text("never"))
    engine, view = make_engine(agent_settings(tmp_path, model, manifest_extra="\n"))
    engine.manifest.agent.timeout_seconds = 10
    ask(engine, "/agent sleep for a long time")
    engine.queue.wait(timeout=120)
    run = run_of(engine, 1)
    assert run.state == RunState.FAILED and "timed out after 10 s" in run.error
    assert "Failed: timed out after 10 s" in view.last(view.order[0])
    assert not processes_with("sleep 120")
    log = next(f for f in view.files if f.filename == "run-1-log.md")  # the whole log, for a failed run
    assert b"tokens" in log.data or b"step" in log.data


def test_files_the_run_made_are_indexed(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.write("report.md", "# Report\n"), Turn.text("wrote the report"))
    engine, view = make_engine(agent_settings(tmp_path, model))
    ask(engine, "/agent write a report")
    engine.queue.wait(timeout=120)
    assert [(f.filename, f.data) for f in view.files][0] == ("report.md", b"# Report\n")
    assert [f.filename for f in view.files] == ["report.md", "run-1.diff"]
    with engine.db.reading() as session:
        rows = Resources(session).in_conversation(1)
    assert [(r.path, r.size, r.platform_file_id, r.run_id) for r in rows] == [
        ("run-1.diff", rows[0].size, "f2", 1), ("report.md", 9, "f1", 1)]
    assert view.last(view.order[-1]) == "wrote the report"


def test_with_no_model_configured_the_run_fails_at_once_saying_what_to_set(make_engine: EngineBuilder) -> None:
    engine, view = make_engine()  # no OPENCODE_CONFIG, no agent.model
    started = time.monotonic()
    ask(engine, "/agent write hello.py")
    engine.queue.wait(timeout=60)
    assert time.monotonic() - started < 30  # not opencode's minute of retries
    run = run_of(engine, 1)
    assert run.state == RunState.FAILED and "No model is configured for the coding agent" in run.error
    assert "set OPENCODE_CONFIG" in view.last(view.order[0])


def test_agent_pass_env_passes_a_model_key_but_never_platform_tokens(tmp_path: Path, model,
                                                                     make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("env > env.txt"), Turn.text("done"))
    settings = agent_settings(tmp_path, model, MODEL_KEY="model-key-value", SLACK_BOT_TOKEN="xoxb-111-222-secret")
    manifest = Path(settings.manifest_path)
    manifest.write_text(manifest.read_text().replace("pass_env: []", "pass_env: [MODEL_KEY, SLACK_BOT_TOKEN, REDIS_URL]"))
    engine, _view = make_engine(settings)
    ask(engine, "/agent print the environment")
    engine.queue.wait(timeout=120)
    engine.close()
    seen = (tmp_path / "data" / "workspaces" / "1" / "env.txt").read_text()
    assert "MODEL_KEY=model-key-value" in seen
    assert "SLACK_BOT_TOKEN" not in seen and "xoxb-111" not in seen


def test_a_symlink_to_a_host_file_is_refused_and_named_never_uploaded(tmp_path: Path, model,
                                                                      make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("ln -s /etc/passwd passwd-link && echo kept > notes.txt"), Turn.text("made a link"))
    engine, view = make_engine(agent_settings(tmp_path, model))
    ask(engine, "/agent link the passwd file")
    engine.queue.wait(timeout=120)
    host_passwd = Path("/etc/passwd").read_bytes()
    assert [(f.filename, f.data) for f in view.files][:1] == [("notes.txt", b"kept\n")]
    assert [f.filename for f in view.files] == ["notes.txt", "run-1.diff"]
    assert all(host_passwd not in f.data for f in view.files)
    posted = [view.last(m) for m in view.order]
    assert any("`passwd-link`: a symlink, not uploaded" in text for text in posted)
    assert "1 file(s) attached." in view.last(view.order[0])
    with engine.db.reading() as session:
        assert sorted(r.path for r in Resources(session).in_conversation(1)) == ["notes.txt", "run-1.diff"]


def test_a_token_the_agent_prints_is_stored_nowhere_in_the_database(tmp_path: Path, model,
                                                                    make_engine: EngineBuilder) -> None:
    token = "xoxb-5550001111-2223334444-ZyXwVuTsRqPoNmLkJiHgFeDc"
    model.script(Turn.bash(f"echo {token} > found.txt && cat found.txt"), Turn.text(f"I found {token} in the repo."))
    engine, view = make_engine(agent_settings(tmp_path, model))
    ask(engine, "/agent look for tokens")
    engine.queue.wait(timeout=120)
    assert run_of(engine, 1).state == RunState.DONE
    engine.close()  # every write of the run has landed
    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "threadwork.db")
    tables = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
    assert "run_events" in tables
    for table in tables:
        for row in db.execute(f"select * from {table}"):  # noqa: S608 - names come from sqlite_master
            assert token not in repr(row), f"the token is stored in {table}"
    raw = [row[0] for row in db.execute("select raw from run_events where kind = 'tool'")]
    assert any("[redacted]" in (value or "") for value in raw)  # the command was kept, the token not
    assert all(token not in f.data.decode(errors="replace") for f in view.files)
    assert all(token not in view.last(m) for m in view.order)
