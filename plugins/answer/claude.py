"""Direct answers from Claude, streamed into the thread as edits of one message.

    answer_message ─► prompt (thread history + channel notes, already within the budget)
        ─► first post "✍️ …" ─► client.messages.stream ─► LiveMessage edits (<= 1/s, "✍️ …"
        while writing) ─► final edit, stored as the reply ─► (long: answer.md attached)

The answer is plain markdown; each adapter converts it to its platform's format when it
posts. When the model cannot be reached after the SDK's retries, the posted message says so
in one plain sentence and the job ends cleanly. With no `ANTHROPIC_API_KEY` this returns None
and the engine's notice says how to configure one.
"""

from __future__ import annotations

import logging

from bot import constants
from bot.hookspecs import hookimpl
from bot.progress import LiveMessage
from bot.types import Attachment, Conversation, EngineAPI, MemoryItem, Message, Reply
from plugins import claude_api

log = logging.getLogger(__name__)

#: The visible "still writing" mark on every partial edit (llmcord's habit: the reader can
#: tell a streaming answer from a finished one).
WRITING_MARK = "✍️ …"
#: How often the streamed message is edited; one edit a second suits Slack and Discord.
EDIT_INTERVAL_S = constants.STATUS_EDIT_INTERVAL_S
#: The file a long answer is attached as.
ATTACHMENT_NAME = "answer.md"

SYSTEM = """You are {name}, a chat bot for a software team{description}. You are answering in \
a chat thread; several people may be talking in it.

Answer in GitHub-flavoured markdown without HTML: short paragraphs, lists and fenced code blocks \
with a language. Be concise: this is chat, not a document.

You cannot see the team's repository or run anything yourself. A coding agent can: it works in \
the thread's workspace. When someone asks for a change to their code, or for something only their \
repository can tell, say in a sentence what the coding agent would do and ask whether to start \
it: they can reply "go ahead", or write `/agent <task>`."""

NOTES_HEADER = "\n\nNotes from earlier threads of this channel; use them only if they are relevant:"
#: What the context builder (`bot.context`) recalled, by source, in its priority order; items
#: of other plugins ("" here) go with the notes.
MEMORY_HEADERS = (
    ("memory:person", "\n\nWhat {asker} (who is asking) asked you to remember about them:"),
    ("memory:channel", "\n\nWhat this channel asked you to remember:"),
    ("memory:team", "\n\nWhat the team asked you to remember:"),
    ("channel", NOTES_HEADER),
    ("", "\n\nOther notes; use them only if they are relevant:"),
)
KNOWN_SOURCES = ("memory", "channel", "thread")
SUMMARY_SOURCE = "thread:summary"
SUMMARY_HEADER = "\n\nThe earlier part of this thread, summarised (its newest messages follow as turns):"
FAILED = "Sorry, something went wrong while answering; the error is in the bot's log."
EMPTY = "I have no answer to that; could you rephrase it?"
CUT_AT_LIMIT = "\n\n_(I stopped at my length limit; ask me to go on.)_"
ATTACHED = "\n\n_(The answer is longer than a chat message: the whole of it is attached as `answer.md`.)_"


@hookimpl
def answer_message(message: Message, conversation: Conversation, memories: list[MemoryItem], engine: EngineAPI,
                   reply_to: int) -> str | None:
    llm = engine.manifest.llm
    client = claude_api.client_for(engine, timeout=llm.timeout_seconds, max_retries=llm.max_retries)
    if client is None:
        return None
    import anthropic  # loaded by client_for already; named here for its exception types

    system, turns = build_prompt(engine, message, memories)
    first_id = engine.say(conversation, Reply(WRITING_MARK, partial=True))
    live = LiveMessage.in_thread(engine, conversation, message_id=first_id, reply_to=reply_to,
                                 interval=EDIT_INTERVAL_S)
    text = ""
    try:
        with client.messages.stream(model=llm.model, max_tokens=llm.max_tokens, system=system,
                                    messages=turns) as stream:
            for delta in stream.text_stream:
                text += delta
                live.update(Reply(f"{preview(text).rstrip()} {WRITING_MARK}", partial=True))
            final = stream.get_final_message()
    except anthropic.APIError as exc:
        claude_api.count_call("answer", llm.model)
        log.warning("direct answer for message %s failed: %s (%s)", reply_to, claude_api.failure_reason(exc), exc)
        live.finish(Reply(failure_text(text, exc)))
        return ""  # told in the thread; nothing worth remembering
    except Exception:  # boundary: one streamed answer; the posted message must not stay half-written
        log.exception("direct answer for message %s failed", reply_to)
        live.finish(Reply(f"{text.rstrip()}\n\n_({FAILED})_" if text.strip() else FAILED))
        return ""
    claude_api.count_call("answer", llm.model, final)
    log.info("answered message %s with %s: %d tokens in, %d out", reply_to, final.model,
             final.usage.input_tokens, final.usage.output_tokens)
    answer = text.strip() or EMPTY
    if final.stop_reason == "max_tokens":
        answer += CUT_AT_LIMIT
    if len(answer) > constants.REPLY_ATTACH_THRESHOLD:
        live.finish(Reply(preview(answer) + ATTACHED))
        engine.upload(conversation, Attachment(ATTACHMENT_NAME, answer.encode("utf-8"), title="The full answer"))
    else:
        live.finish(Reply(answer))
    return answer


