"""Memory within a token budget: scopes, stored memories, sizes, merging and extractive summaries.

A memory applies to a person (platform + user id), a channel (platform + channel), the team
(the whole platform) or one thread (its summary). Each scope has an index token, so a search
reads only the entries of the scopes that apply to a message.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from bot.types import HistoryEntry, MemoryItem, as_utc

_WORD = re.compile(r"[a-z0-9_]{3,}")
#: Words too common to say two texts are about the same thing.
_STOPWORDS = frozenset(
    "the and for you that this with have are was but not can what how why when where who".split()
    + "please could would should there their them then than about into from your our just".split()
)
#: (messages to summarise, the summary so far, the most tokens the new one may take) -> summary.
Summariser = Callable[[list[HistoryEntry], str, int], str]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class ScopeKind(str, enum.Enum):
    """Who a memory applies to."""

    PERSON = "person"
    CHANNEL = "channel"
    TEAM = "team"
    THREAD = "thread"


class MemoryKind(str, enum.Enum):
    """What a memory is: a fact someone asked to keep, an exchange, a thread's summary."""

    FACT = "fact"
    EXCHANGE = "exchange"
    SUMMARY = "summary"
    #: Offered in a thread ("Remember that …? React ✅"), kept as a FACT once someone confirms;
    #: never recalled, listed or searched before.
    PROPOSAL = "proposal"


@dataclass(frozen=True)
class Scope:
    """One scope: its kind, platform, and the channel or person it is about."""

    kind: ScopeKind
    platform: str
    channel: str = ""
    user_id: str = ""

    @property
    def token(self) -> str:
        """Return the index token marking this scope's entries: a prefix and 16 hex digits.

        The channel's token is `bot.db.search.scope_token`'s, so both indexes speak alike.
        """
        prefix, subject = {
            ScopeKind.PERSON: ("pe", self.user_id),
            ScopeKind.CHANNEL: ("ch", self.channel),
            ScopeKind.TEAM: ("tm", ""),
            ScopeKind.THREAD: ("th", self.channel),
        }[self.kind]
        if self.kind == ScopeKind.TEAM:
            return prefix + hashlib.sha256(f"team\n{self.platform}".encode()).hexdigest()[:16]
        return prefix + hashlib.sha256(f"{self.platform}\n{subject}".encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Return where a memory of this scope is kept, as a reply says it."""
        return {ScopeKind.PERSON: "for you (wherever you talk to me)", ScopeKind.CHANNEL: "for this channel",
                ScopeKind.TEAM: "for the whole team", ScopeKind.THREAD: "for this thread"}[self.kind]


def thread_scope(conversation_id: int) -> Scope:
    """Return the scope of one thread's own memories (its summary): its token marks their changes."""
    return Scope(ScopeKind.THREAD, "", channel=str(conversation_id))


def scopes_for(platform: str, channel: str, user_id: str) -> tuple[Scope, Scope, Scope]:
    """Return the person, channel and team scopes that apply to someone writing in a channel."""
    return (Scope(ScopeKind.PERSON, platform, user_id=user_id), Scope(ScopeKind.CHANNEL, platform, channel=channel),
            Scope(ScopeKind.TEAM, platform))


@dataclass(frozen=True)
class Memory:
    """A stored memory, as the repository hands it out."""

    id: int
    scope: ScopeKind
    kind: MemoryKind
    text: str
    tokens: int
    platform: str
    channel: str
    user_id: str
    author_id: str
    author_name: str
    created_at: datetime
    conversation_id: int | None = None
    source_message_id: int | None = None
    through_message_id: int | None = None
    #: Relevance to a query, higher is better (0 when it was not searched for).
    score: float = 0.0

    @property
    def short_id(self) -> str:
        """Return the id people type: `m12`."""
        return f"m{self.id}"


def in_order_said(entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
    """Return thread messages in the order they were stored, those said before the first of them moved ahead.

    What was said in a thread before the bot came (`plugins.memory.history`) is read from the
    platform after the message that brought the bot was stored, and keeps the platform's times.
    Only those move (by time): the rest keep their stored order, whatever the clocks say.
    """
    stored = sorted(entries, key=lambda entry: entry.id)
    if not stored:
        return stored
    start = as_utc(stored[0].created_at)
    earlier = sorted((entry for entry in stored if as_utc(entry.created_at) < start),
                     key=lambda entry: (as_utc(entry.created_at), entry.id))
    return earlier + [entry for entry in stored if as_utc(entry.created_at) >= start] if earlier else stored


def estimate_tokens(text: str) -> int:
    """Return a cheap estimate of the text's size in model tokens (~4 characters a token)."""
    return len(text) // 4 + 1


def keywords(text: str) -> set[str]:
    """Return the text's distinctive lower-case words."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def within_budget(items: Iterable[MemoryItem], budget_tokens: int) -> list[MemoryItem]:
    """Return the best-scoring items whose sizes fit the budget together, best first."""
    chosen: list[MemoryItem] = []
    spent = 0
    for item in sorted(items, key=lambda i: i.score, reverse=True):
        if spent + item.tokens <= budget_tokens:
            chosen.append(item)
            spent += item.tokens
    return chosen


def cut_to_tokens(text: str, tokens: int) -> str:
    """Return the text cut at a line or word break so that it takes at most `tokens`."""
    if estimate_tokens(text) <= tokens:
        return text
    limit = max(0, (tokens - 2) * 4)
    head = text[:limit]
    cut = max(head.rfind("\n"), head.rfind(" "))
    return (head[:cut] if cut > limit // 2 else head).rstrip() + " …"


def extractive_summary(entries: list[HistoryEntry], budget_tokens: int, previous: str = "") -> str:
    """Return a summary of thread messages without a model: each message's first sentence.

    Keeps the previous summary's head, then one line per message, longest lines first when
    they do not all fit, shown in the thread's order.
    """
    lines = [f"{entry.author}: {_first_sentence(entry.text)}" for entry in entries if entry.text.strip()]
    room = budget_tokens - (estimate_tokens(previous) if previous else 0)
    if room < budget_tokens // 3 and previous:  # the old summary would crowd out what is new
        previous = cut_to_tokens(previous, budget_tokens // 3)
        room = budget_tokens - estimate_tokens(previous)
    chosen: set[int] = set()
    spent = 0
    for index in sorted(range(len(lines)), key=lambda i: len(lines[i]), reverse=True):
        cost = estimate_tokens(lines[index])
        if spent + cost <= room:
            chosen.add(index)
            spent += cost
    body = "\n".join(lines[i] for i in sorted(chosen))
    return cut_to_tokens(f"{previous}\n{body}".strip(), budget_tokens)


#: The longest first sentence an extractive summary keeps of one message.
FIRST_SENTENCE_CHARS = 200


def _first_sentence(text: str) -> str:
    first = _SENTENCE_END.split(" ".join(text.split()), maxsplit=1)[0]
    return first if len(first) <= FIRST_SENTENCE_CHARS else first[:FIRST_SENTENCE_CHARS].rstrip() + "…"
