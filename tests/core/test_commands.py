"""Chat commands used wrongly get one line saying how to use them, never the whole help."""

from __future__ import annotations

from pathlib import Path

from tests.support.engines import run_bot


def test_agent_and_ask_without_a_request_show_their_usage_line(tmp_path: Path) -> None:
    result = run_bot(["chat"], tmp_path, input="/ask\n/agent   \n!agent\n")
    assert result.returncode == 0, result.stderr
    replies = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("bot[")]
    assert replies == [
        "Usage: `/ask <question>`, e.g. `/ask what does the retry logic in worker.py do?`.",
        "Usage: `/agent <task>`, e.g. `/agent add a --verbose flag to cli.py and test it`.",
        "Usage: `/agent <task>`, e.g. `/agent add a --verbose flag to cli.py and test it`.",
    ]
    # Nothing was queued for them: no run exists.
    runs = run_bot(["chat"], tmp_path, input="/runs\n")
    assert "No agent runs in this thread yet" in runs.stdout


def test_chat_help_names_the_default_thread_and_the_concurrent_flag(tmp_path: Path) -> None:
    result = run_bot(["chat", "--help"], tmp_path)
    assert result.returncode == 0
    assert "Thread to continue (default: 'main')." in " ".join(result.stdout.split())
    assert "--concurrent" in result.stdout
