"""`python -m bot worker`: a real RQ worker with the bot's engine ready in every job."""

from __future__ import annotations

from bot import constants
from bot.config import Settings
from bot.engine import Engine, set_current
from workers.reaper import Reaper


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None,
               with_scheduler: bool = False) -> int:
    """Work the bot's queue until stopped (or, with `burst`, until it is empty); return 0."""
    from rq import Queue, Worker

    engine = Engine.from_settings(settings)
    set_current(engine)
    reaper = Reaper(engine).start()
    connection = engine.queue.connection  # type: ignore[attr-defined]
    rq_worker = Worker([Queue(constants.QUEUE_NAME, connection=connection)], connection=connection, name=name)
    try:
        rq_worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="WARNING")
    finally:
        reaper.stop()
    return 0
