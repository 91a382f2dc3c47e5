"""The console bot as a user runs it: `printf ... | python -m bot chat`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import run_bot


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
