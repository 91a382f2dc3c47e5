"""Jobs on a real redis-server, executed by a real `python -m bot worker` process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from redis import Redis
from rq.job import Job

from tests.support.engines import REPO, EngineBuilder, bot_env, message, run_bot


def start_worker(tmp_path: Path, redis_url: str, name: str) -> tuple[subprocess.Popen[str], str]:
    """Start `python -m bot worker` and return it with the ready line it printed."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot", "worker", "--name", name],
        env=bot_env(tmp_path, REDIS_URL=redis_url), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    assert worker.stdout is not None
    return worker, worker.stdout.readline()


def test_a_message_enqueued_on_redis_is_answered_by_a_worker_process(tmp_path: Path, redis_url: str) -> None:
    worker, ready = start_worker(tmp_path, redis_url, "test-worker-1")
    try:
        # One line when it listens: which worker, which queue, where, and the agent it runs.
        assert ready.startswith("worker ready: test-worker-1 on queue 'threadwork' at redis://127.0.0.1:")
        assert "agent opencode (" in ready
        doctor = run_bot(["doctor", "--offline"], tmp_path, REDIS_URL=redis_url)
        assert "ok   workers   1 worker listening" in doctor.stdout
        chat = run_bot(["chat"], tmp_path, input="what does the nightly job do?\n", REDIS_URL=redis_url)
        assert chat.returncode == 0, chat.stderr
        # The worker's answer travelled back to this terminal through Redis.
        assert "ANTHROPIC_API_KEY" in chat.stdout

        db = sqlite3.connect(tmp_path / "data" / "threadwork.db")
        (message_id,) = db.execute("select id from messages where text = 'what does the nightly job do?'").fetchone()
        replies = db.execute("select text from messages where reply_to_id = ?", (message_id,)).fetchall()
        assert len(replies) == 1 and "ANTHROPIC_API_KEY" in replies[0][0]

        job = Job.fetch(f"message-{message_id}", connection=Redis.from_url(redis_url))
        assert job.get_status().value == "finished"
        assert job.worker_name == "test-worker-1"
    finally:
        worker.terminate()
        worker.wait(20)
    assert worker.returncode is not None


def test_the_same_job_id_is_not_enqueued_twice(redis_url: str) -> None:
    from bot.queue import RedisQueue

    queue = RedisQueue(redis_url, name="dedupe-test")
    try:
        assert queue.enqueue("workers.jobs.handle_message", 1, "direct", "x", False, job_id="message-dedupe-1")
        assert not queue.enqueue("workers.jobs.handle_message", 1, "direct", "x", False, job_id="message-dedupe-1")
        assert queue.rq.count == 1
    finally:
        queue.rq.empty()
        queue.close()


def test_an_unreachable_redis_is_one_plain_line(tmp_path: Path) -> None:
    result = run_bot(["chat"], tmp_path, input="what is up?\n", REDIS_URL="redis://127.0.0.1:1/0")
    assert result.stderr.splitlines() == [
        "error: cannot reach Redis at REDIS_URL (ConnectionError); start redis-server or unset REDIS_URL to run "
        "jobs in-process"
    ]
    assert result.returncode == 2


def test_with_no_worker_listening_the_thread_and_doctor_say_so(tmp_path: Path, redis_url: str,
                                                                make_engine: EngineBuilder) -> None:
    from bot.engine import NO_WORKER

    engine, view = make_engine(REDIS_URL=redis_url)
    engine.receive(message("what does the nightly job do?"))
    engine.close()
    assert [view.last(m) for m in view.order] == [NO_WORKER]
    doctor = run_bot(["doctor", "--offline"], tmp_path, REDIS_URL=redis_url)
    assert "FAIL workers   no worker is listening" in doctor.stdout
    assert "fix: start `python -m bot worker`" in doctor.stdout
    assert doctor.stderr.strip().splitlines() == ["error: 1 check failed: workers"] and doctor.returncode == 2


def test_piped_chat_with_no_worker_says_so_and_does_not_hang(tmp_path: Path, redis_url: str) -> None:
    from bot.engine import NO_WORKER

    chat = run_bot(["chat"], tmp_path, input="what does the nightly job do?\nhelp\n", REDIS_URL=redis_url, timeout=60)
    assert chat.returncode == 0, chat.stderr
    lines = chat.stdout.splitlines()
    assert any(line.endswith(NO_WORKER) for line in lines)
    assert any("/history" in line for line in lines)  # the next line was still handled: the help came


def test_run_with_no_worker_listening_says_so_at_start(tmp_path: Path, redis_url: str) -> None:
    from tests.adapters.test_platform_registry import TOY_TOKEN, toy_manifest

    result = run_bot(["run"], tmp_path, BOT_MANIFEST=str(toy_manifest(tmp_path)), TOY_TOKEN=TOY_TOKEN,
                     TOY_OUTBOX=str(tmp_path / "outbox.jsonl"), REDIS_URL=redis_url)
    assert ("queue: no worker is running, so answers and agent runs will wait: start `python -m bot worker`"
            in result.stderr.splitlines()), result.stderr


def test_a_job_left_in_a_gone_workers_own_queue_is_given_to_another_worker(tmp_path: Path, redis_url: str) -> None:
    """A follow-up routed to the worker holding its conversation's session waits in that worker's
    own queue; if that worker died meanwhile, the reaper's pass hands the job to any worker."""
    from rq import Queue

    from bot.queue import RedisQueue, worker_queue

    queue = RedisQueue(redis_url)
    worker, _ = start_worker(tmp_path, redis_url, "other-worker")
    try:
        stranded = Queue(worker_queue("gone-worker"), connection=queue.connection).enqueue("os.getpid",
                                                                                          job_id="run-stranded")
        assert not queue.wait(["run-stranded"], timeout=2)  # nobody takes another worker's own jobs
        assert queue.rescue_stranded(older_than_s=0) == ["run-stranded"]
        assert queue.wait(["run-stranded"], timeout=30)
        stranded.refresh()
        assert stranded.get_status().value == "finished" and stranded.worker_name == "other-worker"
        assert queue.rescue_stranded(older_than_s=0) == []
    finally:
        worker.terminate()
        worker.wait(20)
        queue.close()
