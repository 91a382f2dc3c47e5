"""A Redis pub/sub subscription served by a background thread, and closed cleanly."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from bot import constants

log = logging.getLogger(__name__)

#: Seconds `close` waits for the listener thread to notice it was stopped.
CLOSE_WAIT_S = 5
#: Seconds between the listener's attempts to subscribe again after Redis failed.
RELISTEN_S = 1.0


class Subscription:
    """Calls `handler(data)` for every message published on `channel`, until closed.

    Subscribed when made, so nothing published after that is missed. The listener outlives a
    Redis outage: it says so once, and subscribes on a new connection every `RELISTEN_S` until
    Redis is back (what was published meanwhile never reaches it).
    """

    def __init__(self, redis_url: str, channel: str, handler: Callable[[bytes], None]) -> None:
        from redis import Redis

        self.channel = channel
        self._handler = handler
        self._redis = Redis.from_url(redis_url, socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT_S)
        self._closed = threading.Event()
        self._pubsub = self._subscribe()
        self._thread = threading.Thread(target=self._listen, name=f"subscription-{channel}", daemon=True)
        self._thread.start()

    def publish(self, channel: str, data: Any) -> None:
        """Publish on any channel through this subscription's connection pool."""
        self._redis.publish(channel, data)

    def close(self) -> None:
        """Stop the listener: unsubscribing wakes its blocking read, and it then exits."""
        from redis.exceptions import RedisError

        self._closed.set()
        try:
            self._pubsub.unsubscribe()
        except (RedisError, OSError) as exc:  # Redis is away: the listener is not reading either
            log.info("unsubscribing from %s failed: %s", self.channel, exc)
        self._thread.join(CLOSE_WAIT_S)
        self._pubsub.close()
        self._redis.close()

    def _subscribe(self) -> Any:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(**{self.channel: lambda message: self._handler(message["data"])})
        return pubsub

    def _listen(self) -> None:
        """Read until closed (no polling: the read blocks); after a failure, subscribe anew."""
        from redis.exceptions import RedisError

        failing = False
        while not self._closed.is_set():
            try:
                if failing:
                    self._pubsub.close()
                    self._pubsub = self._subscribe()
                    log.warning("listening on %s again", self.channel)
                    failing = False
                for _ in self._pubsub.listen():  # handled messages yield nothing; ends on unsubscribe
                    pass
                return
            except (RedisError, OSError, ValueError) as exc:  # ValueError: its socket closed by `close`
                if self._closed.is_set():
                    return
                if not failing:
                    log.warning("listening on %s: Redis failed (%s: %s); trying again every %g s",
                                self.channel, type(exc).__name__, exc, RELISTEN_S)
                failing = True
                self._closed.wait(RELISTEN_S)
