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
    rq_worker = Worker([Queue(constants.QUEUE_NAME, connection=connection)], connection=connection, name=name)
    ready(ready_line(engine, rq_worker.name))
    try:
        rq_worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="WARNING")
    finally:
        reaper.stop()
    return 0


def ready_line(engine: Engine, worker_name: str) -> str:
    """Return the line a worker prints when it listens: queue, Redis, agent and its model."""
    agent = engine.manifest.agent
    binary = resolve_agent_binary(engine.manifest, engine.settings)
    model = agent.model or ("from OPENCODE_CONFIG" if engine.settings.get("OPENCODE_CONFIG") else "no model configured")
    where = safe_url(engine.settings.redis_url or "")
    return (f"worker ready: {worker_name} on queue '{constants.QUEUE_NAME}' at {where}; "
            f"agent {agent.name} ({binary or 'binary not installed'}, {model})")
