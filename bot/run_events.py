"""Run events for live views: one stream per run, in Redis across processes, or in this process.

    workers.agent_run ─► RunBroadcast.event (each stored event, at once)
                     └─► RunBroadcast.update / finish (the status, coalesced like a status message)
        ─► RunFeed.publish ─► Redis stream `threadwork:run:<id>` (XADD MAXLEN ~), or LocalStreams
    adapters.web ─► RunFeed.read(run, after=stream id) ─► server-sent events, `id` = stream id

A reader names the last stream id it has seen, so a page that reconnects (`Last-Event-ID`)
gets everything it missed, which Redis pub/sub could not give it. The database stays the
source of truth: a page renders the stored run and its events, and the stream only carries
what happens after. Entries are plain JSON-able dicts built by `event_entry` and
`status_entry`, the same shape the page renders from the database.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from bot.progress import LiveMessage
from bot.types import Reply, RunEvent, RunStatus

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

#: Entries kept per run stream (trimmed approximately, `XADD MAXLEN ~`): four times the 500
#: events of bench/web_view.py's long run, so a page that was away for a while still resumes.
STREAM_MAXLEN = 2_000
#: A run's stream expires this long after its last entry: the default life of a web link
#: (web.link_ttl_hours, 168 h). Pages of older runs need only the database.
STREAM_TTL_S = 168 * 3600
#: The web view's status is coalesced to four updates a second: the page ticks the clock itself,
#: and tokens or a state change show within a quarter second (steps are never coalesced).
WEB_STATUS_INTERVAL_S = 0.25
#: A tool's output carried in one entry (and shown folded): a long `cat` stays readable and the
#: stream stays small; the full output is in the run's log resource.
OUTPUT_CHARS = 20_000
#: The id before every entry: a reader starting here gets the whole stream.
START = "0-0"


def stream_key(run_id: int) -> str:
    """Return the Redis key of a run's event stream."""
    return f"threadwork:run:{run_id}"


def _order(stream_id: str) -> tuple[int, int]:
    millis, _, seq = stream_id.partition("-")
    return int(millis or 0), int(seq or 0)


def tool_output(raw: dict[str, Any]) -> str:
    """Return a tool event's output (or error) from opencode's raw JSON, cut to `OUTPUT_CHARS`."""
    part = raw.get("part") if isinstance(raw, dict) else None
    state = part.get("state") if isinstance(part, dict) else None
    if not isinstance(state, dict):
        return ""
    output = state.get("output") or state.get("error") or ""
    output = output if isinstance(output, str) else json.dumps(output)
    return output if len(output) <= OUTPUT_CHARS else output[:OUTPUT_CHARS] + "\n… (cut; the run's log has it all)"


def event_entry(seq: int, event: RunEvent) -> dict[str, Any]:
    """Return one stored event as a stream entry: what the page shows of it."""
    return {"type": "step", "seq": seq, "kind": event.kind.value, "name": event.name, "status": event.status,
            "text": event.text, "output": tool_output(event.raw), "tokens_in": event.tokens_in,
            "tokens_out": event.tokens_out, "cost": event.cost, "at": event.at.isoformat()}


def status_entry(status: RunStatus) -> dict[str, Any]:
    """Return a run's status as a stream entry: state, clock, tokens, cost, note."""
    return {"type": "status", "state": status.state.value, "final": status.state.is_final,
            "elapsed_s": round(status.elapsed_s, 1), "tokens_in": status.tokens_in, "tokens_out": status.tokens_out,
            "cost": status.cost, "note": status.note}


