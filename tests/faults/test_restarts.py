"""Durable work: a run lost with its worker is tried once more when `agent.retry_lost_runs` is on,
and a question whose worker died mid-answer is answered once by another worker.

A real `python -m bot worker` on a real Redis runs the real opencode; the test SIGKILLs the
work-horse and its worker in the middle of the run. A second worker's reaper notices the run's
heartbeat stopped, puts the run back in the queue as its second attempt, says so in the status
message, and runs it to the end. (Without the setting the run is failed and the thread told:
tests/workers/test_agent_runs_redis.py, test_a_killed_worker_leaves_no_run_shown_as_running.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import yaml
from sqlalchemy import text

from adapters.slack import SlackPort
from bot.db import Database
from bot.db.repositories import Runs
from bot.engine import Engine
from bot.types import Message, RunState, ThreadRef
from tests.adapters.test_slack import CHANNEL
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.openai_server import Turn
from tests.fakes.slack_fixtures import bolt_web_client
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.support.engines import REPO, EngineBuilder, bot_env, make_settings, run_bot
from tests.support.processes import kill, start_bot, start_worker, stop
from tests.workers.agent_support import agent_settings, processes_with, requires_opencode, wait_until
from tests.workers.toy_agent import LONG_LINES
from workers.reaper import process_alive, reap

pytestmark = requires_opencode


def test_a_run_lost_with_its_worker_is_retried_once_and_finishes(tmp_path: Path, model,
                                                                 redis_url: str, make_engine: EngineBuilder) -> None:
    marker = "sleep 296"
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("Done on the second attempt."))
    slack = FakeSlackServer().start()
    settings = agent_settings(tmp_path, model, REDIS_URL=redis_url, SLACK_BOT_TOKEN=slack.bot_token,
                              SLACK_API_URL=slack.api_url.rstrip("/"))
    manifest = Path(settings.manifest_path)
    data = yaml.safe_load(manifest.read_text())
    data["agent"].update(stale_after_seconds=5, retry_lost_runs=True, mode="cold")
    manifest.write_text(yaml.safe_dump(data))
    doomed = start_worker(settings, "doomed-worker")
    engine, _ = make_engine(settings)
    rescuer = None
    try:
        where = ThreadRef("slack", CHANNEL, "1700000000.000100")
        engine.dispatch(Message(where=where, text=f"/agent run {marker}", user_id="U1", user_name="ana"))
        wait_until(lambda: processes_with(marker, starting=True), 90, "the agent's sleep to start in the worker")
        with engine.db.reading() as session:
            horse = int(Runs(session).get(1).worker.rsplit(":", 1)[1])
        os.kill(horse, signal.SIGKILL)
        kill(doomed)
        wait_until(lambda: not processes_with(marker), 10, "every process of the run to die with its worker")
        rescuer = start_worker(settings, "rescuer-worker")

        def run() -> tuple[str, int]:
            with engine.db.reading() as session:
                return tuple(session.execute(text("select state, attempt from agent_runs where id = 1")).one())

        wait_until(lambda: run()[0] == RunState.DONE, 120, "the second attempt to finish")
        answers = wait_until(lambda: [m for m in slack.messages_in_thread(CHANNEL, where.thread)
                                      if m.text == "Done on the second attempt."], 30, "the answer in the thread")
    finally:
        stop(doomed)
        if rescuer:
            stop(rescuer)
        slack.stop()
    assert run() == (RunState.DONE.value, 2)
    assert len(answers) == 1
    (status,) = [m for m in slack.messages_in_thread(CHANNEL, where.thread) if m.blocks]
    notes = [version.text for version in status.versions]
    assert any("The worker running it stopped" in note and "Trying again (attempt 2)" in note for note in notes)
    assert "done" in notes[-1]


def test_a_question_whose_worker_died_mid_answer_is_answered_once_by_another(
        tmp_path: Path, redis_url: str, make_engine: EngineBuilder, anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.hang(120).text("A monad is a way to chain computations.")
    with FakeSlackServer() as slack:
        settings = make_settings(tmp_path, REDIS_URL=redis_url, SLACK_BOT_TOKEN=slack.bot_token,
                                 SLACK_API_URL=slack.api_url.rstrip("/"), **anthropic_server.env())
        doomed = start_worker(settings, "doomed-worker")
        engine, _ = make_engine(settings)
        rescuer = None
        try:
            where = ThreadRef("slack", CHANNEL, "1700000000.000200")
            engine.dispatch(Message(where=where, text="/ask what is a monad?", user_id="U1", user_name="ana"))
            wait_until(lambda: anthropic_server.message_requests, 60, "the worker to ask the model")
            kill(doomed)  # the worker and its work-horse, mid-answer
            rescuer = start_worker(settings, "rescuer-worker")
            answers = wait_until(lambda: [m for m in slack.messages_in_thread(CHANNEL, where.thread)
                                          if m.text == "A monad is a way to chain computations."], 120,
                                 "another worker to answer the question")
        finally:
            stop(doomed)
            if rescuer:
                stop(rescuer)
    assert len(answers) == 1
    assert len(anthropic_server.message_requests) == 2  # the lost try, and the one that answered


def test_a_killed_worker_restarts_under_its_name_and_a_live_name_is_refused(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, REDIS_URL=redis_url)
    first = start_worker(settings, "worker-1")
    try:
        wait_until(lambda: worker_names(redis_url) == {"worker-1"}, 60, "worker-1 to register")
        twin = run_bot(["worker", "--name", "worker-1", "--burst"], tmp_path, timeout=60, REDIS_URL=redis_url)
        assert twin.returncode != 0 and "a worker named worker-1 is already registered" in twin.stderr
        assert "Traceback" not in twin.stderr
        kill(first)  # RQ keeps it registered for minutes
        again = run_bot(["worker", "--name", "worker-1", "--burst"], tmp_path, timeout=60, REDIS_URL=redis_url)
        assert again.returncode == 0, again.stderr
        assert "worker ready: worker-1" in again.stderr and "taking its name back" in again.stderr
    finally:
        stop(first)


def toy_manifest(tmp_path: Path, **agent: object) -> Path:
    """Write a manifest whose agent is the toy CLI agent (tests/workers/toy_agent_plugin), with
    these `agent` settings; return its path."""
    manifest = yaml.safe_load((REPO / "manifest.yml").read_text())
    manifest["plugins"] = {"modules": ["tests.workers.toy_agent_plugin"]}
    manifest["agent"].update(name="toy", **agent)
    (tmp_path / "manifest.yml").write_text(yaml.safe_dump(manifest))
    return tmp_path / "manifest.yml"


def worker_names(redis_url: str) -> set[str]:
    from redis import Redis
    from rq import Worker

    with Redis.from_url(redis_url) as redis:
        return {worker.name for worker in Worker.all(connection=redis)}


def test_a_reply_stored_by_a_bot_that_died_before_posting_it_is_posted_once(tmp_path: Path) -> None:
    """A bot process stores a command's reply with the message, then posts it; killed in between
    (here: SIGKILLed while the channel's rate budget holds its post back), it leaves the reply
    stored but unposted. Another process's reaper posts it, once."""
    with FakeSlackServer() as slack:
        env = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token,
               "SLACK_API_URL": slack.api_url.rstrip("/")}
        settings = make_settings(tmp_path, **env)
        bot = start_bot(["run"], bot_env(tmp_path, **env))
        try:
            slack.wait_for_connection(timeout=60)
            slack.rate_limit("chat.postMessage", times=1, retry_after=20)  # the post waits: time to kill
            slack.send_event({"type": "app_mention", "channel": CHANNEL, "text": f"<@{BOT_USER_ID}> hello"})
            db = Database(settings.database_url)
            wait_until(lambda: unposted(db), 30, "the reply to be stored, not yet posted")
            kill(bot)
        finally:
            stop(bot)
        assert not [m for m in slack.bot_messages(CHANNEL)]
        engine = Engine.from_settings(settings, load_entrypoints=False)
        try:
            engine.attach_port(SlackPort(bolt_web_client(slack)))
            reap(engine)
            reap(engine)  # a second pass posts nothing again
        finally:
            engine.close()
            db.close()
        assert [m.text[:9] for m in slack.bot_messages(CHANNEL)] == ["Hi alice!"]


