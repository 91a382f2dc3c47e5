"""Run signals: how a `/cancel`, a steering message or an approval reaches the run it names.

The run may be in any process: a thread of the console bot or an RQ work-horse on another
machine. In-process runs get their signals directly; with Redis, every signal is also
published on a channel the running job subscribes to for as long as it runs (no polling).
The database stays the source of truth for what was decided (who cancelled, who approved);
a signal only wakes the run.

    engine.signals.send(run_id, Signal.cancel())          ─┐
    engine.signals.send(run_id, Signal.steer(text, who))   ├─► RunInbox of the running run
    engine.signals.send(run_id, Signal.approval(...))     ─┘     .cancel (an Event), .next()
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from bot.pubsub import Subscription

log = logging.getLogger(__name__)

CANCEL, STEER, APPROVAL = "cancel", "steer", "approval"


def channel(run_id: int) -> str:
    """Return the Redis pub/sub channel that carries a run's signals."""
    return f"threadwork:run-signals:{run_id}"


@dataclass(frozen=True)
class Signal:
    """One signal to a running run: its kind, who sent it, and what it carries."""

    kind: str
    who: str = ""
    #: A steering message's text.
    text: str = ""
    #: The approval request answered, and the answer (`once`, `always` or `reject`).
    request_id: str = ""
    reply: str = ""
    #: Anything else a plugin's signal needs, as plain JSON values.
    data: dict = field(default_factory=dict)

    @classmethod
    def cancel(cls, who: str = "") -> Signal:
        return cls(CANCEL, who=who)

    @classmethod
    def steer(cls, text: str, who: str) -> Signal:
        return cls(STEER, who=who, text=text)

    @classmethod
    def approval(cls, request_id: str, reply: str, who: str) -> Signal:
        return cls(APPROVAL, who=who, request_id=request_id, reply=reply)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Signal | None:
        """Return the signal published as `data`, or None (logged) when it is not one."""
        try:
            fields = json.loads(data)
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            log.warning("ignored a malformed run signal: %s", exc)
            return None


class RunInbox:
    """What reaches one running run from outside: `cancel` is set on a cancel; other signals queue."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        #: The cancel signal that set `cancel` (who, and the notice to edit), once one came.
        self.cancel_signal: Signal | None = None
        self._signals: queue.Queue[Signal] = queue.Queue()

    def deliver(self, signal: Signal) -> None:
        """Take one signal: a cancel sets `cancel` (and wakes `next`), any other waits in order."""
        if signal.kind == CANCEL:
            self.cancel_signal = self.cancel_signal or signal
            self.cancel.set()
        self._signals.put(signal)

    def next(self, timeout: float | None = None) -> Signal | None:
        """Return the next signal other than a cancel, waiting up to `timeout` s; None if none came."""
        try:
            while True:
                signal = self._signals.get(timeout=timeout)
                if signal.kind != CANCEL:
                    return signal
                if self.cancel.is_set():
                    return None
        except queue.Empty:
            return None

    def pending(self) -> list[Signal]:
        """Return (and take) every signal other than a cancel that is waiting now."""
        taken = []
        while True:
            try:
                signal = self._signals.get_nowait()
            except queue.Empty:
                return taken
            if signal.kind != CANCEL:
                taken.append(signal)


class RunSignals:
    """Delivers signals to the runs they name, in this process and over Redis."""

    def __init__(self, redis_url: str | None) -> None:
        self._redis_url = redis_url
        self._inboxes: dict[int, RunInbox] = {}
        self._lock = threading.Lock()

    def send(self, run_id: int, signal: Signal) -> None:
        """Hand the signal to the run's process, wherever it is."""
        with self._lock:
            inbox = self._inboxes.get(run_id)
        if inbox is not None:
            inbox.deliver(signal)
        if self._redis_url:
            from redis import Redis

            with Redis.from_url(self._redis_url) as redis:
                redis.publish(channel(run_id), signal.encode())

    @contextmanager
    def listen(self, run_id: int) -> Iterator[RunInbox]:
        """Yield the run's inbox, which receives its signals for as long as the block runs."""
        inbox = RunInbox()
        with self._lock:
            self._inboxes[run_id] = inbox
        subscription = Subscription(self._redis_url, channel(run_id), lambda data: self._received(inbox, data)) \
            if self._redis_url else None
        try:
            yield inbox
        finally:
            with self._lock:
                self._inboxes.pop(run_id, None)
            if subscription is not None:
                subscription.close()

    @staticmethod
    def _received(inbox: RunInbox, data: bytes) -> None:
        signal = Signal.decode(data)
        if signal is not None:
            inbox.deliver(signal)
