"""Rate budgets: one token bucket per platform channel, shared by every process that posts there.

A post or an edit asks the budget for a token before it reaches the platform, so ten runs in
one channel, spread over several workers, stay under the platform's limit instead of earning a
storm of 429s. With Redis a bucket is one hash, updated by one Lua script (EVALSHA) that reads
Redis' own clock: every process on every machine shares it atomically and no process's clock
matters. Without Redis (the console, an in-process queue) the same bucket lives in this
process behind a lock.

    engine.say / edit / upload ─► RateBudget.take(where, kind) ─► Limit of (platform, kind)
        ─► bucket key (channel, thread or workspace) ─► Buckets.try_take ─► 0 (go) or seconds to wait

Priority: an intermediate edit (`urgent=False`) is granted only while the bucket keeps
`constants.RATE_BUDGET_RESERVE` tokens more, so new posts and final states go first.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from bot import constants
from bot.errors import RateLimited
from bot.types import ThreadRef

log = logging.getLogger(__name__)

__all__ = ["EDIT", "LIMITS", "POST", "BudgetSpent", "Buckets", "Limit", "LocalBuckets", "RateBudget",
           "RedisBuckets"]

#: What a call does to a channel, as its budget sees it: a new message (posts, uploads) or an edit.
POST = "post"
EDIT = "edit"

#: Redis keys of the buckets start with this.
KEY_PREFIX = "threadwork:rate"

#: One token bucket: take a token when at least 1 + `keep` are there, else say when there will be.
#: KEYS[1] the bucket; ARGV rate per second, burst, tokens to keep. Returns the seconds to wait
#: as a string (Lua numbers come back from Redis as integers), "0.000000" when a token was
#: taken. Times are written to the microsecond: `tostring` keeps 14 digits, 0.1 ms of a clock.
TAKE_SCRIPT = """
local rate, burst, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local wait = 0
if tokens >= 1 + keep then
  tokens = tokens - 1
else
  wait = (1 + keep - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.6f', at))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate) * 1000) + 1000)
return string.format('%.6f', wait)
"""


class BudgetSpent(RateLimited):
    """The channel's rate budget has no token now: try again after `retry_after` seconds (no 429 was sent)."""


@dataclass(frozen=True)
class Limit:
    """A platform's limit on one kind of call: a refill rate, a burst, and what one bucket covers."""

    #: The bucket's name in its key; two kinds with the same name share one bucket.
    name: str
    rate_per_s: float
    burst: float
    #: "channel" (one bucket per channel), "thread" (per thread where the platform makes threads
    #: channels of their own: Discord) or "workspace" (one bucket for the whole app).
    scope: str = "channel"

    def key(self, where: ThreadRef) -> str:
        """Return the Redis key of the bucket that covers `where`."""
        if self.scope == "workspace":
            place = "*"
        elif self.scope == "thread":
            place = where.thread or where.channel
        else:
            place = where.channel
        return f"{KEY_PREFIX}:{where.platform}:{self.name}:{place}"


_DISCORD_MESSAGES = Limit("messages", constants.DISCORD_CHANNEL_MESSAGES_PER_S, constants.DISCORD_CHANNEL_BURST,
                          scope="thread")

#: The limits of each (platform, kind); a platform not named here (the console) has none.
LIMITS: dict[tuple[str, str], Limit] = {
    ("slack", POST): Limit("post", constants.SLACK_CHANNEL_POSTS_PER_S, constants.SLACK_CHANNEL_POST_BURST),
    ("slack", EDIT): Limit("chat.update", constants.SLACK_UPDATES_PER_S, constants.SLACK_UPDATE_BURST,
                           scope="workspace"),
    ("discord", POST): _DISCORD_MESSAGES,
    ("discord", EDIT): _DISCORD_MESSAGES,
}


class Buckets(Protocol):
    """Token buckets by key: the storage a `RateBudget` takes its tokens from."""

    def try_take(self, key: str, rate_per_s: float, burst: float, keep: float = 0.0) -> float:
        """Take one token and return 0.0, or return the seconds until one (plus `keep`) is there."""


class LocalBuckets:
    """Token buckets in this process (thread-safe): the budget without Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def try_take(self, key: str, rate_per_s: float, burst: float, keep: float = 0.0) -> float:
        """Take one token and return 0.0, or return the seconds until one (plus `keep`) is there."""
        with self._lock:
            now = time.monotonic()
            tokens, at = self._state.get(key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - at) * rate_per_s)
            if tokens >= 1 + keep:
                self._state[key] = (tokens - 1, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1 + keep - tokens) / rate_per_s


class RedisBuckets:
    """Token buckets in Redis, shared by every process on it; one atomic script per take."""

    def __init__(self, redis_url: str) -> None:
        from redis import Redis

        self._redis = Redis.from_url(redis_url)
        self._take = self._redis.register_script(TAKE_SCRIPT)  # EVALSHA, loading the script when missing

    def try_take(self, key: str, rate_per_s: float, burst: float, keep: float = 0.0) -> float:
        """Take one token and return 0.0, or return the seconds until one (plus `keep`) is there.

        When Redis does not answer, the call goes ahead (0.0): the platform's own 429s still hold
        it back, and a chat that stops because its rate budget is unreachable would be worse.
        """
        from redis import RedisError

        try:
            return float(self._take(keys=[key], args=[rate_per_s, burst, keep]))
        except RedisError as exc:
            log.warning("rate budget %s: Redis did not answer (%s); going ahead without a token", key, exc)
            return 0.0

    def close(self) -> None:
        self._redis.close()


class RateBudget:
    """The rate budgets of every platform channel, taken before a post or an edit reaches the platform."""

    def __init__(self, buckets: Buckets, limits: dict[tuple[str, str], Limit] | None = None) -> None:
        self.buckets = buckets
        self.limits = LIMITS if limits is None else limits

    @classmethod
    def from_url(cls, redis_url: str | None) -> RateBudget:
        """Return a budget shared through Redis when there is one, else one of this process."""
        return cls(RedisBuckets(redis_url) if redis_url else LocalBuckets())

    def try_take(self, where: ThreadRef, kind: str, *, urgent: bool = True) -> float:
        """Take a token for a call of `kind` to `where` and return 0.0, or return the seconds until one comes.

        :param urgent: False for an intermediate edit: it leaves `RATE_BUDGET_RESERVE` tokens
            for new posts and final states.
        """
        limit = self.limits.get((where.platform, kind))
        if limit is None:
            return 0.0
        keep = 0.0 if urgent else float(constants.RATE_BUDGET_RESERVE)
        return self.buckets.try_take(limit.key(where), limit.rate_per_s, limit.burst, keep)

    def take_now(self, where: ThreadRef, kind: str) -> None:
        """Take a token for an intermediate call now, or raise `BudgetSpent` saying when to try again."""
        wait = self.try_take(where, kind, urgent=False)
        if wait > 0:
            raise BudgetSpent(wait, f"{where.platform} channel {where.channel}: rate budget spent")

    def take(self, where: ThreadRef, kind: str, *, max_wait_s: float = constants.RATE_BUDGET_MAX_WAIT_S) -> bool:
        """Wait for a token (at most `max_wait_s`); return False when the wait ran out (the call goes anyway)."""
        deadline = time.monotonic() + max_wait_s
        while True:
            wait = self.try_take(where, kind)
            if wait <= 0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%s: no %s token within %gs; sending anyway", where, kind, max_wait_s)
                return False
            time.sleep(min(wait, left))
