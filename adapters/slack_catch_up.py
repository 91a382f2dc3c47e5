"""What the Slack adapter missed while it was away: a channel's messages since its cursor, as events.

    SlackAdapter.catch_up, in its own thread, per channel with a cursor:
      conversations.history(oldest=start)          top-level messages and thread broadcasts
      + conversations.replies(ts, oldest=...)      threads the bot takes part in, active lately,
                                                   and threads started since the cursor
      ─► the messages as Slack's events would carry them, oldest first ─► the live filter

Slack's history has no event ids; the adapter dispatches these through the same path as
live events, where a message stored before (its ts, per conversation) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from slack_sdk import WebClient

from adapters.slack_port import REPLIES_PAGE, rate_limits
from bot import constants
from bot.engine import patiently


@dataclass
class MissedMessages:
    """A channel's messages since the bot last saw it, each shaped like the event Slack would have sent."""

    events: list[dict[str, Any]] = field(default_factory=list)
    #: True when the channel or a thread held more than `CATCH_UP_MAX_MESSAGES` since: some were not
    #: read (the channel's newest are kept, as Slack pages them; a thread's first).
    cut_off: bool = False


def start_after(cursor: str, now: float) -> str:
    """Return the ts to read after: a little before the cursor, and no earlier than `CATCH_UP_MAX_AGE_S` ago."""
    start = max(Decimal(cursor) - constants.CATCH_UP_OVERLAP_S, Decimal(now - constants.CATCH_UP_MAX_AGE_S))
    return f"{start:.6f}"


def missed_messages(client: WebClient, channel: str, *, after: str, threads: list[tuple[str, str | None]],
                    bot_user_id: str) -> MissedMessages:
    """Return the channel's messages after `after`, and the replies in `threads` after it, oldest first.

    `threads` are (thread ts, the ts the bot came in at, or None); a reply before the bot came
    in is not read. Raises `SlackApiError` when Slack refuses (no scope, not in the channel).
    """
    missed = MissedMessages()
    top, missed.cut_off = _read(client.conversations_history, channel=channel, oldest=after)
    found = {item["ts"]: item for item in top}
    bounds = {thread: max(after, joined, key=Decimal) if _is_ts(joined) else after for thread, joined in threads}
    for item in top:  # threads started or continued since: their replies are not in the history
        if item.get("reply_count") and Decimal(item.get("latest_reply") or 0) > Decimal(after):
            bounds.setdefault(item["ts"], after)
    for thread, bound in bounds.items():
        replies, cut = _read(client.conversations_replies, channel=channel, ts=thread, oldest=bound)
        missed.cut_off |= cut
        found.update({item["ts"]: item for item in replies if Decimal(item["ts"]) > Decimal(bound)})
    direct = channel.startswith("D")
    for ts in sorted((ts for ts in found if Decimal(ts) > Decimal(after)), key=Decimal):
        event = {**found[ts], "channel": channel, "channel_type": "im" if direct else "channel", "type": "message"}
        if event.get("thread_ts") == ts:
            del event["thread_ts"]  # a thread's parent: its live event had no thread_ts
        if not direct and f"<@{bot_user_id}" in str(event.get("text") or ""):
            event["type"] = "app_mention"  # live, the app_mention event carried it
        missed.events.append(event)
    return missed


def _is_ts(value: str | None) -> bool:
    whole, _, fraction = (value or "").partition(".")
    return whole.isdigit() and (not fraction or fraction.isdigit())


def _read(method: Any, **params: Any) -> tuple[list[dict[str, Any]], bool]:
    """Return up to `CATCH_UP_MAX_MESSAGES` messages of a paginated history method, and whether more were left."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(found) < constants.CATCH_UP_MAX_MESSAGES:
        def page(cursor: str | None = cursor) -> Any:
            with rate_limits():
                return method(limit=REPLIES_PAGE, cursor=cursor, **params)

        response = patiently(page)  # a background thread: waiting out a 429 holds up no one
        found.extend(item for item in response.get("messages") or [] if item.get("ts"))
        cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
        if not cursor:
            return found[:constants.CATCH_UP_MAX_MESSAGES], len(found) > constants.CATCH_UP_MAX_MESSAGES
    return found[:constants.CATCH_UP_MAX_MESSAGES], True