def test_a_done_run_whose_worker_died_before_posting_its_answer_gets_it_once(
        tmp_path: Path, redis_url: str, make_engine: EngineBuilder) -> None:
    """A run's answer is stored in the transaction that marks the run done, then posted; a worker
    SIGKILLed in between (here: while the channel's 429 holds the post back) leaves it stored but
    unposted, and another process's reaper posts it, once. (The run is done: nothing retries it.)
    The answer is long: its head is the reply, and the whole, stored before the run ended, is
    uploaded by the reaper too."""
    with FakeSlackServer() as slack:
        settings = make_settings(tmp_path, REDIS_URL=redis_url, BOT_MANIFEST=str(toy_manifest(tmp_path, mode="cold")),
                                 SLACK_BOT_TOKEN=slack.bot_token, SLACK_API_URL=slack.api_url.rstrip("/"))
        engine, _ = make_engine(settings)
        engine.attach_port(SlackPort(bolt_web_client(slack)))
        where = ThreadRef("slack", CHANNEL, "1700000000.000300")
        doomed = start_worker(settings, "doomed-worker")
        try:
            wait_until(lambda: worker_names(redis_url) == {"doomed-worker"}, 60, "the worker to register")
            # The worker posts the run's status message, then its answer, which waits: time to kill.
            slack.rate_limit("chat.postMessage", times=1, retry_after=25, after=1)
            engine.dispatch(Message(where=where, text="/agent list the files at length", user_id="U1",
                                    user_name="ana"))
            wait_until(lambda: len(slack.calls_to("chat.postMessage")) == 2, 90, "the answer's post to be held back")
            assert unposted(engine.db), "the answer is stored with the run's end, not yet posted"
            kill(doomed)
        finally:
            stop(doomed)
        with engine.db.reading() as session:
            assert session.execute(text("select state from agent_runs where id = 1")).scalar() == RunState.DONE
        assert not [m for m in slack.messages_in_thread(CHANNEL, where.thread) if not m.blocks and m.ts != where.thread]
        reap(engine)
        reap(engine)  # a second pass posts nothing again
        answers = [m.text for m in slack.messages_in_thread(CHANNEL, where.thread) if not m.blocks and not m.files]
        (status,) = [m for m in slack.messages_in_thread(CHANNEL, where.thread) if m.blocks]
    assert len(answers) == 1 and answers[0].startswith("Listed the files of "), answers
    assert answers[0].endswith("(The full answer is attached: run-1-answer.md)")
    (whole,) = [f for f in slack.files if f.filename == "run-1-answer.md"]
    assert whole.data is not None and whole.data.decode().count("of the long answer") == LONG_LINES
    assert unposted(engine.db) == []
    assert "done" in status.versions[-1].text.split("\n")[0]  # its last edit, lost with the worker, made


