"""Fork and merge as chat commands: `/fork`, `/forks`, `/diff`, `/merge`.

    /fork [what to try] ─► clone the workspace at HEAD ─► a new thread in the channel
        ─► a conversation with `forked_from_id` ─► the agent's session copied (forked on its first run)
        ─► `/agent <what to try>` dispatched into the fork, as the asker
    /diff [fork]  ─► fetch the fork's HEAD into this workspace ─► summary + the diff attached
    /merge [fork] ─► the same, then `git merge --no-ff`; a conflict is aborted and named by file

A fork is named by its number (1 is this thread's first fork, as `/forks` lists them) or by
its thread id; with no name, the most recent fork. Everything here is local git on one
machine's disk (a clone hardlinks, a merge touches two small repositories), so it runs inside
dispatch.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from bot.db.repositories import Conversations, Messages, Runs
from bot.errors import CommandError, PermissionDenied
from bot.hookspecs import hookimpl
from bot.types import AgentRun, Command, CommandContext, Conversation, EngineAPI, Message, ThreadRef
from workers import capture
from workers import workspace as workspaces

#: Messages of the parent thread quoted in a fork's first message, so people see where it starts.
QUOTED_MESSAGES = 4
#: Characters of one quoted message (its first line).
QUOTE_CHARS = 160
#: Files a diff summary names one by one before it says how many more there are.
FILES_LISTED = 15
#: Characters of the "what to try" shown in a fork's headline (Discord caps thread names at 100).
HEADLINE_CHARS = 90


def fork(context: CommandContext) -> str:
    """Fork this thread into a new one: workspace, agent session and a link both ways; start the agent if asked."""
    engine, parent = context.engine, context.conversation
    what = context.argument.strip()
    source = workspace_of(engine, parent.id)
    with engine.db.reading() as session:
        earlier = Runs(session).in_conversation(parent.id)
        active = Runs(session).active(parent.id)
        quoted = Messages(session).recent(parent.id, QUOTED_MESSAGES, without_run_status=True)
    if not (source / ".git").is_dir():
        if earlier:
            raise CommandError("This thread's workspace is gone from the bot's disk, so there is nothing to fork.")
        raise CommandError("This thread has no workspace yet (no agent run has worked here), so there is nothing to "
                           "fork: start with `/agent <task>`.")
    # Cloned before the thread exists: a failed clone leaves no thread and no conversation behind.
    staging = source.parent / f".fork-of-{parent.id}-{secrets.token_hex(4)}"
    try:
        workspaces.clone_for_fork(source, staging)
        commit, subject = workspaces.head_of(staging)
        asker = context.message.user_name or context.message.user_id
        headline = f"🍴 Fork of {thread_link(parent.where)} by {asker}" + (f": {what[:HEADLINE_CHARS]}" if what else "")
        where = engine.open_thread(parent.where, headline)
        with engine.db.session() as session:
            child = Conversations(session).create_fork(parent.id, where, what or f"fork of {parent.title}")
            number = len(Conversations(session).forks_of(parent.id))
        staging.rename(workspace_of(engine, child.id))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    continued = _copy_session(engine, parent, child, earlier)
    start = f"commit `{commit}` (“{subject}”)"
    still = (f" Run {active[0].id} was still {active[0].state.value} there: this fork starts from the last finished "
             "state, without that run's work." if active else "")
    lines = [f"Forked from {thread_link(parent.where)} by {asker}, at {start}.{still}",
             "The agent continues a copy of that thread's session: it knows what was done there." if continued
             else "The agent starts a fresh session here.",
             *([("Where that thread was:")] + [f"> {_quote(entry.author, entry.text)}" for entry in quoted]
               if quoted else []),
             f"`/diff {number}` and `/merge {number}` in that thread compare and bring this fork's changes back."]
    engine.say(child, "\n".join(lines))
    if what:
        engine.receive(Message(where=child.where, text=f"/agent {what}", user_id=context.message.user_id,
                               user_name=context.message.user_name))
    started = f" The agent is starting on: {what}." if what else " Talk to the agent there with `/agent <task>`."
    return (f"🍴 Forked into {thread_link(child.where)} (fork {number}), from {start}.{still}{started}\n"
            f"`/diff {number}` compares it with this thread; `/merge {number}` brings its changes back.")


def forks(context: CommandContext) -> str:
    """List this thread's forks by number (and the thread it was forked from, if any)."""
    engine, here = context.engine, context.conversation
    with engine.db.reading() as session:
        children = Conversations(session).forks_of(here.id)
        parent = Conversations(session).get_or_none(here.forked_from_id) if here.forked_from_id else None
        running = {child.id: bool(Runs(session).active(child.id)) for child in children}
    lines = []
    if here.forked_from_id:
        lines.append(f"This thread is a fork of {thread_link(parent.where)}." if parent
                     else "This thread was forked from a thread that is gone.")
    if not children:
        lines.append("This thread has no forks: `/fork [what to try]` makes one.")
        return "\n".join(lines)
    lines.append("Forks of this thread (`/diff N`, `/merge N`; no number: the most recent):")
    for number, child in enumerate(children, start=1):
        busy = " (a run is going on)" if running[child.id] else ""
        lines.append(f"{number}. {thread_link(child.where)} `{child.where.thread}` {child.title[:60]!r}{busy}")
    return "\n".join(lines)


