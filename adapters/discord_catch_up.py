"""What the Discord bot missed while it was away: a channel's messages, and its threads', since its cursor.

    DiscordBot.catch_up, a task on the gateway's loop after READY, per channel with a cursor:
      GET /channels/{channel}/messages          newest first, back to the cursor
      + the same for each thread of the channel the bot takes part in, active lately
      ─► discord.Message objects, oldest first ─► DiscordBot's live `_on_message`

A RESUMED session has Discord replay what it missed; only a new session (READY) reads here.
Snowflakes grow with time, so one cursor per channel (its threads' messages included) marks
what was seen; a message answered before is refused by its claimed id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import discord
import discord.utils

from bot import constants

log = logging.getLogger(__name__)

#: Bits of a snowflake below its milliseconds since Discord's epoch (Discord API docs, Snowflakes).
SNOWFLAKE_TIME_SHIFT = 22


@dataclass
class MissedMessages:
    """A channel's messages since the bot last saw it, oldest first."""

    messages: list[discord.Message] = field(default_factory=list)
    #: True when the channel or a thread held more than `CATCH_UP_MAX_MESSAGES` since: the oldest were not read.
    cut_off: bool = False
    #: True when the channel's events go to another process's shards: its catch-up is that process's.
    elsewhere: bool = False


def served_here(client: discord.Client, channel: object) -> bool:
    """Return whether this client's shards receive the channel's events (a direct message's go to shard 0)."""
    count = client.shard_count
    shard_ids = getattr(client, "shard_ids", None) or ([client.shard_id] if client.shard_id is not None else None)
    if not count or count <= 1 or not shard_ids:
        return True
    guild = getattr(channel, "guild", None)
    return ((guild.id >> SNOWFLAKE_TIME_SHIFT) % count if guild is not None else 0) in shard_ids


def start_after(cursor: str, now: float) -> int:
    """Return the snowflake to read after: a little before the cursor, and no earlier than `CATCH_UP_MAX_AGE_S` ago."""
    overlap = int(cursor) - (constants.CATCH_UP_OVERLAP_S * 1000 << SNOWFLAKE_TIME_SHIFT)
    oldest = discord.utils.time_snowflake(datetime.fromtimestamp(now - constants.CATCH_UP_MAX_AGE_S, timezone.utc))
    return max(overlap, oldest)


async def missed_messages(client: discord.Client, channel_id: str, *, after: int,
                          threads: list[tuple[str, str | None]]) -> MissedMessages:
    """Return the channel's messages after `after`, and those in `threads` after it, oldest first.

    `threads` are (thread id, the id of the message the bot came in at, or None); a message
    before the bot came in is not read. Raises `discord.Forbidden` without Read Message
    History, `discord.NotFound` for a channel that is gone.
    """
    missed = MissedMessages()
    found: dict[int, discord.Message] = {}
    places = [(channel_id, after)] + [(thread, max(after, int(joined)) if (joined or "").isdigit() else after)
                                      for thread, joined in threads]
    for index, (place, bound) in enumerate(places):
        try:
            channel = client.get_channel(int(place)) or await client.fetch_channel(int(place))
            if index == 0 and not served_here(client, channel):
                return MissedMessages(elsewhere=True)
            if not isinstance(channel, discord.abc.Messageable):
                continue
            read = [message async for message in channel.history(
                limit=constants.CATCH_UP_MAX_MESSAGES + 1, after=discord.Object(bound), oldest_first=False)]
        except (discord.Forbidden, discord.NotFound) as exc:
            if index == 0:
                raise
            log.info("discord: cannot read thread %s of %s (%s); skipped", place, channel_id, exc.status)
            continue
        missed.cut_off |= len(read) > constants.CATCH_UP_MAX_MESSAGES
        found.update((message.id, message) for message in read[:constants.CATCH_UP_MAX_MESSAGES])
    missed.messages = [found[key] for key in sorted(found)]
    return missed