def test_a_run_whose_worker_died_before_its_last_status_edit_gets_that_edit_from_the_reaper(
        tmp_path: Path, redis_url: str, make_engine: EngineBuilder) -> None:
    """A run ends in the database, then its status message is edited to say so; a worker SIGKILLed
    in between (here: its edits held back by 429s) would leave the thread showing it running for
    good. The reaper makes that last edit, once."""
    with FakeSlackServer() as slack:
        settings = make_settings(tmp_path, REDIS_URL=redis_url, BOT_MANIFEST=str(toy_manifest(tmp_path, mode="cold")),
                                 SLACK_BOT_TOKEN=slack.bot_token, SLACK_API_URL=slack.api_url.rstrip("/"))
        engine, _ = make_engine(settings)
        engine.attach_port(SlackPort(bolt_web_client(slack)))
        where = ThreadRef("slack", CHANNEL, "1700000000.000400")
        doomed = start_worker(settings, "doomed-worker")
        try:
            wait_until(lambda: worker_names(redis_url) == {"doomed-worker"}, 60, "the worker to register")
            slack.rate_limit("chat.update", times=1000, retry_after=25)  # every edit waits: time to kill
            engine.dispatch(Message(where=where, text="/agent fail", user_id="U1", user_name="ana"))

            def state() -> str | None:
                with engine.db.reading() as session:
                    return session.execute(text("select state from agent_runs where id = 1")).scalar()

            wait_until(lambda: state() == RunState.FAILED, 90, "the run to end as failed")
            kill(doomed)
        finally:
            stop(doomed)
        (status,) = [m for m in slack.messages_in_thread(CHANNEL, where.thread) if m.blocks]
        assert "failed" not in status.versions[-1].text.split("\n")[0]  # it still shows the run going
        slack.rate_limit("chat.update", times=0)
        reap(engine)
        reap(engine)  # a second pass edits nothing again
        versions = [version.text.split("\n")[0] for version in status.versions]
    assert "failed" in versions[-1] and "failed" not in versions[-2], versions


def unposted(db: Database) -> list[str]:
    with db.reading() as session:
        return list(session.execute(text("select external_id from messages where external_id like 'unposted:%'"))
                    .scalars())


def test_a_work_horse_dies_with_its_killed_worker_and_its_run_is_retried(
        tmp_path: Path, redis_url: str, make_engine: EngineBuilder) -> None:
    """RQ runs each job in a forked work-horse with a process group of its own: a `kill -9` of the
    worker alone used to leave the horse running the job with nobody watching it."""
    manifest = toy_manifest(tmp_path, stale_after_seconds=5, retry_lost_runs=True)
    settings = make_settings(tmp_path, REDIS_URL=redis_url, BOT_MANIFEST=str(manifest))
    doomed = start_worker(settings, "doomed-worker")
    engine, _ = make_engine(settings)
    rescuer = None
    try:
        marker = f"sleep 29{os.getpid() % 10}"
        engine.dispatch(Message(where=ThreadRef("console", "local", "horse"), text=f"/agent {marker}",
                                user_id="U1", user_name="ana"))
        wait_until(lambda: processes_with(marker, starting=True), 60, "the toy agent's sleep to start")
        horses = [pid for pid in processes_with("bot worker --name doomed-worker") if pid != doomed.pid]
        assert horses, "no work-horse found"
        os.kill(doomed.pid, signal.SIGKILL)  # the worker only, not its group
        doomed.wait(10)
        wait_until(lambda: not [pid for pid in horses if process_alive(pid)], 10, "the work-horse to die with it")
        rescuer = start_worker(settings, "rescuer-worker")

        def attempt() -> tuple[str, int]:
            with engine.db.reading() as session:
                return tuple(session.execute(text("select state, attempt from agent_runs where id = 1")).one())

        wait_until(lambda: attempt()[1] == 2, 60, "the run to be retried")
    finally:
        stop(doomed)
        if rescuer:
            stop(rescuer)
