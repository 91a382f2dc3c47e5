"""Structured logs: JSON lines with the ids of the work they belong to, and no secret in any of them."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.logs import bind, scoped, setup_logging
from bot.redaction import Redactor
from tests.support.engines import run_bot

SECRET = "own-configured-secret-value"
SLACK_TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp"


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """Logging set up as a command does (JSON lines, the redaction filter), into a file; restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = tmp_path / "bot.log"
    setup_logging(Redactor([SECRET]), log_file=path, level="INFO", fmt="json")
    yield path
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = saved


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_lines_carry_the_ids_bound_at_the_boundary_and_only_inside_it(log_file: Path) -> None:
    log = logging.getLogger("bot.test")

    @scoped
    def one_job() -> None:
        bind(job_id="run-7", run_id=7)
        log.info("claimed")
        bind(conversation_id=3)
        log.warning("working")

    one_job()
    log.info("between jobs")
    worker = threading.Thread(target=scoped(lambda: (bind(job_id="message-9"), log.info("elsewhere"))))
    worker.start()
    worker.join()

    claimed, working, between, elsewhere = records(log_file)
    assert claimed["message"] == "claimed" and claimed["level"] == "INFO" and claimed["logger"] == "bot.test"
    assert (claimed["job_id"], claimed["run_id"]) == ("run-7", 7) and "conversation_id" not in claimed
    assert (working["conversation_id"], working["run_id"], working["job_id"]) == (3, 7, "run-7")
    assert not {"conversation_id", "run_id", "job_id"} & set(between)  # the job's ids ended with it
    assert elsewhere["job_id"] == "message-9" and "run_id" not in elsewhere
    assert claimed["time"].endswith("+00:00") and isinstance(claimed["pid"], int)


def test_a_secret_in_a_log_message_or_traceback_comes_out_redacted(log_file: Path) -> None:
    log = logging.getLogger("bot.test")
    bind_and_log = scoped(lambda: (bind(run_id=1), log.warning("the agent printed %s and %s", SECRET, SLACK_TOKEN)))
    bind_and_log()
    try:
        raise RuntimeError(f"connecting with {SLACK_TOKEN} failed")
    except RuntimeError:
        log.exception("a job failed near %s", SECRET)

    text = log_file.read_text()
    assert SECRET not in text and SLACK_TOKEN not in text
    printed, failed = records(log_file)
    assert printed["message"] == "the agent printed [redacted] and [redacted]" and printed["run_id"] == 1
    assert failed["message"] == "a job failed near [redacted]"
    assert failed["traceback"].startswith("Traceback") and "connecting with [redacted] failed" in failed["traceback"]


def test_text_stays_the_default_format(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = tmp_path / "bot.log"
    try:
        setup_logging(Redactor([SECRET]), log_file=path, level="INFO")
        scoped(lambda: (bind(run_id=2), logging.getLogger("bot.test").info("plain %s", SECRET)))()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved
    (line,) = path.read_text().splitlines()
    assert line.endswith(" INFO bot.test: plain [redacted]") and not line.startswith("{")


def test_the_console_bot_logs_json_lines_with_the_message_and_job_ids(tmp_path: Path) -> None:
    chat = run_bot(["chat"], tmp_path, input=f"what does the nightly job do with {SLACK_TOKEN}?\n",
                   BOT_LOG_FORMAT="json", BOT_LOG_LEVEL="INFO", BOT_TRACE_PLUGINS="1")
    assert chat.returncode == 0, chat.stderr
    lines = chat.stderr.splitlines()
    assert lines and all(line.startswith("{") for line in lines), lines[:3]
    logged = [json.loads(line) for line in lines]
    assert SLACK_TOKEN not in chat.stderr
    # dispatch (the hook calls routing the message) names the conversation; the job also names itself.
    assert any(r.get("conversation_id") == 1 and "job_id" not in r and "route_message" in r["message"] for r in logged)
    assert any(r.get("conversation_id") == 1 and r.get("job_id", "").startswith("message-") for r in logged)


def test_a_live_message_edited_from_its_own_thread_keeps_the_runs_ids(log_file: Path) -> None:
    from bot.progress import LiveMessage
    from bot.types import Reply

    log = logging.getLogger("bot.test")
    flushed = threading.Event()

    def edit(message_id: str, reply: Reply) -> None:
        log.info("edited %s to %r in %s", message_id, reply.text, threading.current_thread().name)
        flushed.set()

    @scoped
    def one_run() -> None:
        bind(run_id=11, job_id="run-11")
        live = LiveMessage(post=lambda reply: "m1", edit=edit, interval=0.0, message_id="m1")
        live.update(Reply("working", partial=True))
        assert flushed.wait(30), "the live message's own thread never edited it"
        live.finish(Reply("done"))

    one_run()
    edits = [record for record in records(log_file) if record["message"].startswith("edited")]
    assert any("in live-message" in record["message"] for record in edits), edits
    assert edits and all((record["run_id"], record["job_id"]) == (11, "run-11") for record in edits)
