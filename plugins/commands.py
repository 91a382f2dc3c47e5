"""The built-in chat commands about the conversation: help, history, threads, runs (files: plugins.resources)."""

from __future__ import annotations

from bot import constants
from bot.db.repositories import Conversations, Runs
from bot.errors import CommandError
from bot.hookspecs import hookimpl
from bot.types import Command, CommandContext, Conversation


def help_text(context: CommandContext) -> str:
    """List every command and the two route overrides."""
    lines = [f"**{context.engine.manifest.name}** - talk to me in this thread. Commands:"]
    for command in sorted(context.engine.commands.values(), key=lambda c: c.name):
        if command.pattern is not None and not command.usage:
            continue  # chat-line patterns (greetings, thanks) are not commands to type
        usage = command.usage or f"/{command.name}"
        lines.append(f"- `{usage}` - {command.help}")
    lines.append("")
    lines.append("Anything else: I decide whether to answer or to start the agent.")
    return "\n".join(lines)


def agent_usage(context: CommandContext) -> str:
    """Say how to use `/agent`, which came without a task (with a task it is a route, not this)."""
    return "Usage: `/agent <task>`, e.g. `/agent add a --verbose flag to cli.py and test it`."


def ask_usage(context: CommandContext) -> str:
    """Say how to use `/ask`, which came without a question."""
    return "Usage: `/ask <question>`, e.g. `/ask what does the retry logic in worker.py do?`."


def history(context: CommandContext) -> str:
    """Show the thread's last messages."""
    limit = _count(context.argument, constants.HISTORY_DEFAULT_ROWS)
    # Commands run before their own message is stored: this is the history before `/history`.
    entries = context.engine.history(context.conversation.id, limit)
    if not entries:
        return "This thread has no history yet."
    lines = [f"Last {len(entries)} message(s) in this thread:"]
    for entry in entries:
        when = entry.created_at.strftime("%Y-%m-%d %H:%M")
        first_line = entry.text.strip().splitlines()[0] if entry.text.strip() else ""
        lines.append(f"- {when} **{entry.author}**: {first_line[:200]}")
    return "\n".join(lines)


def threads(context: CommandContext) -> str:
    """List the channel's conversations, most recent first, each fork indented under its parent."""
    where = context.conversation.where
    with context.engine.db.reading() as session:
        rows = Conversations(session).in_channel(where.platform, where.channel)
    listed = {conversation.id for conversation, _ in rows}
    children: dict[int, list[tuple[Conversation, int]]] = {}
    for row in rows:
        children.setdefault(row[0].forked_from_id or 0, []).append(row)
    lines = ["Threads in this channel:"]

    def show(conversation: Conversation, count: int, depth: int) -> None:
        marker = " (this one)" if conversation.id == context.conversation.id else ""
        number = f"fork {_fork_number(context, conversation)}: " if conversation.forked_from_id else ""
        lines.append(f"{'  ' * depth}- {number}`{conversation.where.thread}` {conversation.title[:60]!r} - "
                     f"{count} message(s){marker}")
        for child, child_count in sorted(children.get(conversation.id, []), key=lambda row: row[0].id):
            show(child, child_count, depth + 1)

    for conversation, count in rows:
        if not conversation.forked_from_id or conversation.forked_from_id not in listed:
            show(conversation, count, 0)
    return "\n".join(lines)


def _fork_number(context: CommandContext, fork: Conversation) -> int:
    """Return the fork's number among its parent's forks (as `/forks`, `/merge N` count them)."""
    with context.engine.db.reading() as session:
        forks = Conversations(session).forks_of(fork.forked_from_id or 0)
    return next(number for number, child in enumerate(forks, start=1) if child.id == fork.id)


def runs(context: CommandContext) -> str:
    """List the thread's latest agent runs."""
    with context.engine.db.reading() as session:
        latest = Runs(session).in_conversation(context.conversation.id)
    if not latest:
        return "No agent runs in this thread yet. Start one with `/agent <task>`."
    lines = ["Agent runs in this thread:"]
    for run in latest:
        lines.append(f"- run {run.id} ({run.agent}) **{run.state.value}** - {run.prompt[:80]}")
    return "\n".join(lines)


def _count(argument: str, default: int) -> int:
    if not argument.strip():
        return default
    try:
        value = int(argument.strip())
    except ValueError:
        raise CommandError(f"`{argument.strip()}` is not a number of messages.") from None
    if not 1 <= value <= 200:
        raise CommandError("Ask for between 1 and 200 messages.")
    return value


@hookimpl
def register_commands() -> list[Command]:
    return [
        Command("help", "list the commands", help_text),
        Command("history", "show this thread's last messages", history, usage="/history [count]"),
        Command("threads", "list this channel's threads", threads),
        Command("runs", "list this thread's agent runs", runs),
        Command("agent", "send the coding agent to work on a task in this thread's workspace", agent_usage,
                usage="/agent <task>"),
        Command("ask", "answer in chat, never starting the agent", ask_usage, usage="/ask <question>"),
    ]
