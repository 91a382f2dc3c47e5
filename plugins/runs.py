"""`/cancel`: stop the thread's agent run (or a named one), within seconds, saying who did.

The command only picks the run and words the answer; `bot.runs.cancel` changes its state.
"""

from __future__ import annotations

from bot import runs as run_lifecycle
from bot.db.repositories import Runs
from bot.errors import CommandError, PermissionDenied
from bot.hookspecs import hookimpl
from bot.types import AgentRun, Command, CommandContext, RunState


def cancel(context: CommandContext) -> str:
    """Cancel a queued run at once; ask the worker of a running one to stop it."""
    engine, who = context.engine, context.message.user_name or context.message.user_id
    if not engine.manifest.allows("cancel", context.message.user_id):
        raise PermissionDenied("You are not allowed to cancel agent runs here.")
    with engine.db.reading() as session:
        run = _target(Runs(session), context)
    stopped = run_lifecycle.cancel(engine, run, who)
    if stopped == RunState.QUEUED:
        return f"Cancelled run {run.id} before it started."
    if stopped == RunState.RUNNING:
        return f"Stopping run {run.id}…"
    with engine.db.reading() as session:
        state = Runs(session).get(run.id).state
    return f"Run {run.id} has already ended ({state.value})."


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
    return [Command("cancel", "stop this thread's agent run (or run N)", cancel, usage="/cancel [run]")]
