"""Recovery: runs whose worker died are marked failed, and the queue behind them moves on.

A running run refreshes its heartbeat every few seconds (`workers.agent_run`). Every worker
process (and the console bot) runs a reaper thread; a run whose heartbeat is older than
`agent.stale_after_seconds` is marked failed and its status message says why (with
`agent.retry_lost_runs`, its first attempt is queued once more instead). Runs left
queued with nothing running in their conversation (their job was lost with a worker) are
enqueued again; the claim in `bot.runs` keeps that from starting anything twice. Messages whose
job was lost (a worker killed mid-job, a bot stopped between storing a message and queueing
it) are handled again once (`requeue_lost_messages`), and command replies stored by a bot
process that died before posting them are posted (`post_unposted_replies`). Every state change goes through
`bot.runs`, as the job's and `/cancel`'s do.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from datetime import timedelta

from bot import constants
from bot.db.repositories import Conversations, Messages, Resources, Runs
from bot.engine import HANDLE_MESSAGE_JOB, UNPOSTED, Engine, patiently, poster_of, unposted_marker
from bot.processes import process_alive
from bot.progress import FINAL_EDIT_DEADLINE_S
from bot.rate_budget import POST
from bot.runs import finish_run, kick_next, retry_lost, show_final
from bot.types import Conversation, Message, Reply, RunState, as_utc, utcnow
from workers import capture

log = logging.getLogger(__name__)

#: What a thread is told when its message was lost twice (its job and the job handling it again).
LOST_TWICE = "Sorry, I lost this message twice while restarting and did not answer it; please send it again."


def reap(engine: Engine) -> list[int]:
    """Fail the runs of dead workers and restart stalled queues; return the failed run ids."""
    engine.queue.rescue_stranded()
    stale_after = engine.manifest.agent.stale_after_seconds
    cutoff = utcnow() - timedelta(seconds=stale_after)
    with engine.db.reading() as session:
        runs = Runs(session)
        stale = runs.stale(cutoff)
        waiting = {run.conversation_id for run in runs.in_state(RunState.QUEUED)
                   if run.created_at and as_utc(run.created_at) < cutoff}
    failed = []
    retry = engine.manifest.agent.retry_lost_runs
    for run in stale:
        why = f"The worker running it stopped (no sign of life for {stale_after} s)."
        if retry and retry_lost(engine, run, why):
            log.warning("run %s: its worker stopped; queued for its second attempt", run.id)
            continue
        if finish_run(engine, run.id, RunState.FAILED, error="worker stopped", note=f"Failed: {why[0].lower()}{why[1:]}"):
            failed.append(run.id)
            log.warning("run %s: its worker stopped; marked failed", run.id)
    for run in stale:
        kick_next(engine, run.conversation_id)
    for conversation_id in waiting:
        kick_next(engine, conversation_id, requeue=True)
    requeue_lost_messages(engine)
    post_unposted_replies(engine)
    show_lost_finals(engine)
    return failed


def show_lost_finals(engine: Engine) -> list[int]:
    """Edit the status messages of ended runs that do not say so yet; return their run ids.

    `finish_run` ends a run, edits its status message, then marks the end shown. A run whose
    process died in between (on this host: its process is gone), or that has waited longer than
    the final edit's own deadline (the process gave up, or runs elsewhere), gets the edit here.
    """
    now, host = utcnow(), socket.gethostname()
    with engine.db.reading() as session:
        ended = Runs(session).final_not_shown(now - timedelta(seconds=constants.LOST_MESSAGE_HORIZON_S))
    shown = []
    for run in ended:
        worker_host, _, pid = run.worker.rpartition(":")
        gone = worker_host == host and pid.isdigit() and not process_alive(int(pid))
        waited = (now - as_utc(run.finished_at)).total_seconds() if run.finished_at else 0.0
        if not gone and waited < FINAL_EDIT_DEADLINE_S + constants.REAPER_INTERVAL_S:
            continue
        with engine.db.session() as session:
            if not Runs(session).claim_final_showing(run.id):
                continue  # another reaper took it
        show_final(engine, run)
        log.warning("run %s: its status message did not show how it ended; edited now", run.id)
        shown.append(run.id)
    return shown


def post_unposted_replies(engine: Engine) -> list[int]:
    """Post the command replies a bot process stored but died before posting; return their ids.

    `dispatch` stores a command's reply with the message, under a placeholder naming its process,
    then posts it. A placeholder whose process is gone (on this host), or one older than
    `UNPOSTED_FOREIGN_WAIT_S` (another host: this one cannot look), is claimed with this
    process's own placeholder, posted, and given the platform's id.
    """
    now, host = utcnow(), socket.gethostname()
    with engine.db.reading() as session:
        unposted = Messages(session).unposted(now - timedelta(seconds=constants.LOST_MESSAGE_HORIZON_S), UNPOSTED)
    posted = []
    for message_id, conversation_id, text, marker, stored_at in unposted:
        poster = poster_of(marker)
        if poster is None or (poster[0] == host and process_alive(poster[1])):
            continue
        if poster[0] != host and (now - as_utc(stored_at)).total_seconds() < constants.UNPOSTED_FOREIGN_WAIT_S:
            continue
        mine = unposted_marker()
        with engine.inbox.transaction() as cursor:
            if not engine.inbox.replace_external_id(cursor, message_id, marker, mine):
                continue  # another reaper took it
        with engine.db.reading() as session:
            conversation = Conversations(session).get(conversation_id)
        port = engine.port_for(conversation.where.platform)
        engine.rate_budget.take(conversation.where, POST)
        platform_id = patiently(lambda: port.post(conversation.where, Reply(text)))  # noqa: B023 (called at once)
        with engine.inbox.transaction() as cursor:
            engine.inbox.replace_external_id(cursor, message_id, mine, platform_id)
        log.warning("reply %s: its bot process stopped before posting it; posted now", message_id)
        posted.append(message_id)
        upload_left_answers(engine, conversation)
    return posted


def upload_left_answers(engine: Engine, conversation: Conversation) -> None:
    """Upload the whole answers of the conversation's runs that were stored and never uploaded.

    A run's long answer is stored before the run ends and uploaded after its reply is posted: a
    worker that died before posting left both, and the reply just posted says the file is attached.
    """
    with engine.db.reading() as session:
        resources = Resources(session, engine.settings.data_dir / "blobs")
        left = [(r, resources.content(r)) for r in resources.in_conversation(conversation.id)
                if r.kind == capture.ANSWER and r.platform_file_id is None]
    for resource, data in left:
        capture.upload(engine, conversation, resource, data, comment=f"Run {resource.run_id} answer")


def requeue_lost_messages(engine: Engine) -> list[int]:
    """Handle again the messages whose job was lost with a worker or a restart; return their ids.

    A message routed to a job (a direct answer, the agent) that has no reply and no run, whose
    job is neither waiting nor running with a recent heartbeat, is enqueued once more under a
    second job id; if that one was lost too, the thread is told. The job itself does nothing
    for a message answered meanwhile, and starts at most one run per message.
    """
    now = utcnow()
    grace = max(engine.manifest.agent.stale_after_seconds, constants.JOB_LOST_AFTER_S)
    with engine.db.reading() as session:
        lost = Messages(session).unanswered(now - timedelta(seconds=constants.LOST_MESSAGE_HORIZON_S),
                                            now - timedelta(seconds=grace))
    handled = []
    for message_id in lost:
        first, again = f"message-{message_id}", f"message-{message_id}-again"
        if engine.queue.in_flight(first) or engine.queue.in_flight(again):
            continue
        with engine.db.reading() as session:
            messages = Messages(session)
            stored = messages.decision(message_id)
            if stored is None or messages.answered(message_id):
                continue
            entry, conversation_id, user_id = messages.get(message_id)
            conversation = Conversations(session).get(conversation_id)
        message = Message(where=conversation.where, text=entry.text, user_id=user_id, user_name=entry.author)
        decision = engine.hook.route_message(message=message, conversation=conversation, engine=engine)
        text = decision.text if decision.text is not None and decision.route == stored.route else entry.text
        timeout = engine.agent_job_timeout if stored.route.value == "agent" else constants.CHAT_JOB_TIMEOUT_S
        if engine.queue.enqueue(HANDLE_MESSAGE_JOB, message_id, stored.route.value, text, decision.tentative,
                                job_id=again, timeout=timeout):
            log.warning("message %s: its job was lost; handling it again", message_id)
        else:
            log.warning("message %s: lost twice; telling its thread", message_id)
            engine.say(conversation, LOST_TWICE, reply_to=message_id)
        handled.append(message_id)
    return handled


class Reaper:
    """A daemon thread that calls `reap` every `REAPER_INTERVAL_S` until stopped."""

    def __init__(self, engine: Engine, interval: float = constants.REAPER_INTERVAL_S) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="threadwork-reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._interval + 5)

    def _loop(self) -> None:
        while True:
            try:
                reap(self._engine)
            except Exception as exc:  # boundary: one reaper pass; the next one tries again
                if _is_redis_error(exc):  # Redis is away: said once per pass, without a traceback
                    log.warning("reaper pass skipped: Redis failed (%s: %s)", type(exc).__name__, exc)
                else:
                    log.exception("reaper pass failed")
            if self._stop.wait(self._interval):
                return


def _is_redis_error(exc: BaseException) -> bool:
    """Return True for an error of the Redis client (never loaded by a bot without Redis)."""
    exceptions = sys.modules.get("redis.exceptions")
    return exceptions is not None and isinstance(exc, exceptions.RedisError)
