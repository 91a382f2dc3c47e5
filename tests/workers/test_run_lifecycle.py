"""The run lifecycle in the core (`bot.runs`): folding events, finishing, cancelling a queued run."""

from __future__ import annotations

from bot import constants, runs
from bot.db.repositories import Conversations, Runs
from bot.queue import resolve
from bot.types import EventKind, Reply, RunEvent, RunState, RunStatus
from tests.support.engines import WHERE
from tests.support.ports import RecordingPort


def test_the_run_job_the_core_names_is_the_workers_run_agent() -> None:
    from workers.agent_run import run_agent

    assert resolve(runs.RUN_JOB) is run_agent


def test_events_fold_into_the_status_a_person_sees() -> None:
    status = RunStatus(1, RunState.RUNNING, "toy")
    for n in range(constants.STATUS_CHECKLIST_ITEMS + 2):
        runs.fold_event(status, RunEvent(EventKind.TOOL, name="bash", text=f"ran `step {n}`", status="completed"))
    runs.fold_event(status, RunEvent(EventKind.TOOL, name="bash", text="ran `false`", status="error"))
    runs.fold_event(status, RunEvent(EventKind.TEXT, text="Working on it."))
    runs.fold_event(status, RunEvent(EventKind.TEXT, text="   "))  # blank words keep the last ones
    runs.fold_event(status, RunEvent(EventKind.TOKENS, tokens_in=100, tokens_out=7, cost=0.25))
    runs.fold_event(status, RunEvent(EventKind.TOKENS, tokens_in=50, tokens_out=3, cost=0.25))
    assert len(status.checklist) == constants.STATUS_CHECKLIST_ITEMS and status.hidden_items == 3
    assert status.checklist[-1] == ("ran `false`", False)
    assert status.latest_text == "Working on it."
    assert (status.tokens_in, status.tokens_out, status.cost) == (150, 10, 0.5)
    runs.fold_event(status, RunEvent(EventKind.ERROR, text="rate limited"))
    assert status.note == "Error: rate limited"


def _queued_run(engine, port: RecordingPort, prompt: str = "do it") -> int:
    """Return the id of a new queued run in the test thread, its status message posted."""
    with engine.db.session() as session:
        conversation = Conversations(session).ensure(WHERE)
        run, _ = Runs(session).create(conversation.id, "toy", prompt, requested_by="ana")
    message_id = port.post(WHERE, Reply("queued"))
    with engine.db.session() as session:
        Runs(session).set(run.id, status_message_id=message_id)
    return run.id


def test_cancelling_a_queued_run_ends_it_once_and_says_who(engine, port: RecordingPort) -> None:
    run_id = _queued_run(engine, port)
    with engine.db.reading() as session:
        run = Runs(session).get(run_id)
    assert runs.cancel(engine, run, "bo") == RunState.QUEUED
    final = port.last(port.order[0])
    assert final.startswith(f"⏹️ **Agent run {run_id}** · cancelled") and "Cancelled by bo before it started." in final
    assert runs.cancel(engine, run, "cy") is None  # it has ended: nothing changes
    with engine.db.reading() as session:
        assert Runs(session).get(run_id).cancelled_by == "bo"
    assert not runs.claim(engine, run_id)


def test_finishing_a_run_shows_its_stored_steps_and_happens_once(engine, port: RecordingPort) -> None:
    run_id = _queued_run(engine, port)
    assert runs.claim(engine, run_id)
    with engine.db.session() as session:
        Runs(session).add_event(run_id, 1, RunEvent(EventKind.TOOL, name="write", text="wrote `a.py`",
                                                    status="completed"))
    assert runs.finish_run(engine, run_id, RunState.FAILED, error="worker stopped")
    final = port.last(port.order[0])
    assert final.startswith(f"❌ **Agent run {run_id}** · failed") and "✓ wrote `a.py`" in final
    assert "Failed: worker stopped" in final
    assert not runs.finish_run(engine, run_id, RunState.DONE)  # a final state is final
    assert len(port.texts(port.order[0])) == 2


def test_the_next_queued_run_of_a_thread_is_claimed_only_in_its_turn(engine, port: RecordingPort) -> None:
    first, second = _queued_run(engine, port, "one"), _queued_run(engine, port, "two")
    assert not runs.claim(engine, second)  # the older one goes first
    assert runs.claim(engine, first)
    assert not runs.claim(engine, second)  # one at a time per thread
    assert runs.status_of(engine, second).queue_position == 1


def test_a_run_waits_for_its_status_message_before_it_starts(engine, port: RecordingPort) -> None:
    first = _queued_run(engine, port, "one")
    assert runs.claim(engine, first)
    # The next request, stored by `runs.start_run` but its status message not posted yet, when the
    # first run ends: `start_run` enqueues it once the message is shown, not the end of the first.
    with engine.db.session() as session:
        second, _ = Runs(session).create(Conversations(session).ensure(WHERE).id, "toy", "two", requested_by="ana")
    assert runs.finish_run(engine, first, RunState.DONE)
    runs.kick_next(engine, second.conversation_id)
    assert engine.queue.wait(timeout=30)
    assert runs.status_of(engine, second.id).state == RunState.QUEUED
    assert len(port.order) == 1  # the first run's status; nothing posted for the second yet


def test_a_step_in_progress_shows_until_its_outcome_replaces_it() -> None:
    from bot.progress import render_status
    from bot.runs import RUNNING_STEP, fold_event
    from bot.types import EventKind, RunEvent, RunState, RunStatus

    status = RunStatus(run_id=5, state=RunState.RUNNING, agent="opencode")
    fold_event(status, RunEvent(EventKind.TOOL, name="write", text="wrote `a.py`", status="completed"))
    fold_event(status, RunEvent(EventKind.STEP, name=RUNNING_STEP, text="ran `pytest -q`", status="running"))
    assert "… ran `pytest -q`" in render_status(status).splitlines()
    fold_event(status, RunEvent(EventKind.TOOL, name="bash", text="ran `pytest -q`", status="error"))
    assert status.checklist == [("wrote `a.py`", True), ("ran `pytest -q`", False)]
