"""Job queues: RQ on Redis when REDIS_URL is set, an in-process worker otherwise.

Jobs are named by dotted path ("workers.jobs.handle_message") and take ids and plain values,
so the same job functions run in an RQ work-horse or in a thread of the console bot.
"""

from __future__ import annotations

import importlib
import logging
import queue as stdlib_queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, Protocol

from bot import constants, logs
from bot.errors import QueueUnavailable
from bot.processes import process_alive
from bot.types import as_utc

log = logging.getLogger(__name__)
#: Seconds of one blocking wait for a job's result; below redis-py's 5 s socket timeout.
RESULT_WAIT_SLICE_S = 4
#: Threads of the in-process queue: agent runs of several threads plus chat answers at once.
IN_PROCESS_WORKERS = 4
#: How long closing the in-process queue waits for jobs in progress.
SHUTDOWN_TIMEOUT_S = 30


#: Redis key prefix of the worker a conversation's jobs would rather run on (`RedisQueue.stick`).
AFFINITY_KEY = f"{constants.QUEUE_NAME}:affinity:"


def worker_queue(worker_name: str) -> str:
    """Return the name of the RQ queue only this worker takes jobs from."""
    return f"{constants.WORKER_QUEUE_PREFIX}{worker_name}"


def current_worker() -> str | None:
    """Return the name of the RQ worker running the current job (None outside an RQ job)."""
    from rq import get_current_job

    job = get_current_job()
    return job.worker_name if job is not None and job.worker_name else None


def resolve(path: str) -> Callable[..., Any]:
    """Return the function a dotted path names."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class JobQueue(Protocol):
    """Where the engine puts work that takes seconds."""

    def enqueue(self, func: str, *args: Any, job_id: str, timeout: int = constants.CHAT_JOB_TIMEOUT_S,
                affinity: str | None = None) -> bool:
        """Enqueue `func(*args)` under `job_id`; return False if that job id was enqueued already.

        `affinity` names what the job belongs to (a conversation): when a worker `stick`s to it,
        the job runs there if that worker can take it at once.
        """
        ...

    def stick(self, affinity: str) -> None:
        """From inside a job: have later jobs of `affinity` run on this job's worker when they can."""
        ...

    def rescue_stranded(self) -> list[str]:
        """Give the jobs left waiting for one worker to any worker; return their ids."""
        ...

    def wait(self, job_ids: Iterable[str], timeout: float) -> bool:
        """Block until every job has finished (or `timeout` passes); return whether all did."""
        ...

    def close(self) -> None:
        """Stop taking jobs and release resources."""
        ...

    def listening_workers(self) -> int | None:
        """Return how many workers take this queue's jobs (None: this process runs them)."""
        ...

    def in_flight(self, job_id: str) -> bool:
        """Return whether the job is waiting or running somewhere alive (False: done, failed or lost)."""
        ...


