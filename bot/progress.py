"""Progress: the platform-neutral status text of a run, and messages kept live by edits.

`render_status` turns a `RunStatus` into short markdown every adapter can show (Slack and
Discord also lay `Reply.status` out as blocks or an embed). `LiveMessage` keeps one posted
message up to date: edits are coalesced to at most one per `STATUS_EDIT_INTERVAL_S`, a
platform's Retry-After delays only that message, and the final state always lands. When the
channel's rate budget (`bot.rate_budget`, shared by every message and process in the channel)
has no token for an intermediate edit, the message keeps its newest content and tries again
when the next token comes, like after a Retry-After; the final edit waits for its token.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable

from bot import constants, metrics
from bot.errors import RateLimited
from bot.types import Conversation, Reply, RunState, RunStatus

log = logging.getLogger(__name__)

#: How long `LiveMessage.finish` keeps retrying the final edit through rate limits.
FINAL_EDIT_DEADLINE_S = 120.0

#: The words before a status message's link to its run's live page (the web view).
LIVE_VIEW_LABEL = "Open live view"

STATE_ICONS = {
    RunState.QUEUED: "🕒",
    RunState.RUNNING: "⏳",
    RunState.DONE: "✅",
    RunState.FAILED: "❌",
    RunState.CANCELLED: "⏹️",
}


def format_elapsed(seconds: float) -> str:
    """Return a duration as m:ss (or h:mm:ss)."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_status(status: RunStatus, limit: int = constants.STATUS_TEXT_LIMIT) -> str:
    """Return the run's status as short markdown, never longer than `limit` characters."""
    head = f"{STATE_ICONS[status.state]} **Agent run {status.run_id}** · {status.state.value}"
    if status.state == RunState.QUEUED and status.queue_position:
        ahead = status.queue_position
        head += f" · waiting for {ahead} earlier run{'s' if ahead > 1 else ''} in this thread"
    if status.state != RunState.QUEUED:
        head += f" · {format_elapsed(status.elapsed_s)}"
    if status.requested_by:
        head += f" · asked by {status.requested_by}"
    if status.agent:
        head += f" · {status.agent}"
    lines = [head]
    if status.web_url:  # early, so a long checklist cut at `limit` never cuts the link
        lines.append(f"{LIVE_VIEW_LABEL}: {status.web_url}")
    for label, ok in status.checklist:
        mark = "✓" if ok else ("✗" if ok is False else "…")
        lines.append(f"{mark} {label}")
    if status.hidden_items:
        lines.append(f"… and {status.hidden_items} earlier step(s)")
    if status.latest_text:
        latest = " ".join(status.latest_text.split())
        lines.append(f"💬 {latest[:300]}{'…' if len(latest) > 300 else ''}")
    if status.tokens_in or status.tokens_out:
        lines.append(f"Tokens {status.tokens_in:,} in / {status.tokens_out:,} out · ${status.cost:.4f}")
    if status.note:
        lines.append(status.note)
    if not status.state.is_final:
        lines.append(f"Cancel with `/cancel {status.run_id}`")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LiveMessage:
    """One bot message kept up to date by edits, coalesced and rate-limit aware.

    `update` never blocks: it records the newest content, and a flusher thread sends it when
    the interval (or the platform's Retry-After) allows. `finish` blocks until the final
    content has landed.
    """

    def __init__(
        self,
        post: Callable[[Reply], str],
        edit: Callable[[str, Reply], None],
        *,
        interval: float = constants.STATUS_EDIT_INTERVAL_S,
        message_id: str | None = None,
    ) -> None:
        self._post = post
        self._edit = edit
        self._interval = interval
        self.message_id = message_id
        self._pending: Reply | None = None
        self._not_before = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._flusher: threading.Thread | None = None
        self.edits = 0

    @classmethod
    def in_thread(cls, engine, conversation: Conversation, *, message_id: str | None = None,
                  reply_to: int | None = None, interval: float = constants.STATUS_EDIT_INTERVAL_S) -> LiveMessage:
        """Return a live message posted and edited through the engine (redacted, persisted).

        Its intermediate edits do not wait for the channel's rate budget: the engine raises
        `BudgetSpent` (a `RateLimited`) and the flusher tries again at the next token's time.
        """
        live = cls(
            post=lambda reply: engine.say(conversation, reply, reply_to=reply_to),
            edit=lambda message_id, reply: engine.edit(conversation, message_id, reply, final=not reply.partial,
                                                       reply_to=reply_to, wait_for_budget=not reply.partial),
            interval=interval,
            message_id=message_id,
        )
        return live

    def start(self, reply: Reply) -> str:
        """Post the first version (retrying through rate limits) and return its message id."""
        if self.message_id is None:
            self.message_id = self._with_retries(lambda: self._post(reply))
            with self._cond:
                self._not_before = time.monotonic() + self._interval
        return self.message_id

    def update(self, reply: Reply) -> None:
        """Record newer content; it is sent when the edit interval allows."""
        with self._cond:
            self._pending = reply
            if self._flusher is None:
                # In the caller's context: its log records keep the run's and job's ids.
                self._flusher = threading.Thread(target=contextvars.copy_context().run, args=(self._flush_loop,),
                                                 name="live-message", daemon=True)
                self._flusher.start()
            self._cond.notify_all()

    def finish(self, reply: Reply) -> None:
        """Send the final content, waiting out the interval and any Retry-After, then stop."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        if self._flusher is not None:
            self._flusher.join()
        if self.message_id is None:
            self.start(reply)
            return
        with self._cond:
            wait = self._not_before - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._with_retries(lambda: self._send_edit(reply))

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._pending is None or time.monotonic() < self._not_before):
                    timeout = None if self._pending is None else max(0.0, self._not_before - time.monotonic())
                    self._cond.wait(timeout)
                if self._closed:
                    return
                reply, self._pending = self._pending, None
            try:
                self._send_edit(reply)
            except RateLimited as exc:
                with self._cond:
                    self._not_before = time.monotonic() + exc.retry_after
                    if self._pending is None:
                        self._pending = reply  # keep the newest content for after the wait
            except Exception:  # boundary: one progress edit; the final edit will try again
                log.exception("editing live message %s failed", self.message_id)

    def _send_edit(self, reply: Reply) -> None:
        if self.message_id is None:  # nothing posted yet (a run the reaper queued again): post it now
            self.start(reply)
            return
        started = time.perf_counter()
        self._edit(self.message_id, reply)
        metrics.edit_done(time.perf_counter() - started)
        self.edits += 1
        with self._cond:
            self._not_before = max(self._not_before, time.monotonic() + self._interval)

    def _with_retries(self, call: Callable[[], str | None]):
        deadline = time.monotonic() + FINAL_EDIT_DEADLINE_S
        while True:
            try:
                return call()
            except RateLimited as exc:
                if time.monotonic() + exc.retry_after > deadline:
                    raise
                with self._cond:
                    self._not_before = time.monotonic() + exc.retry_after
                time.sleep(exc.retry_after)
