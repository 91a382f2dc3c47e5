"""`python -m bot worker`: a real RQ worker with the bot's engine ready in every job."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from bot import constants
from bot.config import Settings, resolve_agent_binary
from bot.db import safe_url
from bot.engine import Engine, set_current
from bot.errors import UserFacingError
from bot.processes import process_alive
from bot.queue import worker_queue
from workers.reaper import Reaper

log = logging.getLogger(__name__)

#: prctl option: the signal a process gets when its parent thread dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None,
               with_scheduler: bool = False, ready: Callable[[str], None] = print) -> int:
    """Work the bot's queue until stopped (or, with `burst`, until it is empty); return 0.

    `ready` gets one line once the worker listens: its queue, Redis and agent.
    """
    from redis.exceptions import RedisError
    from rq import Queue
    from rq.exceptions import StopRequested

    engine = Engine.from_settings(settings)
    set_current(engine)
    reaper = Reaper(engine).start()
    connection = engine.queue.connection  # type: ignore[attr-defined]
    if name:
        free_stale_name(connection, name)
    name = name or uuid.uuid4().hex
    # Its own queue first (follow-ups of conversations whose session its server holds), then everyone's.
    queues = [Queue(worker_queue(name), connection=connection), Queue(constants.QUEUE_NAME, connection=connection)]
    rq_worker = worker_class()(queues, connection=connection, name=name,
                               job_monitoring_interval=constants.JOB_HEARTBEAT_S)
    # An agent with a server per worker (opencode, agent.mode: warm) starts it here, in the
    # worker process and in the background: RQ's work-horses are forked per job and borrow it.
    warm = start_agents(engine)
    ready(ready_line(engine, rq_worker.name) + "".join(f"; {line}" for line in warm))
    try:
        # RQ turns SIGTERM and SIGINT into a warm shutdown: work() returns and the servers stop here.
        while True:
            try:
                rq_worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="WARNING")
            except RedisError as exc:  # its teardown could not reach Redis either
                log.warning("worker %s: Redis failed (%s)", rq_worker.name, type(exc).__name__)
            # RQ also returns when Redis timed out: only a stop request or a burst ends the worker.
            if burst or rq_worker.stopping:
                break
            log.warning("worker %s: lost Redis; listening again in %g s", rq_worker.name, constants.WORKER_RELISTEN_S)
            try:
                unregister_when_back(rq_worker)
            except StopRequested:  # RQ's SIGTERM handler, still installed
                break
    finally:
        reaper.stop()
        stop_agents(engine)
    return 0


def unregister_when_back(rq_worker: Any) -> None:
    """Wait until Redis answers again, then take this worker's registration back.

    RQ's `work()` registers the worker and refuses to start while a live registration of its name
    exists; the one `work()` left when Redis failed under it is this worker's own (its teardown
    could not reach Redis to remove it), so it is removed before listening again.
    """
    from redis.exceptions import RedisError

    while True:
        time.sleep(constants.WORKER_RELISTEN_S)
        try:
            rq_worker.register_death()
            return
        except RedisError as exc:
            log.info("worker %s: Redis still unreachable (%s)", rq_worker.name, type(exc).__name__)


def worker_class() -> type:
    """Return RQ's worker, whose work-horses die with it.

    RQ forks a work-horse per job in a process group of its own, so a worker killed with
    SIGKILL (the OOM killer, a `kill -9` of its group) leaves the horse running its job alone:
    a run then stays "running" for as long as the horse lives, with nobody to stop it. The horse
    asks the kernel for SIGKILL when its worker dies (PR_SET_PDEATHSIG), and the run is then
    lost like its worker, which the reaper handles.
    """
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from rq import Worker

    class ThreadworkWorker(Worker):
        #: True once SIGTERM or SIGINT asked it to stop (RQ raises StopRequested when idle).
        stopping = False

        def request_stop(self, signum: Any, frame: Any) -> None:
            self.stopping = True
            super().request_stop(signum, frame)

        def main_work_horse(self, job: Any, queue: Any) -> None:
            die_with_parent()
            super().main_work_horse(job, queue)

        def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
            # RQ's listener for worker commands retries after a ConnectionError but dies on a
            # TimeoutError (Redis unreachable rather than refusing): retry that too.
            if isinstance(exc, RedisTimeoutError):
                log.warning("worker %s: its command channel timed out reaching Redis; trying again", self.name)
                time.sleep(constants.WORKER_RELISTEN_S)
                return
            super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    return ThreadworkWorker


def die_with_parent() -> None:
    """Have this process killed when its parent dies; exit at once if it died already."""
    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def free_stale_name(connection: Any, name: str) -> None:
    """Let a restarted worker take its name back from its dead self; refuse a name a live worker holds.

    RQ keeps a killed worker registered until its key expires (minutes), and refuses a second
    worker of that name meanwhile. A worker of this name registered from this host whose process
    is gone is unregistered; one alive, or on another host (where this one cannot look), is a
    clear error naming it.
    """
    from rq import Worker

    old = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=connection)
    if old is None:
        return
    if old.hostname == socket.gethostname() and old.pid and not process_alive(old.pid):
        old.register_death()
        log.warning("worker %s: its previous process (pid %s) is gone; taking its name back", name, old.pid)
        return
    raise UserFacingError(f"a worker named {name} is already registered (host {old.hostname}, pid {old.pid}): "
                          "stop it, or give this one another --name")


def start_agents(engine: Engine) -> list[str]:
    """Start the agents' long-lived parts in the background (`warm_up`); return what each says of it.

    Called by every process that runs agent jobs: a worker, and `run`/`chat` without Redis.
    """
    lines = []
    for agent in engine.agents.values():
        warm_up = getattr(agent, "warm_up", None)
        if warm_up is not None and (line := warm_up()):
            lines.append(line)
    return lines


def stop_agents(engine: Engine) -> None:
    """Stop the agents' long-lived parts (`shut_down`): no agent server outlives its worker."""
    for agent in engine.agents.values():
        shut_down = getattr(agent, "shut_down", None)
        if shut_down is not None:
            shut_down()


def ready_line(engine: Engine, worker_name: str) -> str:
    """Return the line a worker prints when it listens: queue, Redis, agent and its model."""
    agent = engine.manifest.agent
    binary = resolve_agent_binary(engine.manifest, engine.settings)
    model = agent.model or ("from OPENCODE_CONFIG" if engine.settings.get("OPENCODE_CONFIG") else "no model configured")
    where = safe_url(engine.settings.redis_url or "")
    return (f"worker ready: {worker_name} on queue '{constants.QUEUE_NAME}' at {where}; "
            f"agent {agent.name} ({binary or 'binary not installed'}, {model})")
