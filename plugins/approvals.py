"""`/approve [always]` and `/reject`: answer the running run's approval request (buttons send the same).

A press of Approve once / Always / Reject under a request is dispatched as the line its button
stands for (`/approve once per_…`), so a button and a typed answer are one path: the command's
`agent` permission (who may start the agent here), then `bot.approvals.answer`.
"""

from __future__ import annotations

from bot import approvals
from bot.errors import CommandError
from bot.hookspecs import hookimpl
from bot.types import Command, CommandContext

USAGE_APPROVE = "/approve [once|always] [request]"
USAGE_REJECT = "/reject [request]"


def approve(context: CommandContext) -> str:
    """Approve the request (the named one, else the oldest waiting), once or always."""
    words = context.argument.split()
    reply = approvals.ONCE
    if words and words[0].lower() in (approvals.ONCE, approvals.ALWAYS):
        reply = words.pop(0).lower()
    return approvals.answer(context, reply, _request_id(words, USAGE_APPROVE))


def reject(context: CommandContext) -> str:
    """Reject the request (the named one, else the oldest waiting)."""
    return approvals.answer(context, approvals.REJECT, _request_id(context.argument.split(), USAGE_REJECT))


def _request_id(words: list[str], usage: str) -> str:
    if len(words) > 1 or (words and not words[0].startswith("per")):
        raise CommandError(f"Usage: `{usage}` (the request is optional: the oldest waiting one is answered).")
    return words[0] if words else ""


@hookimpl
def register_commands() -> list[Command]:
    return [Command("approve", "let the agent go on with the tool call it asked about (once, or always)", approve,
                    usage=USAGE_APPROVE, permission="agent"),
            Command("reject", "refuse the tool call the agent asked about", reject, usage=USAGE_REJECT,
                    permission="agent")]
