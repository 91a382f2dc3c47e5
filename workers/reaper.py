"""Recovery: runs whose worker died are marked failed, and the queue behind them moves on.

A running run refreshes its heartbeat every few seconds (`workers.agent_run`). Every worker
process (and the console bot) runs a reaper thread; a run whose heartbeat is older than
`agent.stale_after_seconds` is marked failed and its status message says why (with
`agent.retry_lost_runs`, its first attempt is queued once more instead). Runs left
queued with nothing running in their conversation (their job was lost with a worker) are
enqueued again; the claim in `bot.runs` keeps that from starting anything twice. Every state
change goes through `bot.runs`, as the job's and `/cancel`'s do.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from bot import constants
from bot.db.repositories import Runs
from bot.engine import Engine
from bot.runs import finish_run, kick_next, retry_lost
from bot.types import RunState, as_utc, utcnow

log = logging.getLogger(__name__)


def reap(engine: Engine) -> list[int]:
    """Fail the runs of dead workers and restart stalled queues; return the failed run ids."""
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
    return failed


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
            except Exception:  # boundary: one reaper pass; the next one tries again
                log.exception("reaper pass failed")
            if self._stop.wait(self._interval):
                return
