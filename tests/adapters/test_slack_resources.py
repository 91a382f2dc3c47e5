"""Resources on Slack: a run's report, after a restart, found, previewed and shared into another channel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.engine import Engine, set_current
from bot.queue import InProcessQueue
from tests.adapters.test_slack import CHANNEL, mention, replies, socket_adapter
from tests.fakes.openai_server import FakeOpenAIServer, Turn
from tests.fakes.slack_server import FakeSlackServer
from tests.support.engines import make_settings
from tests.workers.agent_support import requires_opencode

pytestmark = requires_opencode

REPORT = "# Quarterly report\n\nThe retry backoff is now exponential with jitter.\n"
OTHER = "C0RELEASE"


@pytest.fixture
def slack_server():
    with FakeSlackServer() as server:
        yield server


def test_after_a_restart_find_show_and_share_reach_a_runs_report(tmp_path: Path, slack_server: FakeSlackServer) -> None:
    model = FakeOpenAIServer([Turn.write("docs/report.md", REPORT), Turn.text("Wrote the report.")]).start()
    config = tmp_path / "opencode.json"
    model.write_opencode_config(config)
    settings = make_settings(tmp_path, OPENCODE_CONFIG=str(config), PATH=os.environ.get("PATH", ""))
    slack_server.add_channel(OTHER, "release")
    slack_server.add_channel("C0LOCKED", "locked", is_member=False)
    try:
        engine = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
        set_current(engine)
        with socket_adapter(engine, slack_server):
            _, ts = mention(slack_server, "/agent write the quarterly report")
            replies(slack_server, ts)  # the status message: the run is queued
            assert engine.queue.wait(timeout=120)
        engine.close()
    finally:
        model.stop()
    uploaded = {f.filename: f for f in slack_server.files}
    assert uploaded["report.md"].data == REPORT.encode() and uploaded["report.md"].thread_ts == ts

    restarted = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
    set_current(restarted)
    try:
        with socket_adapter(restarted, slack_server):
            seen = len(replies(slack_server, ts))

            def ask(text: str) -> str:
                nonlocal seen
                slack_server.send_event({"type": "message", "channel": CHANNEL, "channel_type": "channel",
                                         "text": text, "thread_ts": ts})
                seen += 1
                return replies(slack_server, ts, count=seen)[-1].text

            assert "docs/report.md" in ask("/find jitter")
            shown = ask("/show docs/report.md")
            assert "# Quarterly report" in shown and "```" in shown
            shared = ask(f"/share docs/report.md <#{OTHER}|release>")
            assert shared.startswith("Shared `docs/report.md`")
            into_other = [f for f in slack_server.files if f.channel == OTHER]
            assert [(f.filename, f.data, f.thread_ts) for f in into_other] == [("report.md", REPORT.encode(), None)]
            refused = ask("/share docs/report.md <#C0LOCKED|locked>")
            assert refused.startswith("I can't post in <#C0LOCKED|locked>: invite me there first")
    finally:
        restarted.close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "threadwork.db")
    (file_id, link), = db.execute("select platform_file_id, permalink from resources where path = 'docs/report.md'")
    assert file_id == uploaded["report.md"].file_id and link.endswith(f"-{file_id}/report.md")  # where it lives
    assert db.execute("select platform, channel, shared_by from resource_shares").fetchall() == [
        ("slack", OTHER, db.execute("select requested_by from resources where path = 'docs/report.md'").fetchone()[0])]
