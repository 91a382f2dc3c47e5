"""Chat commands about memory: `/remember`, `/memories`, `/forget` (the same on every platform).

    /remember [me|channel|team] <fact>   keep a fact for the asker, this channel (default) or the team
    /memories                            what applies here for the asker, with ids (`m12`) and sources
    /forget <id or words> | me           remove memories; `me`: everything held about the asker

Forgetting deletes the rows and their search index entries; nothing is only flagged.
"""

from __future__ import annotations

import re

from bot.db.repositories import Memories
from bot.errors import CommandError
from bot.hookspecs import hookimpl
from bot.memory import Memory, MemoryKind, ScopeKind, estimate_tokens, scopes_for
from bot.redaction import REDACTED
from bot.types import Command, CommandContext, EngineAPI

REMEMBER_USAGE = ("Usage: `/remember [me|channel|team] <fact>`, e.g. `/remember we deploy with make ship` "
                  "(this channel), `/remember me I prefer short answers` (you, everywhere).")
FORGET_USAGE = "Usage: `/forget <id or words>` (ids as `/memories` lists them, e.g. `m12`), or `/forget me`."
#: Where a fact goes by the first word of `/remember`; without one, the channel.
TARGETS = {"me": ScopeKind.PERSON, "myself": ScopeKind.PERSON, "channel": ScopeKind.CHANNEL,
           "team": ScopeKind.TEAM}
#: Memories `/memories` lists per scope, newest first; more are there to search and forget.
LISTED = 15
#: The most memories `/forget <words>` removes at once; more means the words were too vague.
FORGET_AT_ONCE = 20
_ID = re.compile(r"m?(\d+)", re.IGNORECASE)


@hookimpl
def register_commands() -> list[Command]:
    return [
        Command("remember", "keep a fact for you, this channel or the team", remember,
                usage="/remember [me|channel|team] <fact>"),
        Command("memories", "what I remember that applies here, with ids", memories, usage="/memories"),
        Command("forget", "forget memories by id or words; `/forget me`: everything about you", forget,
                usage="/forget <id or words> | me"),
    ]


def remember(context: CommandContext) -> str:
    """Keep a fact for the asker, the channel or the team; say where it was kept."""
    first, _, rest = context.argument.strip().partition(" ")
    kind = TARGETS.get(first.lower())
    fact = " ".join((rest if kind else context.argument).split()) if context.argument.strip() else ""
    kind = kind or ScopeKind.CHANNEL
    if not fact:
        return REMEMBER_USAGE
    engine, message = context.engine, context.message
    limit = engine.manifest.memory.max_fact_chars
    if len(fact) > limit:
        raise CommandError(f"That is {len(fact):,} characters; I keep facts of at most {limit:,}. "
                           "Shorten it, or put the details in a file.")
    if REDACTED in fact or engine.redact(fact) != fact:
        raise CommandError("That looks like it holds a secret (a key, token or password), so I did not keep it.")
    if kind == ScopeKind.TEAM and not engine.manifest.allows("admin", message.user_id):
        raise CommandError("Only the bot's admins can keep facts for the whole team; "
                           "I can keep it for this channel (`/remember <fact>`) or for you (`/remember me <fact>`).")
    where = context.conversation.where
    person, channel, team = scopes_for(where.platform, where.channel, message.user_id)
    scope = {ScopeKind.PERSON: person, ScopeKind.CHANNEL: channel, ScopeKind.TEAM: team}[kind]
    with engine.db.session() as session:
        memory_id = Memories(session).add(fact, conversation_id=context.conversation.id, tokens=estimate_tokens(fact),
                                          kind=MemoryKind.FACT.value, scope=scope, author_id=message.user_id,
                                          author_name=message.user_name)
    context.on_stored.append(lambda message_id: _record_source(engine, memory_id, message_id))
    return f"Remembered {scope.label} as `m{memory_id}`: {fact}"


