"""Proposed memories: a decision or a stated preference is offered to keep, and kept only when confirmed.

    worker, after an answer or a run: remember ─► detect (regular expressions over the person's message)
        ─► "Remember that staging runs on Thursdays? React ✅ to keep it." posted in the thread
        ─► stored as kind `proposal` with the chat message's id (never recalled, listed or searched)
    adapter: ✅ on that message ─► reaction_added ─► allowed here? ─► a kept fact, indexed, "Kept …"
    console (no reactions): `/keep` keeps the thread's latest proposal

A decision ("we decided …", "let's always …", "from now on …", "X runs on Thursdays") is
offered for the channel; a preference ("I prefer …") for the person who said it, and only they
can keep it. The detector is a handful of regular expressions, no model: it runs after every
answer and must cost nothing; it misses some decisions rather than asking about chatter.
Nothing the redactor would change is offered, nor a fact the scope already holds or was
offered. Unconfirmed proposals older than `memory.proposal_ttl_hours` are deleted whenever a
new one is considered, and cannot be kept. `memory.propose: false` turns all of this off.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta

from bot.db.repositories import Conversations, Memories
from bot.errors import CommandError
from bot.hookspecs import hookimpl
from bot.memory import Memory, ScopeKind, estimate_tokens, scopes_for
from bot.redaction import REDACTED
from bot.types import Command, CommandContext, Conversation, EngineAPI, Message, Reaction, as_utc, utcnow

log = logging.getLogger(__name__)
#: Seconds a ✅ on a bot message that is no proposal (yet) waits before it is looked up again.
PROPOSAL_WRITE_WAIT_S = 0.5

#: Reactions that keep a proposal: Slack names the emoji, Discord sends it.
KEEP_EMOJI = frozenset({"white_check_mark", "heavy_check_mark", "✅", "✔️"})
#: Platforms whose adapters pass reactions on; elsewhere the proposal asks for `/keep`.
REACTING_PLATFORMS = frozenset({"slack", "discord"})
#: A fact shorter than this many words is too vague to keep ("we decided so").
MIN_FACT_WORDS = 3
#: A proposal quotes at most this many characters: a decision is a sentence, not a paragraph.
MAX_PROPOSAL_CHARS = 300
_SENTENCES = re.compile(r"(?<=[.!?;\n])\s+")
_DAYS = r"(?:mon|tues|wednes|thurs|fri|satur|sun)days?"
#: (pattern, scope, how the fact is written from the match); the first pattern that matches wins.
_DECISIONS: list[tuple[re.Pattern[str], ScopeKind, str]] = [
    (re.compile(r"^(?:so,?\s+|ok(?:ay)?,?\s+)?let'?s (?P<how>always|never) (?P<rest>.+)", re.I), ScopeKind.CHANNEL,
     "we {how} {rest}"),
    (re.compile(r"^(?:so,?\s+|ok(?:ay)?,?\s+)?(?:from now on|going forward),?\s+(?P<rest>.+)", re.I),
     ScopeKind.CHANNEL, "{rest}"),
    (re.compile(r"^(?:so,?\s+|ok(?:ay)?,?\s+)?we(?:'ve| have)? (?:decided|agreed)(?: that| on)?,?\s+(?P<rest>.+)",
                re.I), ScopeKind.CHANNEL, "{rest}"),
    (re.compile(r"^(?:so,?\s+|ok(?:ay)?,?\s+)?(?:the decision is|decision):?\s+(?P<rest>.+)", re.I),
     ScopeKind.CHANNEL, "{rest}"),
    (re.compile(rf"^(?P<rest>(?:the )?[\w-]+(?: [\w-]+)? (?:runs?|happens?|ships?|deploys?|is|are) "
                rf"(?:on|every) {_DAYS}\b.*)", re.I), ScopeKind.CHANNEL, "{rest}"),
    (re.compile(r"^(?P<rest>I (?:prefer|always prefer|'d rather|would rather|like my|want my) .+)", re.I),
     ScopeKind.PERSON, "{rest}"),
]


@dataclass(frozen=True)
class Candidate:
    """A fact worth offering to keep, and for whom."""

    text: str
    scope: ScopeKind


def detect(text: str) -> Candidate | None:
    """Return the first decision or preference stated in the text, or None."""
    for sentence in _SENTENCES.split(text.strip()):
        sentence = " ".join(sentence.split()).rstrip(" .!;")
        if not sentence or sentence.endswith("?") or sentence.startswith(("/", "!")):
            continue
        for pattern, scope, shape in _DECISIONS:
            match = pattern.match(sentence)
            if not match:
                continue
            fact = shape.format(**match.groupdict()).strip()
            if scope == ScopeKind.CHANNEL and fact.lower().startswith("to "):
                fact = "we " + fact[3:]  # "we decided to squash-merge" -> "we squash-merge"
            if len(fact.split()) >= MIN_FACT_WORDS and len(fact) <= MAX_PROPOSAL_CHARS:
                return Candidate(_sentence_case(fact) if scope == ScopeKind.CHANNEL else fact, scope)
    return None


def _sentence_case(text: str) -> str:
    """Return the text with its first word capitalised, unless that word is a name (`iOS`, `API`)."""
    first = text.split(" ", 1)[0]
    return text[0].upper() + text[1:] if first.islower() else text


@hookimpl(trylast=True)
def remember(message: Message, conversation: Conversation, engine: EngineAPI) -> None:
    settings = engine.manifest.memory
    if not settings.propose:
        return
    try:
        candidate = detect(message.text)
        if candidate is None or REDACTED in candidate.text or engine.redact(candidate.text) != candidate.text:
            return
        with engine.db.session() as session:  # here, not after every answer: only when one is considered
            Memories(session).expire_proposals(utcnow() - timedelta(hours=settings.proposal_ttl_hours))
        if len(candidate.text) > settings.max_fact_chars:
            return
        person, channel, _ = scopes_for(conversation.where.platform, conversation.where.channel, message.user_id)
        scope = person if candidate.scope == ScopeKind.PERSON else channel
        if scope.kind == ScopeKind.PERSON and not message.user_id:
            return
        with engine.db.reading() as session:
            if Memories(session).holds(scope, candidate.text):
                return
        # Stored before it is posted, so a ✅ quicker than the write after the post still finds it.
        with engine.db.session() as session:
            proposal_id = Memories(session).propose(
                candidate.text, scope=scope, conversation_id=conversation.id, platform_message_id=None,
                tokens=estimate_tokens(candidate.text), author_id=message.user_id, author_name=message.user_name)
        try:
            posted = engine.say(conversation, _offer(candidate, conversation.where.platform))
        except Exception:
            with engine.db.session() as session:
                Memories(session).delete(Memories(session).get([proposal_id]))
            raise
        with engine.db.session() as session:
            Memories(session).posted_as(proposal_id, posted)
    except Exception:  # boundary: the answer is out; a failed proposal must not look like a failed answer
        log.exception("proposing a memory in %s failed", conversation.where)


def _offer(candidate: Candidate, platform: str) -> str:
    how = "React ✅ to keep it" if platform in REACTING_PLATFORMS else "Reply `/keep` to keep it"
    if candidate.scope == ScopeKind.PERSON:
        said = re.sub(r"\bmy\b", "your", re.sub(r"^I\b", "you", candidate.text), flags=re.I)
        return f"Remember that {said}? {how} (for you, wherever you talk to me)."
    first = candidate.text.split(" ", 1)[0]
    said = candidate.text[0].lower() + candidate.text[1:] if first[1:].islower() or len(first) == 1 else candidate.text
    return f"Remember that {said}? {how} for this channel."


@hookimpl
def reaction_added(reaction: Reaction, engine: EngineAPI) -> None:
    if reaction.emoji not in KEEP_EMOJI:
        return
    proposal = _proposal_posted_as(engine, reaction)
    if proposal is None or proposal.conversation_id is None:
        return  # a ✅ on any other message
    with engine.db.reading() as session:
        conversation = Conversations(session).get(proposal.conversation_id)
    try:
        reply = keep(engine, proposal, conversation, reaction.user_id)
    except CommandError as exc:
        log.info("%s's ✅ on proposal %s: %s", reaction.user_id, proposal.short_id, exc)
        return  # a reaction is no request: someone not allowed to keep it gets no answer
    if reply:
        engine.say(conversation, reply)


def _proposal_posted_as(engine: EngineAPI, reaction: Reaction) -> Memory | None:
    """Return the proposal the reacted message is, looking once more after a moment: the ✅ can
    arrive between the offer's post and the write of its message id."""
    for attempt in range(2):
        with engine.db.reading() as session:
            proposal = Memories(session).proposal(reaction.platform, reaction.message_id)
        if proposal is not None or attempt:
            return proposal
        time.sleep(PROPOSAL_WRITE_WAIT_S)
    return None


