"""The console bot as a user runs it: `printf ... | python -m bot chat`."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from adapters.console import MESSAGE_LIMIT
from tests.conftest import run_bot
from tests.fakes.openai_server import FakeOpenAIServer, Turn
from tests.workers.agent_support import agent_settings, requires_opencode

#: A script mixing an instant reply, an agent run and commands that read what came before.
SCRIPT = "hello\n/agent write a.txt\n/runs\n/history\n"


def test_help_lists_the_commands_and_the_overrides(tmp_path: Path) -> None:
    result = run_bot(["chat"], tmp_path, input="help\n")
    assert result.returncode == 0, result.stderr
    for command in ("/help", "/history [count]", "/threads", "/runs", "/files", "/agent <task>", "/ask <question>"):
        assert command in result.stdout
    assert result.stderr == ""


def test_messages_are_persisted_answered_and_kept_across_restarts(tmp_path: Path) -> None:
    first = run_bot(["chat"], tmp_path, input="hello\nwhat does the deploy script do?\n")
    assert first.returncode == 0, first.stderr
    assert "Hi " in first.stdout  # the greeting, answered in dispatch
    # No model is configured: the direct answer says how to configure one, it does not crash.
    assert "ANTHROPIC_API_KEY" in first.stdout

    second = run_bot(["chat"], tmp_path, input="/history\n")
    assert second.returncode == 0, second.stderr
    assert "hello" in second.stdout and "what does the deploy script do?" in second.stdout

    rows = sqlite3.connect(tmp_path / "data" / "threadwork.db").execute(
        "select m.role, m.text, d.route, d.stage from messages m left join route_decisions d on d.message_id = m.id"
        " order by m.id"
    ).fetchall()
    user_rows = [row for row in rows if row[0] == "user"]
    assert [row[1] for row in user_rows] == ["hello", "what does the deploy script do?", "/history"]
    assert user_rows[0][2:] == ("command", "pattern")
    assert user_rows[1][2:] == ("direct", "fallback")
    assert sum(1 for row in rows if row[0] == "assistant") == 3


def test_a_new_thread_starts_empty_and_threads_lists_both(tmp_path: Path) -> None:
    run_bot(["chat"], tmp_path, input="hello\n")
    fresh = run_bot(["chat", "--thread", "other"], tmp_path, input="/history\n/threads\n")
    assert "no history yet" in fresh.stdout
    assert "`main`" in fresh.stdout and "`other`" in fresh.stdout


def test_an_unknown_command_and_bad_arguments_get_a_plain_message(tmp_path: Path) -> None:
    result = run_bot(["chat"], tmp_path, input="/frobnicate\n/history lots\n")
    assert "I don't know the command `frobnicate`" in result.stdout
    assert "`lots` is not a number of messages." in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@requires_opencode
def test_a_piped_script_gives_the_same_transcript_every_time(tmp_path: Path) -> None:
    transcripts = [run_script(tmp_path / f"try{attempt}") for attempt in (1, 2)]
    assert transcripts[0] == transcripts[1]
    out = transcripts[0]
    # Each line's work is done before the next line is read: the order follows the script.
    order = ["Hi ", "Agent run 1** · queued", "Agent run 1** · done", "Wrote a.txt.", "Agent runs in this thread:",
             "message(s) in this thread:"]
    positions = [out.index(text) for text in order]
    assert positions == sorted(positions), out
    runs_reply = out.split("Agent runs in this thread:", 1)[1].split("bot[", 1)[0]
    assert re.search(r"run 1 .*\*\*done\*\*", runs_reply), out
    history_reply = out.split("message(s) in this thread:", 1)[1]
    assert "Wrote a.txt." in history_reply and "/runs" in history_reply
    # The run's stages are shown once each, not every tick of its clock.
    assert out.count("Agent run 1** · running") == 1


def run_script(tmp_path: Path) -> str:
    """Pipe `SCRIPT` into `bot chat` on fresh state; return its output with ids, paths and clocks made neutral."""
    tmp_path.mkdir()
    model = FakeOpenAIServer().start()
    try:
        model.script(Turn.write("a.txt", "hello\n"), Turn.text("Wrote a.txt."))
        settings = agent_settings(tmp_path, model)
        result = run_bot(["chat"], tmp_path, input=SCRIPT, BOT_MANIFEST=str(settings.manifest_path),
                         OPENCODE_CONFIG=settings.get("OPENCODE_CONFIG"))
    finally:
        model.stop()
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace(str(tmp_path), "<tmp>")
    out = re.sub(r"bot\[[0-9a-f]{4}-", "bot[<session>-", out)  # message ids: a random session prefix
    out = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d", "<when>", out)
    return re.sub(r"· \d+:\d\d(:\d\d)? ·", "· <elapsed> ·", out)


def test_a_line_over_the_limit_is_refused_saying_so_and_the_chat_goes_on(tmp_path: Path) -> None:
    too_long = "y" * (MESSAGE_LIMIT + 1)
    result = run_bot(["chat"], tmp_path, input=f"{too_long}\nhello\n")
    assert result.returncode == 0, result.stderr
    assert f"! Not sent: that message is {MESSAGE_LIMIT + 1:,} characters; the console sends at most " \
           f"{MESSAGE_LIMIT:,}." in result.stdout
    assert "Hi " in result.stdout
    texts = sqlite3.connect(tmp_path / "data" / "threadwork.db").execute(
        "select text from messages where role = 'user'").fetchall()
    assert texts == [("hello",)]


def test_concurrent_sends_each_line_at_once_and_still_waits_at_the_end(tmp_path: Path) -> None:
    result = run_bot(["chat", "--concurrent"], tmp_path, input="hello\nwhat does the deploy script do?\n")
    assert result.returncode == 0, result.stderr
    assert "Hi " in result.stdout and "ANTHROPIC_API_KEY" in result.stdout
