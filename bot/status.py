"""What an operator asks of a running deployment: the queue, its workers and the runs.

`python -m bot status` prints it; the metrics endpoint (`bot.metrics`) reads the same facts
at every scrape. Everything is read from where it is kept (Redis for the queue and its
workers, the `agent_runs` table for runs), never from one process's memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot import constants
from bot.db import Database, safe_url
from bot.db.repositories import Runs
from bot.errors import DatabaseUnavailable, QueueUnavailable
from bot.types import AgentRun, RunState, as_utc, utcnow


@dataclass(frozen=True)
class WorkerState:
    """One RQ worker as Redis knows it: its name, state (idle, busy...) and current job."""

    name: str
    state: str
    job_id: str | None


@dataclass(frozen=True)
class QueueState:
    """The job queue: where it is, how many jobs wait, and who works it (Redis only)."""

    where: str
    depth: int | None = None
    workers: list[WorkerState] = field(default_factory=list)


def queue_state(redis_url: str | None, connection: Any = None) -> QueueState:
    """Return the queue's depth and workers; raise QueueUnavailable when Redis cannot be reached."""
    if not redis_url:
        return QueueState(where="in-process")
    from redis import Redis
    from redis.exceptions import RedisError
    from rq import Queue, Worker

    redis = connection if connection is not None else Redis.from_url(
        redis_url, socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT_S, socket_timeout=5)
    try:
        queue = Queue(constants.QUEUE_NAME, connection=redis)
        workers = [WorkerState(worker.name, _state(worker), worker.get_current_job_id())
                   for worker in Worker.all(connection=redis, queue=queue)]
        return QueueState(where=safe_url(redis_url), depth=queue.count,
                          workers=sorted(workers, key=lambda worker: worker.name))
    except RedisError as exc:
        raise QueueUnavailable(f"cannot reach Redis at REDIS_URL {safe_url(redis_url)} ({type(exc).__name__}): "
                               "start redis-server or fix REDIS_URL") from None
    finally:
        if connection is None:
            redis.close()


def _state(worker: Any) -> str:
    state = worker.get_state()
    return str(getattr(state, "value", state))


@dataclass(frozen=True)
class RunsState:
    """Runs by state, and the running run that started first."""

    by_state: dict[RunState, int]
    oldest_running: AgentRun | None


def runs_state(db: Database) -> RunsState:
    """Return the runs by state; raise DatabaseUnavailable when the database cannot be read."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with db.reading() as session:
            runs = Runs(session)
            return RunsState(runs.count_by_state(), runs.oldest_running())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise DatabaseUnavailable(f"cannot read the database {safe_url(db.url)}: "
                                  f"{reason[0] if reason else type(exc).__name__}") from None


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """Return how long ago a moment was, in words an operator reads at a glance ("3m 12s ago")."""
    if moment is None:
        return "at an unknown time"
    seconds = max(0, int(((now or utcnow()) - as_utc(moment)).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m ago"
    if minutes:
        return f"{minutes}m {seconds}s ago"
    return f"{seconds}s ago"


def report(queue: QueueState, runs: RunsState) -> list[str]:
    """Return the lines `python -m bot status` prints."""
    lines = []
    if queue.depth is None:
        lines.append("queue: in-process (no REDIS_URL: jobs run inside the bot's own process, no workers)")
    else:
        lines.append(f"queue: {queue.depth} job{'s' if queue.depth != 1 else ''} waiting on "
                     f"'{constants.QUEUE_NAME}' at {queue.where}")
        lines.append(f"workers: {len(queue.workers)}" + ("" if queue.workers else
                                                         " (none listening: start `python -m bot worker`)"))
        for worker in queue.workers:
            lines.append(f"  {worker.name}  {worker.state}" + (f"  job {worker.job_id}" if worker.job_id else ""))
    lines.append("runs: " + ", ".join(f"{state.value} {count}" for state, count in runs.by_state.items()))
    oldest = runs.oldest_running
    if oldest is None:
        lines.append("oldest running run: none")
    else:
        lines.append(f"oldest running run: {oldest.id} in conversation {oldest.conversation_id}, started "
                     f"{ago(oldest.started_at or oldest.created_at)}, worker {oldest.worker or 'unknown'}")
    return lines