class InProcessQueue:
    """Runs jobs in background threads of this process: the embedded default, no servers.

    Agent runs hold a thread for their whole length, so there are a few; a deployment with
    many busy threads wants Redis and `python -m bot worker` processes instead.
    """

    def __init__(self, workers: int = IN_PROCESS_WORKERS) -> None:
        self._jobs: stdlib_queue.Queue[tuple[str, str, tuple[Any, ...]] | None] = stdlib_queue.Queue()
        self._seen: set[str] = set()
        self._pending: set[str] = set()
        self._done = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"threadwork-job-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def enqueue(self, func: str, *args: Any, job_id: str, timeout: int = constants.CHAT_JOB_TIMEOUT_S,
                affinity: str | None = None) -> bool:
        with self._done:
            if job_id in self._seen:
                return False
            self._seen.add(job_id)
            self._pending.add(job_id)
        self._jobs.put((job_id, func, args))
        return True

    def wait(self, job_ids: Iterable[str] | None = None, timeout: float = constants.CONSOLE_DRAIN_TIMEOUT_S) -> bool:
        """Block until the given jobs (default: every pending job) have finished."""
        wanted = None if job_ids is None else set(job_ids)
        deadline = time.monotonic() + timeout
        with self._done:
            while self._pending & wanted if wanted is not None else self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def stick(self, affinity: str) -> None:
        """One process runs every job: nothing to remember."""

    def rescue_stranded(self) -> list[str]:
        return []

    def listening_workers(self) -> int | None:
        return None

    def in_flight(self, job_id: str) -> bool:
        with self._done:
            return job_id in self._pending

    def close(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Finish the jobs already taken, then stop the threads (waiting at most `timeout`)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job_id, func, args = item
            logs.bind(job_id=job_id)  # the same job id RQ gives the job, on this thread's log records
            try:
                resolve(func)(*args)
            except Exception:  # boundary: one job; the job itself told the user
                log.exception("job %s (%s) failed", job_id, func)
            finally:
                with self._done:
                    self._pending.discard(job_id)
                    self._done.notify_all()


class RedisQueue:
    """Enqueues jobs on Redis for `python -m bot worker` processes (real RQ workers).

    Every worker takes the shared queue's jobs, and first those of a queue of its own
    (`worker_queue`). A job with an `affinity` (a conversation) goes to its own queue of the
    worker that last `stick`ed to it (the one whose warm opencode server holds the
    conversation's session) when that worker can take it at once: it is idle, it is the worker
    running the job that enqueues this one, or it is finishing a job of the same affinity (the
    previous run, posting its answer). Otherwise the shared queue: a follow-up
    never waits for a busy or dead worker (the session is carried over instead). A job that
    still waits in a worker's own queue after `ROUTED_JOB_WAIT_S` (that worker died, or took
    other work first) is moved to the shared queue by the reaper (`rescue_stranded`).
    """

    def __init__(self, url: str, name: str = constants.QUEUE_NAME) -> None:
        from redis import Redis
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import RedisError
        from redis.retry import Retry
        from rq import Queue

        self._redis_error = RedisError
        # A connect or a command that times out on a busy Redis is tried again (3 times, 0.2-2 s
        # apart) before anyone hears of it: RQ's worker quits on the first TimeoutError.
        self.connection = Redis.from_url(url, socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT_S,
                                         retry=Retry(ExponentialBackoff(cap=2, base=0.2), 3))
        try:
            self.connection.ping()
        except RedisError as exc:
            raise QueueUnavailable(f"cannot reach Redis at REDIS_URL ({type(exc).__name__}); start redis-server "
                                   "or unset REDIS_URL to run jobs in-process") from None
        self.rq = Queue(name, connection=self.connection)

    def enqueue(self, func: str, *args: Any, job_id: str, timeout: int = constants.CHAT_JOB_TIMEOUT_S,
                affinity: str | None = None) -> bool:
        from rq.exceptions import DuplicateJobError

        try:
            queue = self._queue_for(affinity) if affinity else self.rq
            queue.enqueue(func, *args, job_id=job_id, unique=True, job_timeout=timeout,
                          result_ttl=3600, failure_ttl=7 * 86400, meta={"affinity": affinity} if affinity else None)
        except DuplicateJobError:
            return False
        except self._redis_error as exc:
            raise QueueUnavailable(f"cannot reach Redis to queue the work ({type(exc).__name__}); is REDIS_URL right?") from None
        return True

    def stick(self, affinity: str) -> None:
        worker = current_worker()
        if worker is None:
            return
        try:
            self.connection.set(AFFINITY_KEY + affinity, worker, ex=constants.SESSION_AFFINITY_TTL_S)
        except self._redis_error:
            log.warning("could not remember worker %s for %s: its next job goes to any worker", worker, affinity)

    def _queue_for(self, affinity: str) -> Any:
        """Return the queue for a job of `affinity`: its worker's own, if it can take the job now, else the shared one."""
        from rq import Queue, Worker

        holder = self.connection.get(AFFINITY_KEY + affinity)
        if not holder:
            return self.rq
        name = holder.decode()
        if name != current_worker():
            worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=self.connection)
            if worker is None or not self._free_for(worker, affinity):
                return self.rq
        return Queue(worker_queue(name), connection=self.connection)

    def _free_for(self, worker: Any, affinity: str) -> bool:
        """Return whether a worker is alive and idle, or only finishing a job of the same affinity
        (the conversation's previous run, whose answer it is posting: the next cannot start before)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job
        from rq.worker import WorkerStatus

        if worker.hostname == socket.gethostname() and not process_alive(worker.pid or 0):
            return False
        state = worker.get_state()
        if state == WorkerStatus.IDLE:
            return True
        current = worker.get_current_job_id() if state == WorkerStatus.BUSY else None
        try:
            return bool(current) and Job.fetch(current, connection=self.connection).meta.get("affinity") == affinity
        except NoSuchJobError:
            return False

    def rescue_stranded(self, older_than_s: float = constants.ROUTED_JOB_WAIT_S) -> list[str]:
        """Move the jobs that waited over `older_than_s` in a worker's own queue to the shared one; return their ids."""
        from rq import Queue

        moved = []
        now = datetime.now(timezone.utc)
        for queue in Queue.all(connection=self.connection):
            if not queue.name.startswith(constants.WORKER_QUEUE_PREFIX):
                continue
            for job in queue.get_jobs():
                waited = (now - as_utc(job.enqueued_at)).total_seconds() if job.enqueued_at else older_than_s
                if waited >= older_than_s and queue.remove(job.id):  # 0: its worker took it meanwhile
                    self.rq.enqueue_job(job)
                    moved.append(job.id)
                    log.warning("job %s waited %.0f s in %s: moved to the shared queue", job.id, waited, queue.name)
        return moved

    def wait(self, job_ids: Iterable[str], timeout: float) -> bool:
        """Block on each job's result stream (no polling loop) until all have finished."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        deadline = time.monotonic() + timeout
        for job_id in job_ids:
            try:
                job = Job.fetch(job_id, connection=self.connection)
            except NoSuchJobError:
                continue
            # Block in slices shorter than the client's socket timeout (redis-py: 5 s).
            while job.latest_result(timeout=max(1, min(int(deadline - time.monotonic()), RESULT_WAIT_SLICE_S))) is None:
                if time.monotonic() >= deadline:
                    return False
        return True

    def in_flight(self, job_id: str) -> bool:
        """Return whether the job waits in the queue, or runs with a recent heartbeat (`JOB_LOST_AFTER_S`)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus

        try:
            job = Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            return False
        status = job.get_status(refresh=False)
        if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            return True
        if status != JobStatus.STARTED:
            return False
        beat = job.last_heartbeat or job.started_at
        return beat is not None and (datetime.now(timezone.utc) - as_utc(beat)).total_seconds() < constants.JOB_LOST_AFTER_S

    def listening_workers(self) -> int | None:
        """Return how many RQ workers are registered on this queue (0: the jobs will wait)."""
        from rq import Worker

        try:
            return Worker.count(connection=self.connection, queue=self.rq)
        except self._redis_error as exc:
            raise QueueUnavailable(f"cannot reach Redis ({type(exc).__name__}); is REDIS_URL right?") from None

    def close(self) -> None:
        self.connection.close()