def diff(context: CommandContext) -> str:
    """Show what a fork changed that this thread has not (files, lines) and attach the diff; merge nothing."""
    engine, parent = context.engine, context.conversation
    number, child = resolve_fork(engine, parent, context.argument)
    source, target = _workspaces(engine, parent, child, number)
    comparison = workspaces.compare_fork(target, source, child.id)
    if not comparison.files:
        return f"Fork {number} ({thread_link(child.where)}) has no changes this thread does not already have."
    name = f"fork-{number}-of-{parent.id}.diff"
    capture.publish(engine, None, parent, name, comparison.diff.encode("utf-8"), kind="diff",
                    comment=f"What fork {number} would bring (`/merge {number}`)")
    return (f"Fork {number} ({thread_link(child.where)}) differs by {summary(comparison)}\n"
            f"Nothing is merged; the diff is attached as `{name}`. `/merge {number}` brings it in.")


def merge(context: CommandContext) -> str:
    """Merge a fork's workspace into this thread's with a merge commit; report it, or the conflicts."""
    engine, parent = context.engine, context.conversation
    if not engine.manifest.allows("agent", context.message.user_id, context.conversation.where):
        raise PermissionDenied("Merging a fork needs the agent permission in this channel (`permissions.agent`).")
    number, child = resolve_fork(engine, parent, context.argument)
    _refuse_while_running(engine, parent, child, number)
    source, target = _workspaces(engine, parent, child, number)
    dirty = workspaces.uncommitted(target)
    if dirty:
        raise CommandError(f"Not merged: this thread's workspace has uncommitted changes ({_names(dirty)}); "
                           "nothing was changed.")
    asker = context.message.user_name or context.message.user_id
    outcome = workspaces.merge_fork(target, source, child.id,
                                    f"Merge fork {number} ({child.where.thread}): {child.title[:60]}")
    link = thread_link(child.where)
    if outcome.conflicts:
        return (f"Not merged: fork {number} ({link}) and this thread both changed {_names(outcome.conflicts)} in "
                "ways git cannot combine. The merge was aborted: both workspaces are exactly as they were. Settle "
                "it in one thread (e.g. ask the agent in the fork to take this thread's version) and `/merge` again.")
    if not outcome.comparison.files:
        return f"Fork {number} ({link}) has nothing this thread does not already have: nothing to merge."
    name = f"merge-fork-{number}-of-{parent.id}.diff"
    capture.publish(engine, None, parent, name, outcome.comparison.diff.encode("utf-8"), kind="diff",
                    comment=f"What merging fork {number} brought")
    engine.say(child, f"Merged into {thread_link(parent.where)} by {asker} (merge commit `{outcome.commit}`).")
    return (f"Merged fork {number} ({link}) into this thread's workspace (merge commit `{outcome.commit}`): "
            f"{summary(outcome.comparison)}\nThe diff is attached as `{name}`.")


