"""The context builder: what a model is given for one message, within the token budget.

    build(message) ─► the thread: its summary + newest messages   (first: it is the conversation)
                   ─► the asker's own facts ─► the channel's ─► the team's
                   ─► related exchanges from the channel's other threads

Filled in that priority order within `llm.context_budget_tokens`. The thread is guaranteed
`memory.thread_share` of the budget when it needs it; memories take the rest, and whatever
they leave goes back to the thread. When the thread outgrows its room, its older part is
summarised (by the caller's summariser, a model; else the first sentences of each message),
stored, and reused by every later message until the thread outgrows its room again.

Each process keeps a cache per conversation (its messages since the summary, the summary) and
per scope (its newest facts). A new message costs its own work only: one query for the
thread's new messages, one for the scopes' version stamps (`memory_scopes`: any write to a
scope, from any process, changes its stamp and so invalidates the caches of it) and one search
for what relates to the message's words.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from sqlalchemy.orm import Session

from bot.db import Database
from bot.db.memories import Memories, thread_entries
from bot.memory import (
    Memory,
    MemoryKind,
    Scope,
    ScopeKind,
    Summariser,
    cut_to_tokens,
    estimate_tokens,
    extractive_summary,
    in_order_said,
    keywords,
    scopes_for,
    thread_scope,
)
from bot.types import Conversation, HistoryEntry, MemoryItem, Message

log = logging.getLogger(__name__)

#: Facts read per scope and kept in the cache, newest first: a person or a channel rarely
#: asks for more to be remembered, and a search finds older ones that matter to a message.
FACTS_PER_SCOPE = 50
#: Related memories a message's search brings back (facts and exchanges together).
RELATED_LIMIT = 20
#: Messages read the first time a thread is built; more are read only to summarise them.
FIRST_LOAD_ROWS = 400
#: The last few cached messages are read again with the new ones: the bot's answer is posted
#: as "✍️ …" and edited to its final text afterwards (`Engine.edit(final=True)`).
TAIL_REFRESH = 4
#: When the thread is summarised, the newest messages within this share of its room stay word
#: for word, so the next summary is due only after as much again has been said.
KEEP_SHARE = 0.5
#: The most of the thread's room its summary may take.
SUMMARY_SHARE = 0.25
#: Threads cached per process (least recently used dropped first); a few hundred active
#: threads is a busy team's day.
MAX_CACHED_THREADS = 512
#: Sources of the items handed to `answer_message`: the answer plugin orders and labels by them.
SOURCES = {ScopeKind.PERSON: "memory:person", ScopeKind.CHANNEL: "memory:channel", ScopeKind.TEAM: "memory:team"}
#: Related exchanges keep the source the channel notes always had.
RELATED_SOURCE = "channel"
SUMMARY_SOURCE = "thread:summary"


@dataclass
class Context:
    """What a model gets for one message, in priority order, and what it costs in tokens."""

    thread: list[HistoryEntry] = field(default_factory=list)
    summary: str = ""
    person: list[Memory] = field(default_factory=list)
    channel: list[Memory] = field(default_factory=list)
    team: list[Memory] = field(default_factory=list)
    related: list[Memory] = field(default_factory=list)

    def items(self) -> list[MemoryItem]:
        """Return the context as memory items, scored so that the priority order survives a merge.

        Thread messages score highest, newer above older (the answer plugin sorts them back
        into the thread's order); then the summary, the person's, the channel's and the team's
        facts and the related exchanges, each section below the one before.
        """
        items = [MemoryItem(text=_line(entry), source=f"thread:{entry.role}", tokens=estimate_tokens(_line(entry)),
                            score=5.0 + index / (len(self.thread) + 1)) for index, entry in enumerate(self.thread)]
        if self.summary:
            items.append(MemoryItem(text=self.summary, source=SUMMARY_SOURCE, tokens=estimate_tokens(self.summary),
                                    score=4.5))
        sections = [(self.person, SOURCES[ScopeKind.PERSON], 4.0), (self.channel, SOURCES[ScopeKind.CHANNEL], 3.0),
                    (self.team, SOURCES[ScopeKind.TEAM], 2.0), (self.related, RELATED_SOURCE, 1.0)]
        for memories, source, top in sections:
            for rank, memory in enumerate(memories):
                items.append(MemoryItem(text=memory.text, source=source, tokens=memory.tokens,
                                        score=top - rank / (len(memories) + 1)))
        return items

    @property
    def tokens(self) -> int:
        """Return the tokens the whole context takes."""
        return sum(item.tokens for item in self.items())


@dataclass
class _Thread:
    """A cached thread: its summary and the messages after it (all of them when `complete`)."""

    entries: list[HistoryEntry]
    summary: Memory | None
    version: str | None
    complete: bool


class ContextBuilder:
    """Builds `Context`s from the database, caching per conversation and per scope."""

    def __init__(self, db: Database, *, thread_share: float = 0.6, half_life_days: float = 30.0) -> None:
        self.db = db
        self.thread_share = thread_share
        self.half_life_days = half_life_days
        self._lock = threading.Lock()
        self._threads: OrderedDict[int, _Thread] = OrderedDict()
        self._facts: dict[str, tuple[str | None, list[Memory]]] = {}

    def build(self, message: Message, conversation: Conversation, budget_tokens: int, *,
              summarise: Summariser | None = None) -> Context:
        """Return the context for a message, within the budget (the message itself left out)."""
        where = conversation.where
        person, channel, team = scopes_for(where.platform, where.channel, message.user_id)
        scopes = [person, channel, team] if message.user_id else [channel, team]
        own = thread_scope(conversation.id).token
        with self.db.reading() as session:
            memories = Memories(session)
            versions = memories.versions([scope.token for scope in scopes] + [own])
            thread = self._thread(session, conversation.id, versions.get(own), budget_tokens)
            facts = {scope.kind: self._facts_of(memories, scope, versions.get(scope.token)) for scope in scopes}
            hits = (memories.search(scopes, message.text, kinds=(MemoryKind.FACT, MemoryKind.EXCHANGE),
                                    limit=RELATED_LIMIT, half_life_days=self.half_life_days)
                    if keywords(message.text) else [])
        entries = thread.entries
        if entries and entries[-1].role == "user" and entries[-1].text == message.text:
            entries = entries[:-1]  # the message being answered is sent on its own
        context = Context()
        summary_tokens = thread.summary.tokens if thread.summary else 0
        thread_need = min(budget_tokens, summary_tokens + sum(_tokens(entry) for entry in entries))
        room = budget_tokens - min(thread_need, int(budget_tokens * self.thread_share))
        spent = self._fill(context, facts, hits, conversation.id, room)
        self._fill_thread(context, conversation, thread, entries, budget_tokens - spent, summarise)
        return context

    def forget(self, conversation_id: int | None = None) -> None:
        """Drop the cache of one conversation (or of everything)."""
        with self._lock:
            if conversation_id is None:
                self._threads.clear()
                self._facts.clear()
            else:
                self._threads.pop(conversation_id, None)

    # -- the memories ---------------------------------------------------------------------------

    def _facts_of(self, memories: Memories, scope: Scope, version: str | None) -> list[Memory]:
        """Return the scope's newest facts, from the cache while the scope's version stands."""
        with self._lock:
            cached = self._facts.get(scope.token)
        if cached is not None and cached[0] == version:
            return cached[1]
        facts = memories.newest(scope, MemoryKind.FACT, FACTS_PER_SCOPE)
        with self._lock:
            self._facts[scope.token] = (version, facts)
        return facts

    @staticmethod
    def _fill(context: Context, facts: dict[ScopeKind, list[Memory]], hits: list[Memory], conversation_id: int,
              room: int) -> int:
        """Fill the memory sections in priority order within `room` tokens; return the tokens used."""
        spent = 0
        for kind, section in ((ScopeKind.PERSON, context.person), (ScopeKind.CHANNEL, context.channel),
                              (ScopeKind.TEAM, context.team)):
            matched = [hit for hit in hits if hit.kind == MemoryKind.FACT and hit.scope == kind]
            seen: set[int] = set()
            for memory in [*matched, *facts.get(kind, [])]:  # what the message is about first, then the newest
                if memory.id in seen or spent + memory.tokens > room:
                    continue
                seen.add(memory.id)
                section.append(memory)
                spent += memory.tokens
        for hit in hits:
            if hit.kind == MemoryKind.EXCHANGE and hit.conversation_id != conversation_id \
                    and spent + hit.tokens <= room:
                context.related.append(hit)
                spent += hit.tokens
        return spent

    # -- the thread -----------------------------------------------------------------------------

    def _thread(self, session: Session, conversation_id: int, version: str | None, budget_tokens: int) -> _Thread:
        """Return the thread's summary and messages since: cached plus what is new, or read afresh."""
        with self._lock:
            cached = self._threads.get(conversation_id)
            if cached is not None:
                self._threads.move_to_end(conversation_id)
        if cached is not None and cached.version == version:
            tail = cached.entries[-TAIL_REFRESH:]
            after = tail[0].id - 1 if tail else (cached.summary.through_message_id if cached.summary else None)
            fresh = thread_entries(session, conversation_id, after_id=after)
            kept = [entry for entry in cached.entries if after is None or entry.id <= after]
            thread = replace(cached, entries=kept + fresh)
        else:
            summary = Memories(session).summary(conversation_id)
            after = summary.through_message_id if summary else None
            entries = thread_entries(session, conversation_id, after_id=after, newest=FIRST_LOAD_ROWS)
            thread = _Thread(entries, summary, version, complete=len(entries) < FIRST_LOAD_ROWS)
        thread = _trimmed(replace(thread, entries=in_order_said(thread.entries)), budget_tokens)
        self._keep(conversation_id, thread)
        return thread

    def _fill_thread(self, context: Context, conversation: Conversation, thread: _Thread,
                     entries: list[HistoryEntry], room: int, summarise: Summariser | None) -> None:
        """Put the thread into its room: all of it, or a summary of its older part and the newest messages."""
        summary = thread.summary.text if thread.summary else ""
        needed = sum(_tokens(entry) for entry in entries) + (estimate_tokens(summary) if summary else 0)
        if needed > room or not thread.complete:
            summary, entries = self._roll(conversation, thread, entries, room, summarise)
        if summary:
            summary = cut_to_tokens(summary, max(1, int(room * SUMMARY_SHARE)))
            context.summary = summary
            room -= estimate_tokens(summary)
        chosen: list[HistoryEntry] = []
        for entry in reversed(entries):
            cost = _tokens(entry)
            if cost > room:
                break
            chosen.append(entry)
            room -= cost
        context.thread = list(reversed(chosen))

    def _roll(self, conversation: Conversation, thread: _Thread, entries: list[HistoryEntry], room: int,
              summarise: Summariser | None) -> tuple[str, list[HistoryEntry]]:
        """Summarise the thread's older part into its stored summary; return it and the messages kept."""
        keep: list[HistoryEntry] = []
        spent = 0
        for entry in reversed(entries):
            if spent + _tokens(entry) > room * KEEP_SHARE:
                break
            keep.insert(0, entry)
            spent += _tokens(entry)
        first_kept = keep[0].id if keep else (entries[-1].id + 1 if entries else None)
        previous = thread.summary.text if thread.summary else ""
        through = thread.summary.through_message_id if thread.summary else None
        with self.db.reading() as session:  # everything since the summary, not only what is cached
            older = thread_entries(session, conversation.id, after_id=through, before_id=first_kept)
        if not older:
            return previous, entries
        budget = max(1, int(room * SUMMARY_SHARE))
        text = ""
        if summarise is not None:
            try:
                text = summarise(older, previous, budget)
            except Exception:  # boundary: a summariser (a model) failing must not lose the answer
                log.exception("summarising thread %s failed; keeping its first sentences instead", conversation.id)
        text = cut_to_tokens(text.strip() or extractive_summary(older, budget, previous), budget)
        with self.db.session() as session:
            memories = Memories(session)
            memories.set_summary(conversation.id, conversation.where, text, older[-1].id, estimate_tokens(text))
            stored = memories.summary(conversation.id)
            version = memories.versions([thread_scope(conversation.id).token]).get(thread_scope(conversation.id).token)
        self._keep(conversation.id, _Thread([e for e in thread.entries if e.id > older[-1].id], stored, version,
                                            complete=True))
        return text, keep

    def _keep(self, conversation_id: int, thread: _Thread) -> None:
        with self._lock:
            self._threads[conversation_id] = thread
            self._threads.move_to_end(conversation_id)
            while len(self._threads) > MAX_CACHED_THREADS:
                self._threads.popitem(last=False)


def _trimmed(thread: _Thread, budget_tokens: int) -> _Thread:
    """Return the thread with only as many newest messages as the whole budget could hold."""
    spent = 0
    for index in range(len(thread.entries) - 1, -1, -1):
        spent += _tokens(thread.entries[index])
        if spent > budget_tokens:
            return replace(thread, entries=thread.entries[index + 1:], complete=False)
    return thread


def _line(entry: HistoryEntry) -> str:
    return f"{entry.author}: {entry.text}"


def _tokens(entry: HistoryEntry) -> int:
    return estimate_tokens(_line(entry))

