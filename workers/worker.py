"""`python -m bot worker`: a real RQ worker with the bot's engine ready in every job."""

from __future__ import annotations

from collections.abc import Callable

from bot import constants
from bot.config import Settings, resolve_agent_binary
from bot.db import safe_url
from bot.engine import Engine, set_current
from workers.reaper import Reaper


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None,
               with_scheduler: bool = False, ready: Callable[[str], None] = print) -> int:
    """Work the bot's queue until stopped (or, with `burst`, until it is empty); return 0.

    `ready` gets one line once the worker listens: its queue, Redis and agent.
    """
    from rq import Queue, Worker

    engine = Engine.from_settings(settings)
    set_current(engine)
    reaper = Reaper(engine).start()
    connection = engine.queue.connection  # type: ignore[attr-defined]
    rq_worker = Worker([Queue(constants.QUEUE_NAME, connection=connection)], connection=connection, name=name,
                       job_monitoring_interval=constants.JOB_HEARTBEAT_S)
    # An agent with a server per worker (opencode, agent.mode: warm) starts it here, in the
    # worker process and in the background: RQ's work-horses are forked per job and borrow it.
    warm = start_agents(engine)
    ready(ready_line(engine, rq_worker.name) + "".join(f"; {line}" for line in warm))
    try:
        # RQ turns SIGTERM and SIGINT into a warm shutdown: work() returns and the servers stop here.
        rq_worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="WARNING")
    finally:
        reaper.stop()
        stop_agents(engine)
    return 0


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
