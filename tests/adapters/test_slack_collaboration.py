"""Several people in one Slack thread: who may start, continue and cancel the agent's work."""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

import pytest

from bot.engine import NOT_ALLOWED_AGENT, Engine, set_current
from bot.queue import InProcessQueue
from tests.adapters.test_slack import CHANNEL, mention, replies, socket_adapter
from tests.fakes.openai_server import FakeOpenAIServer, Turn
from tests.fakes.slack_server import DEFAULT_USER_ID, FakeSlackServer
from tests.support.engines import make_settings, write_manifest
from tests.workers.agent_support import processes_with, requires_opencode, wait_until

pytestmark = requires_opencode

ALICE, BOB, CAROL, BOSS = DEFAULT_USER_ID, "U0BOB", "U0CAROL", "U0BOSS"


@pytest.fixture
def slack_server():
    with FakeSlackServer() as server:
        server.add_user(BOB, "bob")
        server.add_user(CAROL, "carol")
        server.add_user(BOSS, "boss")
        yield server


def test_three_people_share_a_thread_each_within_their_permissions(tmp_path: Path, slack_server: FakeSlackServer) -> None:
    model = FakeOpenAIServer([
        Turn.write("notes.md", "from alice\n"), Turn.text("Wrote notes.md."),
        Turn.bash("echo from bob >> notes.md"), Turn.text("Appended bob's line."),
        # Each cancelled run is killed while its command runs: it asks the model nothing more.
        Turn.bash("sleep 301", timeout_ms=600_000),
        Turn.bash("sleep 302", timeout_ms=600_000),
    ]).start()
    config = tmp_path / "opencode.json"
    model.write_opencode_config(config)
    manifest = write_manifest(tmp_path, {
        "people": {"alice": [f"slack:{ALICE}"]},
        "permissions": {"agent": ["alice", f"slack:{BOB}"], "ask": ["*"], "cancel": [], "admin": [BOSS]},
    })
    settings = make_settings(tmp_path, OPENCODE_CONFIG=str(config), BOT_MANIFEST=str(manifest),
                             PATH=os.environ.get("PATH", ""))
    engine = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
    set_current(engine)
    seen = 0

    def say(user: str, text: str, count: int = 1) -> list[str]:
        """Post in the thread as `user`; return the texts of the bot's next `count` replies."""
        nonlocal seen
        slack_server.send_event({"type": "message", "channel": CHANNEL, "channel_type": "channel", "text": text,
                                 "thread_ts": ts, "user": user})
        seen += count
        return [m.text for m in replies(slack_server, ts, count=seen)[-count:]]

    def runs() -> list[tuple[str, str]]:
        import sqlite3

        db = sqlite3.connect(tmp_path / "data" / "threadwork.db")
        return db.execute("select requested_by, state from agent_runs order by id").fetchall()

    try:
        with socket_adapter(engine, slack_server):
            _, ts = mention(slack_server, "/agent write notes.md")  # alice
            seen = 1
            replies(slack_server, ts)
            assert engine.queue.wait(timeout=120)
            seen = len(replies(slack_server, ts))
            workspace = tmp_path / "data" / "workspaces" / "1"
            assert (workspace / "notes.md").read_text() == "from alice\n"

            say(BOB, "/agent append a line from bob to notes.md")  # bob continues alice's work
            assert engine.queue.wait(timeout=120)
            seen = len(replies(slack_server, ts))
            assert (workspace / "notes.md").read_text() == "from alice\nfrom bob\n"
            continued = model.scripted_requests[2]["messages"]
            assert "write notes.md" in str(continued)  # the same opencode session: alice's request is in it

            (refused,) = say(CAROL, "/agent delete notes.md")  # carol may only ask
            assert html.unescape(refused) == NOT_ALLOWED_AGENT and len(runs()) == 2

            say(ALICE, "/agent wait a while")  # run 3, alice's
            wait_until(lambda: processes_with("sleep 301", starting=True), 60, "run 3's sleep to start")
            (not_bobs,) = say(BOB, "/cancel")
            assert not_bobs.startswith("Run 3 is ") and "only they, or someone with the cancel permission" in not_bobs
            assert processes_with("sleep 301")
            (stopping,) = say(ALICE, "/cancel")
            assert stopping == "Stopping run 3…"
            deadline = time.monotonic() + 10
            while processes_with("sleep 301") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not processes_with("sleep 301")

            say(ALICE, "/agent wait again")  # run 4: the admin may cancel anyone's
            wait_until(lambda: processes_with("sleep 302", starting=True), 60, "run 4's sleep to start")
            (by_admin,) = say(BOSS, "/cancel")
            assert by_admin == "Stopping run 4…"
            assert engine.queue.wait(timeout=60)
    finally:
        set_current(None)
        engine.close()
        model.stop()
    assert [state for _, state in runs()] == ["done", "done", "cancelled", "cancelled"]
    assert [who for who, _ in runs()] == ["alice", "bob", "alice", "alice"]
