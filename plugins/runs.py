"""`/cancel` (or `/stop`): stop the thread's agent run (or a named one), within seconds, saying who did.

The command only picks the run and words the answer; `bot.runs.cancel` changes its state.
For a running run it posts "Stopping run N…" itself and hands the notice's id to the run's
job, which edits it to the outcome once the agent has stopped.
"""

from __future__ import annotations

from bot import runs as run_lifecycle
from bot.budgets import day_start
from bot.config import BudgetSection
from bot.db.repositories import Runs
from bot.errors import CommandError, PermissionDenied
from bot.hookspecs import hookimpl
from bot.types import ANSWERED_ITSELF, AgentRun, Command, CommandContext, Reply, RunState, Spend

#: The notice a running run's `/cancel` posts; the run's job edits it to the outcome.
STOPPING = "Stopping run {run}…"


def cancel(context: CommandContext) -> str | Reply:
    """Cancel a queued run at once; ask the worker of a running one to stop it."""
    engine, who = context.engine, context.message.user_name or context.message.user_id
    speaker = context.message.user_id
    with engine.db.reading() as session:
        run = _target(Runs(session), context)
        own = Runs(session).requester_id(run.id) == speaker
    if not own and not engine.manifest.allows("cancel", speaker, context.message.where):
        raise PermissionDenied(f"Run {run.id} is {run.requested_by or 'someone else'}'s: only they, or someone "
                               "with the cancel permission, may cancel it.")
    if run.state == RunState.QUEUED:
        stopped = run_lifecycle.cancel(engine, run, who)
        if stopped == RunState.QUEUED:
            return f"Cancelled run {run.id} before it started."
        notice_id = ""
    else:
        notice_id = engine.say(context.conversation, STOPPING.format(run=run.id))
        stopped = run_lifecycle.cancel(engine, run, who, notice_id=notice_id)
        if stopped == RunState.RUNNING:
            return ANSWERED_ITSELF
    with engine.db.reading() as session:
        state = Runs(session).get(run.id).state
    ended = f"Run {run.id} has already ended ({state.value})."
    if notice_id:
        engine.edit(context.conversation, notice_id, ended, final=True)
        return ANSWERED_ITSELF
    return ended


def queue_usage(context: CommandContext) -> str:
    """Say how to use `/queue`, which came without a task (with one it is a route, not this)."""
    return ("Usage: `/queue <task>`: the agent takes the task as a new run after the thread's current one. "
            "A plain message while a run is going on steers that run instead.")


def usage(context: CommandContext) -> str:
    """Show today's agent spend: the asker's and this channel's (admins: everyone's, every channel's)."""
    engine, message = context.engine, context.message
    where, since = message.where, day_start()
    admin = engine.manifest.allows("admin", message.user_id, where)
    with engine.db.reading() as session:
        runs = Runs(session)
        if admin:
            people = runs.spend(since, by="person")
            channels = runs.spend(since, by="channel")
        else:
            people = runs.spend(since, platform=where.platform, user_id=message.user_id, by="person")
            channels = runs.spend(since, platform=where.platform, channel=where.channel, by="channel")
    budgets = engine.manifest.budgets
    lines = ["Agent spend today (UTC)" + (", everyone's:" if admin else ", yours and this channel's:")]
    lines += [_spend_line("person", spend, budgets.person) for spend in people] or ["- you: no runs yet"]
    lines += [_spend_line("channel", spend, budgets.channel) for spend in channels] or ["- this channel: no runs yet"]
    return "\n".join(lines)


def _spend_line(kind: str, spend: Spend, budget: BudgetSection) -> str:
    limits = [f"{spend.runs}/{budget.runs_per_day} runs" if budget.runs_per_day is not None else f"{spend.runs} runs",
              f"{spend.tokens:,}" + (f"/{budget.tokens_per_day:,}" if budget.tokens_per_day is not None else "")
              + " tokens",
              f"${spend.cost:.2f}" + (f"/${budget.cost_per_day:.2f}" if budget.cost_per_day is not None else "")]
    return f"- {kind} `{spend.who}`: " + ", ".join(limits)


def _target(runs: Runs, context: CommandContext) -> AgentRun:
    argument = context.argument.strip().lstrip("#")
    if argument:
        if not argument.isdigit():
            raise CommandError(f"`{argument}` is not a run number; see `/runs`.")
        run = runs.get_or_none(int(argument))
        if run is None or run.conversation_id != context.conversation.id:
            raise CommandError(f"There is no run {argument} in this thread; see `/runs`.")
        return run
    active = runs.active(context.conversation.id)
    if not active:
        raise CommandError("No agent run is queued or running in this thread.")
    running = [run for run in active if run.state == RunState.RUNNING]
    return running[0] if running else active[0]


@hookimpl
def register_commands() -> list[Command]:
    return [Command("cancel", "stop this thread's agent run (or run N)", cancel, usage="/cancel [run]"),
            Command("stop", "stop this thread's agent run (or run N), like /cancel", cancel, usage="/stop [run]"),
            Command("queue", "give the agent a task as a new run after the current one (a plain message "
                    "steers the running run)", queue_usage, usage="/queue <task>"),
            Command("usage", "today's agent spend: yours and this channel's (admins: all)", usage, usage="/usage")]
