"""The status message: what it shows, and how its edits are paced."""

from __future__ import annotations

import threading
import time

from bot.errors import RateLimited
from bot.progress import LiveMessage, render_status
from bot.types import EventKind, Reply, RunState, RunStatus
from plugins.agents.opencode_events import parse_line


def test_a_queued_run_shows_its_place_and_a_running_one_its_checklist() -> None:
    queued = render_status(RunStatus(4, RunState.QUEUED, "opencode", requested_by="ana", queue_position=2))
    assert queued.splitlines()[0] == ("🕒 **Agent run 4** · queued · waiting for 2 earlier runs in this thread"
                                      " · asked by ana · opencode")
    running = render_status(RunStatus(4, RunState.RUNNING, "opencode", elapsed_s=75, checklist=[
        ("wrote `app.py`", True), ("ran `pytest`", False)], latest_text="Tests fail on import.",
        tokens_in=1200, tokens_out=80, cost=0.0123))
    assert running.splitlines() == [
        "⏳ **Agent run 4** · running · 1:15 · opencode",
        "✓ wrote `app.py`",
        "✗ ran `pytest`",
        "💬 Tests fail on import.",
        "Tokens 1,200 in / 80 out · $0.0123",
        "Cancel with `/cancel 4`",
    ]
    done = render_status(RunStatus(4, RunState.CANCELLED, "opencode", note="Cancelled by bo."))
    assert "Cancelled by bo." in done and "/cancel" not in done


def test_the_status_stays_short_however_long_the_run() -> None:
    status = RunStatus(1, RunState.RUNNING, "opencode", checklist=[(f"ran `step {n}` " + "x" * 70, True) for n in range(60)],
                       latest_text="y" * 5000)
    assert len(render_status(status, limit=1500)) <= 1500


class Recorder:
    def __init__(self, fail_times: int = 0, retry_after: float = 0.2) -> None:
        self.posts: list[str] = []
        self.edits: list[tuple[float, str]] = []
        self.fail_times = fail_times
        self.retry_after = retry_after

    def post(self, reply: Reply) -> str:
        self.posts.append(reply.text)
        return "m1"

    def edit(self, message_id: str, reply: Reply) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise RateLimited(self.retry_after)
        self.edits.append((time.monotonic(), reply.text))


def test_edits_are_coalesced_to_one_per_interval_and_the_final_state_lands() -> None:
    thread = Recorder()
    live = LiveMessage(thread.post, thread.edit, interval=0.3)
    live.start(Reply("queued"))
    started = time.monotonic()
    for n in range(50):
        live.update(Reply(f"step {n}"))
        time.sleep(0.01)
    updating = time.monotonic() - started
    live.finish(Reply("done"))
    texts = [text for _, text in thread.edits]
    assert texts[-1] == "done"
    # 50 updates, but at most one edit per 0.3 s while they came, plus the final one.
    assert len(texts) <= int(updating / 0.3) + 2 < 50
    gaps = [b - a for (a, _), (b, _) in zip(thread.edits, thread.edits[1:], strict=False)]
    assert all(gap >= 0.29 for gap in gaps)


def test_progress_before_the_message_is_posted_posts_it_and_the_rest_edit_it() -> None:
    thread = Recorder()
    live = LiveMessage(thread.post, thread.edit, interval=0.05)  # no message id: nothing posted yet
    live.update(Reply("running"))
    deadline = time.monotonic() + 5
    while not thread.posts and time.monotonic() < deadline:
        time.sleep(0.01)
    live.finish(Reply("done"))
    assert thread.posts == ["running"]
    assert [text for _, text in thread.edits] == ["done"]


def test_a_429_storm_delays_only_its_own_message_and_loses_no_final_state() -> None:
    stormy, calm = Recorder(fail_times=4, retry_after=0.2), Recorder()
    stormy_live = LiveMessage(stormy.post, stormy.edit, interval=0.05)
    calm_live = LiveMessage(calm.post, calm.edit, interval=0.05)
    stormy_live.start(Reply("a0"))
    calm_live.start(Reply("b0"))
    finisher = threading.Thread(target=lambda: [stormy_live.update(Reply(f"a{n}")) for n in range(5)])
    finisher.start()
    for n in range(5):
        calm_live.update(Reply(f"b{n}"))
        time.sleep(0.06)
    finisher.join()
    calm_live.finish(Reply("b-final"))
    assert [text for _, text in calm.edits][-1] == "b-final"
    calm_done = time.monotonic()
    stormy_live.finish(Reply("a-final"))
    assert [text for _, text in stormy.edits][-1] == "a-final"
    assert calm.edits[-1][0] <= calm_done < stormy.edits[-1][0]


def test_opencode_event_lines_become_typed_events() -> None:
    write = ('{"type":"tool_use","sessionID":"ses_1","part":{"type":"tool","tool":"write","state":{"status":"completed",'
             '"input":{"filePath":"/w/hello.txt","content":"hi"},"title":"hello.txt"}}}')
    bash_failed = ('{"type":"tool_use","sessionID":"ses_1","part":{"type":"tool","tool":"bash","state":{"status":"error",'
                   '"input":{"command":"pytest -q"},"error":"exit status 1"}}}')
    finish = ('{"type":"step_finish","sessionID":"ses_1","part":{"reason":"stop","tokens":{"input":123,"output":7,'
              '"reasoning":2},"cost":0.5}}')
    error = '{"type":"error","sessionID":"ses_1","error":{"name":"APIError","data":{"message":"boom"}}}'
    event, session = parse_line(write)
    assert (event.kind, event.name, event.text, event.status, session) == (
        EventKind.TOOL, "write", "wrote `hello.txt`", "completed", "ses_1")
    event, _ = parse_line(bash_failed)
    assert (event.text, event.status) == ("ran `pytest -q` (exit status 1)", "error")
    event, _ = parse_line(finish)
    assert (event.kind, event.tokens_in, event.tokens_out, event.cost) == (EventKind.TOKENS, 123, 9, 0.5)
    event, _ = parse_line(error)
    assert (event.kind, event.name, event.text) == (EventKind.ERROR, "APIError", "boom")
    assert parse_line("npm warn something") == (None, None)