def memories(context: CommandContext) -> str:
    """List the asker's own memories, the channel's and the team's, with ids and sources."""
    where, user_id = context.conversation.where, context.message.user_id
    person, channel, team = scopes_for(where.platform, where.channel, user_id)
    with context.engine.db.reading() as session:
        repository = Memories(session)
        sections = [("About you", repository.newest(person, limit=LISTED) if user_id else []),
                    ("This channel", repository.newest(channel, limit=LISTED)),
                    ("The whole team", repository.newest(team, limit=LISTED))]
        exchanges = repository.count(channel, MemoryKind.EXCHANGE)
    lines = []
    for title, held in sections:
        if held:
            lines.append(f"**{title}:**")
            lines.extend(f"- `{memory.short_id}` {memory.text[:200]} _({_source(memory)})_" for memory in held)
    if not lines:
        lines.append("I hold no facts that apply here. Add one with `/remember <fact>`.")
    if exchanges:
        lines.append(f"And {exchanges} earlier exchange(s) of this channel's threads, recalled when they relate.")
    lines.append("Forget one with `/forget <id>`; everything about you with `/forget me`.")
    return "\n".join(lines)


def forget(context: CommandContext) -> str:
    """Forget the memories named by id or matching words (those the asker may remove), or all about them."""
    argument = " ".join(context.argument.split())
    if not argument:
        return FORGET_USAGE
    engine, message = context.engine, context.message
    where = context.conversation.where
    with engine.db.session() as session:
        repository = Memories(session)
        if argument.lower() in ("me", "myself", "everything about me"):
            removed = repository.forget_person(where.platform, message.user_id)
            return (f"Forgotten: {removed} memor{'y' if removed == 1 else 'ies'} about you (your facts, the exchanges "
                    "you asked about, and the summaries of threads you wrote in), and their search entries."
                    if removed else "I held nothing about you.")
        parts = argument.replace(",", " ").split()
        if all(_ID.fullmatch(part) for part in parts):
            found = repository.get(int(_ID.fullmatch(part).group(1)) for part in parts)
        else:
            scopes = list(scopes_for(where.platform, where.channel, message.user_id))
            found = repository.search(scopes, argument, kinds=(MemoryKind.FACT, MemoryKind.EXCHANGE),
                                      limit=FORGET_AT_ONCE + 1, all_words=True)
            if len(found) > FORGET_AT_ONCE:
                raise CommandError(f"More than {FORGET_AT_ONCE} memories match `{argument}`; "
                                   "use more words, or ids from `/memories`.")
        allowed = [memory for memory in found if _may_remove(context, memory)]
        repository.delete(allowed)
    if not found:
        return f"Nothing I remember matches `{argument}`; `/memories` lists what applies here."
    if not allowed:
        return "Those memories are not yours to forget (ask an admin)."
    refused = len(found) - len(allowed)
    listed = "\n".join(f"- `{memory.short_id}` {memory.text[:120]}" for memory in allowed)
    tail = f"\n({refused} other match(es) are not yours to forget.)" if refused else ""
    return f"Forgotten ({len(allowed)}):\n{listed}{tail}"


def _record_source(engine: EngineAPI, memory_id: int, message_id: int) -> None:
    """Record the `/remember` message as the fact's source, once dispatch has stored it."""
    with engine.db.session() as session:
        Memories(session).set_source(memory_id, message_id)


def _may_remove(context: CommandContext, memory: Memory) -> bool:
    """Return whether the asker may remove the memory: their own, their channel's; admins any."""
    where, user_id = context.conversation.where, context.message.user_id
    if context.engine.manifest.allows("admin", user_id):
        return True
    if memory.platform != where.platform:
        return False
    if memory.scope == ScopeKind.PERSON:
        return memory.user_id == user_id
    if memory.scope == ScopeKind.CHANNEL:
        return memory.channel == where.channel
    return False


def _source(memory: Memory) -> str:
    """Return who kept a memory, when, and where: `ana, 2026-11-27, #C1`."""
    when = memory.created_at.strftime("%Y-%m-%d")
    place = f", #{memory.channel}" if memory.channel else ""
    return f"{memory.author_name or memory.author_id or 'someone'}, {when}{place}"
