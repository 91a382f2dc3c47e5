"""Approvals: tool calls matching agent.ask wait for a person (real opencode server, scripted model)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from adapters.console import ConsoleChat
from bot.approvals import NOTHING_PENDING, TYPED_HINT
from bot.db.repositories import Runs
from bot.engine import Engine, set_current
from bot.queue import InProcessQueue
from bot.types import RunState
from plugins.agents.opencode import check_health
from tests.adapters.test_slack import CHANNEL, mention, replies, socket_adapter
from tests.fakes.openai_server import Turn
from tests.fakes.slack_server import DEFAULT_USER_ID, FakeSlackServer
from tests.support.engines import EngineBuilder, make_settings, write_manifest
from tests.workers.agent_support import agent_settings, ask, requires_opencode, wait_until
from tests.workers.test_opencode_server import runs_of, the_server, warm_engine

pytestmark = requires_opencode

def asking_engine(make_engine: EngineBuilder, tmp_path: Path, model, timeout_s: int = 300):
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    engine.manifest.agent.ask = [{"bash": "touch *"}]
    engine.manifest.agent.approval_timeout_seconds = timeout_s
    engine.manifest.permissions.agent = ["U1"]  # bo (U2) may ask in chat, not start or steer the agent
    return engine, view


def request_message(view) -> str:
    return next((m for m in view.order if view.texts(m)[0].startswith("🔐")), "")


def test_a_typed_approve_lets_the_command_run_and_bad_answers_are_told(tmp_path: Path, model,
                                                                       make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("touch approved.txt"), Turn.text("Touched it."))
    engine, view = asking_engine(make_engine, tmp_path, model)
    ask(engine, "/agent touch approved.txt")
    request = wait_until(lambda: request_message(view), 60, "the approval request")
    first = view.texts(request)[0]
    assert "touch approved.txt" in first and TYPED_HINT in first and "within 5:00" in first
    workspace = tmp_path / "data" / "workspaces" / "1"
    assert not (workspace / "approved.txt").exists()  # it waits

    ask(engine, "/approve", user="U2", name="bo")
    assert "not allowed to use `approve`" in view.last(view.order[-1])
    ask(engine, "/approve maybe")
    assert view.last(view.order[-1]).startswith("Usage: `/approve")
    ask(engine, "/approve")
    assert engine.queue.wait(timeout=120)
    assert (workspace / "approved.txt").exists()
    assert view.last(request) == "✅ Approved once by ana: run `touch approved.txt`"
    assert runs_of(engine)[0].state == RunState.DONE
    assert "Touched it." in [view.last(m) for m in view.order]

    ask(engine, "/approve")  # nothing waits any more
    assert view.last(view.order[-1]) == NOTHING_PENDING


def test_an_unanswered_request_is_rejected_after_the_timeout(tmp_path: Path, model,
                                                             make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("touch late.txt"), Turn.text("never asked: opencode ends the turn on a rejection"))
    engine, view = asking_engine(make_engine, tmp_path, model, timeout_s=3)
    started = time.monotonic()
    ask(engine, "/agent touch late.txt")
    assert engine.queue.wait(timeout=120)
    request = request_message(view)
    assert view.last(request) == "⛔ Rejected: nobody answered within 0:03: run `touch late.txt`"
    assert not (tmp_path / "data" / "workspaces" / "1" / "late.txt").exists()
    run = runs_of(engine)[0]
    assert run.state == RunState.DONE, run.error
    assert "The agent stopped: run `touch late.txt` was rejected." in [view.last(m) for m in view.order]
    assert time.monotonic() - started < 60


BOB = "U0BOB"


def test_slack_buttons_approve_one_request_and_reject_another(tmp_path: Path, model) -> None:
    model.script(Turn.bash("touch one.txt"), Turn.bash("touch two.txt"), Turn.text("One touched, two refused."))
    config = tmp_path / "opencode.json"
    model.write_opencode_config(config)
    manifest = write_manifest(tmp_path, {
        "agent": {"mode": "warm", "ask": [{"bash": "touch *"}]},
        "permissions": {"agent": [f"slack:{DEFAULT_USER_ID}"], "ask": ["*"], "cancel": [], "admin": []},
    })
    settings = make_settings(tmp_path, OPENCODE_CONFIG=str(config), BOT_MANIFEST=str(manifest),
                             PATH=os.environ.get("PATH", ""))
    engine = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
    set_current(engine)
    engine.agents["opencode"].warm_up()
    wait_until(lambda: the_server().healthy(), 90, "the warm server to be ready")
    workspace = tmp_path / "data" / "workspaces" / "1"
    try:
        with FakeSlackServer() as slack, socket_adapter(engine, slack):
            slack.add_user(BOB, "bob")
            _, ts = mention(slack, "/agent touch two files")

            def request(n: int):
                return [m for m in replies(slack, ts) if m.blocks and m.blocks[0].get("block_id") == "choice_text"][n]

            try:
                slack.wait_for(lambda: _has(slack, ts, 1), timeout=60)
            except TimeoutError:
                raise AssertionError([(m.text, m.blocks) for m in slack.messages_in_thread(CHANNEL, ts)]) from None
            first = request(0)
            buttons = first.blocks[1]["elements"]
            assert [b["text"]["text"] for b in buttons] == ["Approve once", "Always", "Reject"]
            assert "touch one.txt" in first.blocks[0]["text"]["text"]
            # bob may not start the agent here, so his press is refused in the thread and changes nothing.
            slack.send_block_action(buttons[0]["action_id"], buttons[0]["value"], user=BOB, channel=CHANNEL,
                                    message_ts=first.ts)
            slack.wait_for(lambda: any("not allowed to use `approve`" in m.text for m in replies(slack, ts)))
            assert not (workspace / "one.txt").exists()
            slack.send_block_action(buttons[0]["action_id"], buttons[0]["value"], channel=CHANNEL,
                                    message_ts=first.ts)
            slack.wait_for(lambda: "Approved once by" in slack.message(CHANNEL, first.ts).text, timeout=30)
            assert not slack.message(CHANNEL, first.ts).blocks  # the buttons are gone

            # The first request's buttons are gone, so the one with buttons now is the second.
            slack.wait_for(lambda: _has(slack, ts, 1), timeout=60)
            second = request(0)
            assert second.ts != first.ts and "touch two.txt" in second.blocks[0]["text"]["text"]
            reject = second.blocks[1]["elements"][2]
            slack.send_block_action(reject["action_id"], reject["value"], channel=CHANNEL, message_ts=second.ts)
            slack.wait_for(lambda: "Rejected by" in slack.message(CHANNEL, second.ts).text, timeout=30)
            assert engine.queue.wait(timeout=120)

            # A button pressed after its run ended is told so.
            slack.send_block_action(reject["action_id"], reject["value"], channel=CHANNEL, message_ts=second.ts)
            slack.wait_for(lambda: any("approval request is closed: run 1 has ended" in m.text
                                       for m in replies(slack, ts)))
            assert (workspace / "one.txt").exists() and not (workspace / "two.txt").exists()
            with engine.db.reading() as session:
                assert Runs(session).get(1).state == RunState.DONE
            assert any("The agent stopped: run `touch two.txt` was rejected." in m.text for m in replies(slack, ts))
    finally:
        set_current(None)
        engine.close()


def _has(slack: FakeSlackServer, ts: str, count: int) -> bool:
    found = [m for m in slack.messages_in_thread(CHANNEL, ts)
             if m.bot_id and m.blocks and m.blocks[0].get("block_id") == "choice_text"]
    return len(found) >= count


def test_in_cold_mode_matching_calls_are_refused_and_doctor_warns(tmp_path: Path, model,
                                                                  make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("touch cold.txt"), Turn.text("It was refused."))
    engine, view = make_engine(agent_settings(tmp_path, model))
    engine.manifest.agent.mode = "cold"
    engine.manifest.agent.ask = [{"bash": "touch *"}]
    (warning,) = [check for check in check_health(engine.manifest, engine.settings, True) if check.name == "approvals"]
    assert warning.ok is None and "refused" in warning.detail and "agent.mode: warm" in warning.fix
    ask(engine, "/agent touch cold.txt")
    assert engine.queue.wait(timeout=120)
    assert not (tmp_path / "data" / "workspaces" / "1" / "cold.txt").exists()
    assert not request_message(view)  # nobody is asked in cold mode
    assert "✗ ran `touch cold.txt`" in view.last(view.order[0])


def test_the_console_is_told_to_type_approve_and_its_approve_is_taken(tmp_path: Path, model,
                                                                      make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("touch console.txt"), Turn.text("Touched from the console."))
    engine, _ = warm_engine(make_engine, agent_settings(tmp_path, model))
    engine.manifest.agent.ask = [{"bash": "touch *"}]
    out = io.StringIO()
    chat = ConsoleChat(engine, "approvals", interactive=False, concurrent=True, out=out)
    chat.send("/agent touch console.txt")
    wait_until(lambda: "🔐" in out.getvalue(), 60, "the approval request in the console")
    assert TYPED_HINT in out.getvalue()
    chat.send("/approve")
    assert chat.drain(timeout=120)
    printed = out.getvalue()
    assert f"✅ Approved once by {chat.user}: run `touch console.txt`" in printed
    assert "Touched from the console." in printed
    assert (tmp_path / "data" / "workspaces" / "1" / "console.txt").exists()


def test_an_edit_request_shows_its_diff_and_a_typed_reject_keeps_the_file_out(tmp_path: Path, model,
                                                                               make_engine: EngineBuilder) -> None:
    workspace = tmp_path / "data" / "workspaces" / "1"
    model.script(Turn.write("drop.sql", "DROP TABLE users;\n"), Turn.text("never asked"))
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    engine.manifest.agent.ask = [{"edit": "*.sql"}]
    ask(engine, "/agent write drop.sql")
    request = wait_until(lambda: request_message(view), 60, "the approval request")
    first = view.texts(request)[0]
    assert "asks to edit `drop.sql`" in first and "```diff" in first and "+DROP TABLE users;" in first
    ask(engine, "/reject")
    assert engine.queue.wait(timeout=120)
    assert view.last(request) == "⛔ Rejected by ana: edit `drop.sql`"
    assert not (workspace / "drop.sql").exists()
    assert "The agent stopped: edit `drop.sql` was rejected." in [view.last(m) for m in view.order]


def test_a_follow_up_gets_rules_set_after_its_session_began(tmp_path: Path, model,
                                                            make_engine: EngineBuilder) -> None:
    model.script(Turn.text("First, with no rules."), Turn.bash("touch later.txt"), Turn.text("Touched later."))
    engine, view = warm_engine(make_engine, agent_settings(tmp_path, model))
    ask(engine, "/agent say hello")
    assert engine.queue.wait(timeout=120)
    engine.manifest.agent.ask = [{"bash": "touch *"}]  # set between the two runs of one session
    ask(engine, "/agent touch later.txt")
    request = wait_until(lambda: request_message(view), 60, "the approval request")
    ask(engine, "/approve")
    assert engine.queue.wait(timeout=120)
    first, second = sorted(runs_of(engine), key=lambda run: run.id)
    assert second.session_id == first.session_id and second.state == RunState.DONE
    assert view.last(request) == "✅ Approved once by ana: run `touch later.txt`"
    assert (tmp_path / "data" / "workspaces" / "1" / "later.txt").exists()
