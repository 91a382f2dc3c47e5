"""The built-in routers and direct answers as a user meets them: `bot chat` and `bot route`, in subprocesses."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from plugins.answer.claude import WRITING_MARK
from tests.fakes.anthropic_server import Block, FakeAnthropicServer, default_answer, forced_tool
from tests.fakes.anthropic_server import Reply as ScriptedReply
from tests.support.engines import run_bot

QUESTION = "can you explain what a race condition is?"
ANSWER = ("A race condition is a bug where the outcome depends on the timing of threads or processes that "
          "touch shared state. Guard the state with a lock, or stop sharing it.")


def test_a_streamed_answer_arrives_in_the_console_as_edits_and_is_persisted(
        tmp_path: Path, anthropic_server: FakeAnthropicServer) -> None:
    # Answers stream slowly enough for the one-edit-a-second throttle to show several versions;
    # a classification (should one be asked) gets the schema's default.
    anthropic_server.set_default(lambda body: default_answer(body) if forced_tool(body) else
                                 ScriptedReply([Block("text", text=ANSWER)], chunk_size=8, delay=0.12))
    # --concurrent prints every edit as it lands (the default piped mode prints each stage once).
    result = run_bot(["chat", "--concurrent"], tmp_path, input=f"{QUESTION}\n", **anthropic_server.env())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr

    lines = [line for line in result.stdout.splitlines() if line.startswith("bot[")]
    message_id = re.match(r"bot\[([^\]]+)\]", lines[0]).group(1)
    assert lines[0] == f"bot[{message_id}]: {WRITING_MARK}"
    edits = [line.split(" edited: ", 1)[1] for line in lines if line.startswith(f"bot[{message_id}] edited: ")]
    assert len(edits) >= 3, result.stdout
    assert all(edit.endswith(WRITING_MARK) for edit in edits[:-1])
    assert edits[-1] == ANSWER
    # What a reader sees: every partial edit is the start of the answer, and the last is all of it.
    partial = [edit.removesuffix(WRITING_MARK).rstrip() for edit in edits[:-1]]
    assert all(ANSWER.startswith(text) for text in partial), partial

    database = sqlite3.connect(tmp_path / "data" / "threadwork.db")
    (stored,) = database.execute(
        "select r.text from messages r join messages q on r.reply_to_id = q.id where q.text = ?", (QUESTION,)
    ).fetchall()
    assert stored == (ANSWER,)
    assert anthropic_server.bodies[-1]["stream"]


LINES = ["fix the typo in README.md", "what does idempotent mean?", "thanks!", "/history",
         "how does our auth middleware decide that a token is expired?"]


def test_bot_route_explains_each_decision_with_no_api_key(tmp_path: Path) -> None:
    result = run_bot(["route"], tmp_path, input="".join(f"{line}\n" for line in LINES))
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["text"] for d in decisions] == LINES
    assert [(d["route"], d["stage"]) for d in decisions] == [
        ("agent", "heuristics"), ("direct", "heuristics"), ("command", "pattern"), ("command", "explicit"),
        ("direct", "fallback")]
    for d in decisions:
        assert set(d) >= {"text", "route", "stage", "confidence", "reason"}
    assert [d.get("llm") for d in decisions] == [None] * 4 + ["skipped: no ANTHROPIC_API_KEY"]
    assert not (tmp_path / "data" / "threadwork.db").exists()  # the bot's own database is untouched


def test_bot_route_asks_the_llm_stage_only_about_undecided_lines(
        tmp_path: Path, anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.tool_use("choose_route", {"route": "agent", "confidence": 0.9,
                                                      "reason": "needs to read the auth middleware"})
    result = run_bot(["route"], tmp_path, input="".join(f"{line}\n" for line in LINES), **anthropic_server.env())
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.splitlines()[-1])
    assert last == {"text": LINES[-1], "route": "agent", "stage": "llm", "confidence": 0.9,
                    "reason": "needs to read the auth middleware"}
    assert len(anthropic_server.message_requests) == 1
