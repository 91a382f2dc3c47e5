"""A Redis pub/sub subscription served by a background thread, and closed cleanly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Seconds `close` waits for the listener thread to notice it was stopped.
CLOSE_WAIT_S = 5


class Subscription:
    """Calls `handler(data)` for every message published on `channel`, until closed."""

    def __init__(self, redis_url: str, channel: str, handler: Callable[[bytes], None]) -> None:
        from redis import Redis

        self._redis = Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{channel: lambda message: handler(message["data"])})
        # sleep_time=None blocks on the socket: no polling loop.
        self._thread = self._pubsub.run_in_thread(sleep_time=None, daemon=True)

    def publish(self, channel: str, data: Any) -> None:
        """Publish on any channel through this subscription's connection pool."""
        self._redis.publish(channel, data)

    def close(self) -> None:
        """Stop the listener: unsubscribing wakes its blocking read, and it then exits."""
        self._thread.stop()
        self._pubsub.unsubscribe()
        self._thread.join(CLOSE_WAIT_S)
        self._pubsub.close()
        self._redis.close()
