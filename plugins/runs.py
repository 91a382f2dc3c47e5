"""`/cancel`: stop the thread's agent run (or a named one), within seconds, saying who did."""

from __future__ import annotations

from bot.db.repositories import Conversations, Runs
from bot.errors import CommandError, PermissionDenied
from bot.hookspecs import hookimpl
from bot.progress import render_status
from bot.types import Command, CommandContext, Reply, RunState, RunStatus


def cancel(context: CommandContext) -> str:
    """Cancel a queued run at once; ask the worker of a running one to stop it."""
    engine, who = context.engine, context.message.user_name or context.message.user_id
    if not engine.manifest.allows("cancel", context.message.user_id):
        raise PermissionDenied("You are not allowed to cancel agent runs here.")
    with engine.db.session() as session:
        runs = Runs(session)
        run = _target(runs, context)
        if run.state == RunState.QUEUED and runs.transition(run.id, RunState.CANCELLED, allowed_from=(RunState.QUEUED,),
                                                            cancelled_by=who):
            conversation = Conversations(session).get(run.conversation_id)
            stopped_now = True
        elif run.state == RunState.RUNNING:
            runs.set(run.id, cancelled_by=who)
            stopped_now = False
        else:
            return f"Run {run.id} has already ended ({run.state.value})."
    if stopped_now:
        if run.status_message_id:
            status = RunStatus(run.id, RunState.CANCELLED, run.agent, requested_by=run.requested_by,
                               note=f"Cancelled by {who} before it started.")
            engine.edit(conversation, run.status_message_id, Reply(render_status(status), status=status), final=True)
        return f"Cancelled run {run.id} before it started."
    engine.cancels.send(run.id)
    return f"Stopping run {run.id}…"


def _target(runs: Runs, context: CommandContext):
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