class LocalStreams:
    """Run streams inside this process, for a web view served next to the jobs (no Redis).

    Writers are job threads; readers are coroutines of the web server's event loop, woken with
    `call_soon_threadsafe`.
    """

    def __init__(self) -> None:
        self._streams: dict[int, deque[tuple[str, str]]] = {}
        self._waiters: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._last = (0, 0)

    def add(self, run_id: int, data: str) -> str:
        """Append one entry; return its id (Redis's `millis-seq` form, increasing)."""
        with self._lock:
            millis = int(time.time() * 1000)
            self._last = (millis, 0) if millis > self._last[0] else (self._last[0], self._last[1] + 1)
            stream_id = f"{self._last[0]}-{self._last[1]}"
            self._streams.setdefault(run_id, deque(maxlen=STREAM_MAXLEN)).append((stream_id, data))
            waiters = list(self._waiters.get(run_id, ()))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
        return stream_id

    def after(self, run_id: int, after: str) -> list[tuple[str, str]]:
        """Return the run's entries after the id, oldest first."""
        mark = _order(after)
        with self._lock:
            return [(i, data) for i, data in self._streams.get(run_id, ()) if _order(i) > mark]

    def last_id(self, run_id: int) -> str:
        """Return the id of the run's newest entry, or `START`."""
        with self._lock:
            stream = self._streams.get(run_id)
            return stream[-1][0] if stream else START

    async def wait(self, run_id: int, after: str, timeout: float) -> list[tuple[str, str]]:
        """Return the entries after the id, waiting up to `timeout` seconds for the first."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.setdefault(run_id, set()).add(waiter)
        try:
            found = self.after(run_id, after)
            if not found:
                try:
                    await asyncio.wait_for(event.wait(), timeout)
                except TimeoutError:
                    return []
                found = self.after(run_id, after)
            return found
        finally:
            with self._lock:
                self._waiters.get(run_id, set()).discard(waiter)


class RunFeed:
    """Publishes run entries to their run's stream and reads them back, through Redis or in-process."""

    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        #: Without Redis: the streams this process's jobs and web view share (`feed_for` hands out one feed).
        self.local = LocalStreams()
        self._sync: Any = None
        self._async: dict[int, Any] = {}
        self._lock = threading.Lock()

    def publish(self, run_id: int, entry: dict[str, Any]) -> str | None:
        """Append an entry to the run's stream; return its id (None when Redis refused it: logged)."""
        data = json.dumps(entry, ensure_ascii=False)
        if not self.redis_url:
            return self.local.add(run_id, data)
        from redis.exceptions import RedisError

        try:
            pipe = self._redis().pipeline(transaction=False)
            pipe.xadd(stream_key(run_id), {"data": data}, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.expire(stream_key(run_id), STREAM_TTL_S)
            stream_id, _ = pipe.execute()
        except RedisError as exc:  # a live view misses an entry; the run and its stored events go on
            log.warning("run %s: publishing to the live view failed: %s", run_id, exc)
            return None
        return stream_id.decode() if isinstance(stream_id, bytes) else stream_id

    def last_id(self, run_id: int) -> str:
        """Return the id of the run's newest entry (`START` when it has none)."""
        if not self.redis_url:
            return self.local.last_id(run_id)
        found = self._redis().xrevrange(stream_key(run_id), count=1)
        return found[0][0].decode() if found else START

    async def read(self, run_id: int, after: str, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """Return the run's entries after the stream id, waiting up to `timeout` s for the first one."""
        if not self.redis_url:
            found = await self.local.wait(run_id, after, timeout)
            return [(stream_id, json.loads(data)) for stream_id, data in found]
        answer = await self._redis_async().xread({stream_key(run_id): after}, block=int(timeout * 1000),
                                                 count=STREAM_MAXLEN)
        entries = answer[0][1] if answer else []
        return [(stream_id.decode(), json.loads(fields[b"data"])) for stream_id, fields in entries]

    def _redis(self) -> Any:
        with self._lock:
            if self._sync is None:
                from redis import Redis

                self._sync = Redis.from_url(self.redis_url)
            return self._sync

    def _redis_async(self) -> Any:
        """Return an asyncio client for the running loop (a client belongs to the loop it was made in)."""
        loop = id(asyncio.get_running_loop())
        if loop not in self._async:
            from redis.asyncio import Redis

            self._async[loop] = Redis.from_url(self.redis_url)
        return self._async[loop]


def feed_for(settings: Settings) -> RunFeed:
    """Return this process's feed for the deployment: its Redis, or streams in this process.

    One feed per Redis URL and database, so the jobs and the web view of one deployment share
    it, and two deployments in one process (tests) never see each other's runs.
    """
    return _feed(settings.redis_url, settings.database_url)


@functools.lru_cache(maxsize=32)
def _feed(redis_url: str | None, database_url: str) -> RunFeed:
    return RunFeed(redis_url)


class RunBroadcast:
    """What a run shows its live views, shaped like its status message (`bot.progress.LiveMessage`).

    Each stored event is published at once (a page must miss none); the status goes through a
    `LiveMessage` whose edits are stream entries: coalesced to one per `WEB_STATUS_INTERVAL_S`,
    and the final state always lands.
    """

    def __init__(self, feed: RunFeed, run_id: int) -> None:
        self.feed = feed
        self.run_id = run_id
        self.live = LiveMessage(post=self._status, edit=lambda _message_id, reply: self._status(reply),
                                interval=WEB_STATUS_INTERVAL_S, message_id=stream_key(run_id))

    def event(self, seq: int, event: RunEvent) -> None:
        """Publish one stored (already redacted) event."""
        self.feed.publish(self.run_id, event_entry(seq, event))

    def update(self, status: RunStatus) -> None:
        """Record the newest status; it is published when the interval allows."""
        self.live.update(Reply("", status=status, partial=True))

    def finish(self, status: RunStatus) -> None:
        """Publish the final status, after any update still pending."""
        self.live.finish(Reply("", status=status))

    def _status(self, reply: Reply) -> str:
        assert reply.status is not None
        self.feed.publish(self.run_id, status_entry(reply.status))
        return stream_key(self.run_id)
