"""What each channel's newest seen message is, kept for catch-up after downtime.

    adapter: every message event, answered or ignored ─► SeenCursors.saw(channel, id)  (memory, µs)
    a flush thread, once a second ─► ChannelCursors.advance: one upsert per changed channel
    adapter start ─► SeenCursors.load(): what the database holds (before any event is noted)
    each (re)connection ─► SeenCursors.snapshot(), taken before that connection's events are
        noted ─► the adapter reads, in the background, what came after each position

The cursor marks what was *seen*, not what was answered: chatter the bot ignores moves it too,
so after downtime everything after it is unseen. It is written in batches rather than per
event, so the dispatch path gains no database write: a crash loses at most the last
`CURSOR_FLUSH_INTERVAL_S` of progress, and catch-up then reads those messages again, which
the durable dedupe (a Slack message's ts per conversation, a Discord message's id) refuses.
A cursor that lags is harmless; one that ran ahead would lose messages, so the upsert only
ever moves forward.
"""

from __future__ import annotations

import logging
import threading

from bot import constants
from bot.db import Database
from bot.db.cursors import ChannelCursors, sortable

log = logging.getLogger(__name__)


class SeenCursors:
    """The newest message seen per channel of one platform, written to `channel_cursors` about once a second."""

    def __init__(self, db: Database, platform: str, *, interval_s: float = constants.CURSOR_FLUSH_INTERVAL_S) -> None:
        self.db = db
        self.platform = platform
        self.interval_s = interval_s
        # channel -> (sortable position, position): everything known, and what is not written yet
        self._latest: dict[str, tuple[str, str]] = {}
        self._pending: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def saw(self, channel: object, position: object) -> None:
        """Note that a message at `position` (a Slack ts, a Discord id) was seen in `channel`; never raises."""
        if not isinstance(channel, str) or not isinstance(position, str) or not channel:
            return
        try:
            key = sortable(position)
        except ValueError:
            return  # not a message id (a malformed payload): nothing to remember
        with self._lock:
            for positions in (self._latest, self._pending):
                known = positions.get(channel)
                if known is None or known[0] < key:
                    positions[channel] = (key, position)
            if self._flusher is None and not self._stop.is_set():
                self._flusher = threading.Thread(target=self._flush_every_interval, name=f"{self.platform}-cursors",
                                                 daemon=True)
                self._flusher.start()

    def flush(self) -> None:
        """Write the positions noted since the last flush (each only moves its cursor forward)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with self.db.session() as session:
                ChannelCursors(session).advance(self.platform, {channel: position
                                                                for channel, (_, position) in pending.items()})
        except Exception:  # boundary: a background write; the next flush tries again
            log.exception("%s: writing the channels' last seen messages failed", self.platform)
            with self._lock:
                for channel, seen in pending.items():
                    known = self._pending.get(channel)
                    if known is None or known[0] < seen[0]:
                        self._pending[channel] = seen

    def load(self) -> None:
        """Read every channel's last seen message from the database (other processes' and earlier runs')."""
        with self.db.reading() as session:
            stored = ChannelCursors(session).all(self.platform)
        with self._lock:
            for channel, position in stored.items():
                key = sortable(position)
                known = self._latest.get(channel)
                if known is None or known[0] < key:
                    self._latest[channel] = (key, position)

    def snapshot(self) -> dict[str, str]:
        """Return each channel's last seen message as known now (memory only: cheap on a connection's path)."""
        with self._lock:
            return {channel: position for channel, (_, position) in self._latest.items()}

    def close(self) -> None:
        """Stop the flush thread and write what is left (a later `saw` starts it again)."""
        self._stop.set()
        flusher = self._flusher
        if flusher is not None:
            flusher.join(timeout=5)
        self.flush()
        with self._lock:
            self._flusher, self._stop = None, threading.Event()

    def _flush_every_interval(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
