"""Cancel signals: how a `/cancel` reaches the process running the agent, within a second.

In-process runs wait on a `threading.Event`; with Redis, a cancel is also published on a
channel the running job subscribes to, so a worker on another machine hears it at once
(no polling). The database stays the source of truth: who cancelled is stored on the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bot.pubsub import Subscription

log = logging.getLogger(__name__)


def channel(run_id: int) -> str:
    """Return the Redis pub/sub channel that carries a run's cancel signal."""
    return f"threadwork:cancel:{run_id}"


class CancelSignals:
    """Delivers cancel requests to the runs they name, in this process and over Redis."""

    def __init__(self, redis_url: str | None) -> None:
        self._redis_url = redis_url
        self._events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def send(self, run_id: int) -> None:
        """Tell the run's process (wherever it is) to stop the run."""
        with self._lock:
            event = self._events.get(run_id)
        if event is not None:
            event.set()
        if self._redis_url:
            from redis import Redis

            with Redis.from_url(self._redis_url) as redis:
                redis.publish(channel(run_id), "cancel")

    @contextmanager
    def listen(self, run_id: int) -> Iterator[threading.Event]:
        """Yield an event that is set when someone cancels the run, for as long as it runs."""
        event = threading.Event()
        with self._lock:
            self._events[run_id] = event
        subscription = Subscription(self._redis_url, channel(run_id), lambda _data: event.set()) \
            if self._redis_url else None
        try:
            yield event
        finally:
            with self._lock:
                self._events.pop(run_id, None)
            if subscription is not None:
                subscription.close()