def keep(engine: EngineAPI, proposal: Memory, conversation: Conversation, user_id: str) -> str | None:
    """Keep a proposal as a fact of its scope, as `user_id` asks; return what to say, None if it was kept already.

    Raises `CommandError` (its message for the person) when they may not, or the proposal expired.
    """
    if not engine.manifest.allows("ask", user_id, conversation.where):
        raise CommandError("You can't keep memories in this channel (the bot's permissions do not include you).")
    if proposal.scope == ScopeKind.PERSON and proposal.user_id != user_id:
        raise CommandError(f"Only {proposal.author_name or proposal.user_id} can keep their own preference.")
    ttl = engine.manifest.memory.proposal_ttl_hours
    if as_utc(proposal.created_at) < utcnow() - timedelta(hours=ttl):
        with engine.db.session() as session:
            Memories(session).delete([proposal])
        raise CommandError(f"That suggestion is more than {ttl:g} hours old and was dropped; "
                           "`/remember` the fact if it still holds.")
    with engine.db.session() as session:
        if not Memories(session).confirm(proposal):
            return None
    where = "for this channel" if proposal.scope == ScopeKind.CHANNEL else \
        f"for {proposal.author_name or proposal.user_id}"
    return f"Kept {where} as `{proposal.short_id}`: {proposal.text}"


@hookimpl
def register_commands() -> list[Command]:
    return [Command("keep", "keep the memory I last offered to remember in this thread", keep_latest,
                    usage="/keep")]


def keep_latest(context: CommandContext) -> str:
    """Keep the thread's latest proposed memory (where no reactions exist, as in the console)."""
    with context.engine.db.reading() as session:
        proposal = Memories(session).latest_proposal(context.conversation.id)
    if proposal is None:
        return "I have offered nothing to remember in this thread. Keep a fact with `/remember <fact>`."
    return keep(context.engine, proposal, context.conversation, context.message.user_id) or \
        f"`{proposal.short_id}` is kept already."
