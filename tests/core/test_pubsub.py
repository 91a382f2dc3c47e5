"""A run's signal subscription outlives a Redis outage: once Redis is back, signals reach it again."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import pytest
from redis import Redis

from bot.pubsub import Subscription
from tests.faults.proxy import DelayingProxy
from tests.workers.agent_support import wait_until


def subscribers(redis: Redis, channel: str) -> int:
    return dict(redis.pubsub_numsub(channel)).get(channel.encode(), 0)


@pytest.mark.parametrize("fault", ["refused", "timing out"])
def test_a_subscription_cut_off_from_redis_hears_again_once_it_is_back(
        fault: str, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    parts = urlsplit(redis_url)
    received: list[bytes] = []
    with DelayingProxy(parts.hostname or "127.0.0.1", parts.port or 0) as proxy, \
            Redis.from_url(redis_url) as redis, caplog.at_level(logging.WARNING, logger="bot.pubsub"):
        subscription = Subscription(proxy.url_for(redis_url), "signals", received.append)
        try:
            wait_until(lambda: subscribers(redis, "signals") == 1, 10, "the subscription")
            proxy.cut() if fault == "refused" else proxy.black_hole()
            wait_until(lambda: subscribers(redis, "signals") == 0, 10, "the subscription to be cut off")
            redis.publish("signals", b"lost in the outage")
            time.sleep(4)  # past a connect's timeout (3 s) when it times out
            proxy.restore()
            wait_until(lambda: subscribers(redis, "signals") == 1, 30, "the subscription to be back")
            redis.publish("signals", b"cancel")
            wait_until(lambda: received, 10, "the signal sent once Redis is back")
        finally:
            subscription.close()
        assert subscribers(redis, "signals") == 0
    assert received == [b"cancel"]
    failed, again = [r.getMessage() for r in caplog.records if r.name == "bot.pubsub"]
    assert failed.startswith("listening on signals: Redis failed") and again == "listening on signals again"