def build_prompt(engine: EngineAPI, message: Message, memories: list[MemoryItem]) -> tuple[str, list[dict]]:
    """Return the system prompt and the alternating turns: the thread so far, then the message.

    Memory items come from the memory plugins, within `llm.context_budget_tokens`: the
    thread's own messages (`thread:user` / `thread:assistant`, newer ones scoring higher) and
    notes from other threads of the channel. Everything passes the redaction step.
    """
    manifest = engine.manifest
    description = f" ({manifest.description.rstrip('.')})" if manifest.description else ""
    system = SYSTEM.format(name=manifest.name, description=description)
    asker = message.user_name or message.user_id
    for source, header in MEMORY_HEADERS:
        notes = [item.text for item in memories if item.source == source
                 or (source == "" and item.source.split(":")[0] not in KNOWN_SOURCES)]
        if notes:
            system += header.format(asker=asker) + "".join(f"\n- {' '.join(note.split())}" for note in notes)
    summary = [item.text for item in memories if item.source == SUMMARY_SOURCE]
    if summary:
        system += SUMMARY_HEADER + "\n" + summary[0]
    thread = sorted((item for item in memories if item.source in ("thread:user", "thread:assistant")),
                    key=lambda item: item.score)
    if thread and thread[-1].source == "thread:user" and thread[-1].text.endswith(message.text):
        thread.pop()  # the message itself, stored as typed ("/ask what is ..."); it is sent below
    turns: list[dict] = []
    for item in thread:
        role = "assistant" if item.source == "thread:assistant" else "user"
        text = item.text.removeprefix("bot: ") if role == "assistant" else item.text
        _append(turns, role, text)
    _append(turns, "user", f"{message.user_name or message.user_id}: {message.text}")
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": "(The thread so far.)"})
    for turn in turns:
        turn["content"] = engine.redact(turn["content"])
    return engine.redact(system), turns


def _append(turns: list[dict], role: str, text: str) -> None:
    """Add a turn, merging it into the last one when the same side speaks twice."""
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] += "\n\n" + text
    else:
        turns.append({"role": role, "content": text})


def preview(text: str, limit: int = constants.REPLY_ATTACH_THRESHOLD) -> str:
    """Return the text, or its head cut at a line break, when it is longer than a chat message."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = head.rfind("\n")
    return (head[:cut] if cut > limit // 2 else head).rstrip() + "\n…"


def failure_text(partial: str, exc: BaseException) -> str:
    """Return what the thread shows when the model failed: one plain sentence, after any text so far."""
    if claude_api.refused_key(exc):
        sentence = "The language model refused this bot's API key; ask whoever runs the bot to check `ANTHROPIC_API_KEY`."
    elif claude_api.rejected_request(exc):
        sentence = "The language model rejected the request; the details are in the bot's log."
    elif partial.strip():
        sentence = (f"The answer stopped midway: I lost the language model ({claude_api.failure_reason(exc)}); "
                    "please try again in a minute.")
    else:
        sentence = (f"I couldn't reach the language model ({claude_api.failure_reason(exc)}); "
                    "please try again in a minute.")
    return f"{partial.rstrip()}\n\n_({sentence})_" if partial.strip() else sentence