def resolve_fork(engine: EngineAPI, parent: Conversation, argument: str) -> tuple[int, Conversation]:
    """Return the fork `argument` names (a number, a thread id, or nothing: the most recent) and its number."""
    with engine.db.reading() as session:
        children = Conversations(session).forks_of(parent.id)
        grandparent = Conversations(session).get_or_none(parent.forked_from_id) if parent.forked_from_id else None
    if not children:
        if grandparent is not None:
            raise CommandError(f"This thread has no forks; it is itself a fork of {thread_link(grandparent.where)}: "
                               "`/merge` there brings its changes back.")
        raise CommandError("This thread has no forks: `/fork [what to try]` makes one.")
    name = argument.strip().lstrip("#")
    if not name:
        return len(children), children[-1]
    if name.isdigit() and 1 <= int(name) <= len(children):
        return int(name), children[int(name) - 1]
    for number, child in enumerate(children, start=1):
        if child.where.thread == name:
            return number, child
    raise CommandError(f"This thread has no fork `{name}`: `/forks` lists them, by number and thread id.")


def summary(comparison: workspaces.ForkComparison) -> str:
    """Return a diff's summary: files, lines added and removed, then one line per file."""
    files = comparison.files
    lines = [f"{len(files)} file(s), +{comparison.added} −{comparison.removed}:"]
    for stat in files[:FILES_LISTED]:
        counts = "binary" if stat.added is None else f"+{stat.added} −{stat.removed}"
        lines.append(f"- `{stat.path}` {counts}")
    if len(files) > FILES_LISTED:
        lines.append(f"- … and {len(files) - FILES_LISTED} more (in the diff)")
    return "\n".join(lines)


def thread_link(where: ThreadRef) -> str:
    """Return a link to a thread people can follow on its platform (the console: its name)."""
    if where.platform == "slack" and where.thread:
        return f"https://slack.com/archives/{where.channel}/p{where.thread.replace('.', '')}"
    if where.platform == "discord":
        return f"<#{where.thread}>"
    return f"thread `{where.thread}`"


def workspace_of(engine: EngineAPI, conversation_id: int) -> Path:
    """Return where a conversation's workspace lives (as `workers.agent_run` makes it)."""
    return engine.settings.data_dir / "workspaces" / str(conversation_id)


def _copy_session(engine: EngineAPI, parent: Conversation, child: Conversation, earlier: list[AgentRun]) -> bool:
    """Copy the parent's latest agent session into the fork's agent state; return whether the fork continues it."""
    latest = next((run for run in earlier if run.session_id), None)
    copier = getattr(engine.agents.get(latest.agent), "copy_session", None) if latest else None
    if latest is None or not callable(copier):
        return False
    state = engine.settings.data_dir / "agent-state"
    if not copier(latest.session_id, state / str(parent.id), state / str(child.id), workspace_of(engine, child.id)):
        return False
    with engine.db.session() as session:
        Conversations(session).set_agent_session(child.id, latest.session_id)
    return True


def _refuse_while_running(engine: EngineAPI, parent: Conversation, child: Conversation, number: int) -> None:
    with engine.db.reading() as session:
        here, there = Runs(session).active(parent.id), Runs(session).active(child.id)
    if here:
        raise CommandError(f"Not merging while run {here[0].id} in this thread is {here[0].state.value}: "
                           "`/merge` again when it has ended.")
    if there:
        raise CommandError(f"Not merging while run {there[0].id} in fork {number} is {there[0].state.value}: "
                           "`/merge` again when it has ended.")


def _workspaces(engine: EngineAPI, parent: Conversation, child: Conversation, number: int) -> tuple[Path, Path]:
    """Return the fork's and this thread's workspaces, saying so if either is gone."""
    source, target = workspace_of(engine, child.id), workspace_of(engine, parent.id)
    if not (target / ".git").is_dir():
        raise CommandError("This thread's workspace is gone from the bot's disk, so nothing can be merged into it.")
    if not (source / ".git").is_dir():
        raise CommandError(f"Fork {number}'s workspace is gone from the bot's disk, so there is nothing to compare.")
    return source, target


def _quote(author: str, text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{author}: {first[:QUOTE_CHARS]}"


def _names(paths: list[str]) -> str:
    shown = ", ".join(f"`{path}`" for path in paths[:FILES_LISTED])
    return shown + (f" and {len(paths) - FILES_LISTED} more" if len(paths) > FILES_LISTED else "")


@hookimpl
def register_commands() -> list[Command]:
    return [
        Command("fork", "fork this thread: a new thread with a copy of its workspace and agent session", fork,
                usage="/fork [what to try]"),
        Command("forks", "list this thread's forks by number", forks),
        Command("diff", "show what a fork changed, without merging (the diff attached)", diff, usage="/diff [fork]"),
        Command("merge", "merge a fork's changes into this thread's workspace", merge, usage="/merge [fork]"),
    ]
