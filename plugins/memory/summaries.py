"""Thread summaries by Claude: the older part of a thread that outgrew its room, in a few lines.

Not a plugin (no hooks): `thread_history` hands `summariser(engine)` to the context builder,
which calls it in the worker only when a thread outgrows its room, stores the summary and
reuses it. Without an API key there is no summariser and the builder keeps each message's first
sentence instead; when the model fails, the builder does the same and logs why.
"""

from __future__ import annotations

from bot.memory import Summariser, estimate_tokens, extractive_summary
from bot.types import EngineAPI, HistoryEntry
from plugins import claude_api

#: The most of a thread sent to be summarised at once, in tokens: far below any model's
#: window, and a summary of more says little more. Longer parts are cut down extractively first.
MAX_INPUT_TOKENS = 12_000
#: A summary is a chat detour before an answer: it gives up sooner than an answer does.
RETRIES = 1

SYSTEM = """You summarise the earlier part of a team's chat thread for the assistant that will \
answer its next message. Keep decisions, facts, names, numbers, file names, open questions and \
who asked for what. Leave out greetings and chatter. Plain text, short lines, no preamble."""


def summariser(engine: EngineAPI) -> Summariser | None:
    """Return a function summarising thread messages with Claude, or None without an API key."""
    timeout = engine.manifest.router.timeout_seconds
    client = claude_api.client_for(engine, timeout=timeout, max_retries=RETRIES)
    if client is None:
        return None
    model = engine.manifest.memory.summary_model or engine.manifest.router.classifier_model

    def summarise(entries: list[HistoryEntry], previous: str, budget_tokens: int) -> str:
        transcript = "\n".join(f"{entry.author}: {entry.text}" for entry in entries)
        if estimate_tokens(transcript) > MAX_INPUT_TOKENS:
            transcript = extractive_summary(entries, MAX_INPUT_TOKENS)
        before = f"The summary so far:\n{previous}\n\n" if previous else ""
        response = client.messages.create(
            model=model, max_tokens=max(64, budget_tokens), system=SYSTEM,
            messages=[{"role": "user", "content": engine.redact(f"{before}The messages since:\n{transcript}")}])
        claude_api.count_call("summary", model, response)
        text = "".join(getattr(block, "text", "") for block in response.content)
        return engine.redact(text)

    return summarise
