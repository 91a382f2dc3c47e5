"""What the bot shows in Slack: mrkdwn, the run status as Block Kit, edits through 429s, files.

The real `slack_sdk.WebClient` talks to `tests.fakes.slack_server` on 127.0.0.1; the tests
assert what the fake recorded, which is what a person would see in the thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.slack_format import CANCEL_ACTION_ID, fit, from_slack, to_mrkdwn
from adapters.slack_port import SlackPort, web_api_port
from bot.constants import SLACK_EDIT_SAFE_LIMIT
from bot.engine import Engine
from bot.errors import RateLimited
from bot.progress import LiveMessage, render_status
from bot.queue import InProcessQueue
from bot.types import Attachment, Reply, RunState, RunStatus, ThreadRef
from tests.fakes.slack_fixtures import bolt_web_client
from tests.fakes.slack_server import FakeSlackServer
from tests.support.engines import make_settings

CHANNEL = "C0DEV"


@pytest.fixture
def slack_server() -> Iterator[FakeSlackServer]:
    """A local Slack on 127.0.0.1 (Web API and Socket Mode), stopped after the test."""
    with FakeSlackServer() as server:
        yield server


@pytest.fixture
def port(slack_server: FakeSlackServer) -> SlackPort:
    return SlackPort(bolt_web_client(slack_server))


@pytest.fixture
def thread(slack_server: FakeSlackServer) -> ThreadRef:
    """A thread someone started in the channel."""
    parent = bolt_web_client(slack_server).chat_postMessage(channel=CHANNEL, text="please fix the build")["ts"]
    return ThreadRef("slack", CHANNEL, parent)


def block_ids(blocks: list[dict[str, Any]] | None) -> list[str]:
    return [b["block_id"] for b in blocks or []]


def block(blocks: list[dict[str, Any]] | None, block_id: str) -> dict[str, Any]:
    found = [b for b in blocks or [] if b.get("block_id") == block_id]
    assert found, f"no {block_id} block in {block_ids(blocks)}"
    return found[0]


def text_of(blocks: list[dict[str, Any]] | None, block_id: str) -> str:
    return block(blocks, block_id)["text"]["text"]


# -- markdown in, mrkdwn out --------------------------------------------------------------------------


def test_markdown_becomes_mrkdwn_and_code_is_left_alone() -> None:
    markdown = (
        "## Result\n"
        "The **build** is *fixed*, see [the log](https://ci.example/run?id=1&x=2) or <@U0BOB>.\n"
        "- one\n* two\n"
        "> quoted\n"
        "Inline `a **b** <c>` and ~~old~~.\n"
        "```python\nif a < b and c:\n    print('**x**')\n```"
    )
    assert to_mrkdwn(markdown) == (
        "*Result*\n"
        "The *build* is _fixed_, see <https://ci.example/run?id=1&amp;x=2|the log> or <@U0BOB>.\n"
        "• one\n• two\n"
        "> quoted\n"
        "Inline `a **b** &lt;c&gt;` and ~old~.\n"
        "```\nif a &lt; b and c:\n    print('**x**')\n```"
    )


def test_slack_markup_comes_in_as_plain_text() -> None:
    text = "<@U0FAKEBOT> fix <https://x.example|x.example> per <https://doc.example/a|the doc> &lt;now&gt; in <#C1|dev>"
    assert from_slack(text, "U0FAKEBOT") == "fix https://x.example per the doc (https://doc.example/a) <now> in <#C1|dev>"


def test_long_texts_are_cut_with_their_code_fence_closed() -> None:
    cut = fit("intro\n```\n" + "x = 1\n" * 1000 + "```", 300)
    assert len(cut) <= 300 and cut.endswith("\n```…")
    assert cut.count("```") == 2


# -- posts and edits --------------------------------------------------------------------------------


def test_a_reply_is_posted_in_the_thread_as_mrkdwn_and_edits_replace_it(
        port: SlackPort, thread: ThreadRef, slack_server: FakeSlackServer) -> None:
    ts = port.post(thread, Reply("Working on **it**…", partial=True))
    port.edit(thread, ts, Reply("Done: see [PR](https://git.example/pr/1)."))

    message = slack_server.message(CHANNEL, ts)
    assert message is not None and message.thread_ts == thread.thread
    assert message.history == ["Working on *it*…", "Done: see <https://git.example/pr/1|PR>."]


def test_a_rate_limited_post_raises_with_slacks_retry_after(port: SlackPort, thread: ThreadRef,
                                                            slack_server: FakeSlackServer) -> None:
    slack_server.rate_limit("chat.postMessage", times=1, retry_after=7)
    started = time.monotonic()
    with pytest.raises(RateLimited) as limited:
        port.post(thread, Reply("hello"))
    assert limited.value.retry_after == 7
    assert time.monotonic() - started < 1  # raised at once: the caller decides how to wait


def test_an_edit_too_long_for_slack_shows_the_part_that_fits(port: SlackPort, thread: ThreadRef,
                                                             slack_server: FakeSlackServer) -> None:
    slack_server.update_text_limit = 5_000  # Slack refuses long edits well before 40k
    ts = port.post(thread, Reply("short"))
    port.edit(thread, ts, Reply("word " * 4_000))
    text = slack_server.message(CHANNEL, ts).text  # type: ignore[union-attr]
    assert len(text) <= SLACK_EDIT_SAFE_LIMIT and text.startswith("word word") and text.endswith("…")


# -- the status message -------------------------------------------------------------------------------


def status(state: RunState, **fields: Any) -> Reply:
    run = RunStatus(run_id=12, state=state, agent="opencode", requested_by="alice", **fields)
    return Reply(render_status(run), status=run, partial=not state.is_final)


def test_the_status_message_is_laid_out_as_blocks_through_its_states(
        port: SlackPort, thread: ThreadRef, slack_server: FakeSlackServer) -> None:
    ts = port.post(thread, status(RunState.QUEUED, queue_position=2))
    port.edit(thread, ts, status(RunState.RUNNING, elapsed_s=42, checklist=[("write hello.txt", True),
                                                                            ("bash npm test", False),
                                                                            ("bash npm test again", None)],
                                 latest_text="Tests fail on <node 18>.", tokens_in=1234, tokens_out=56, cost=0.0123))
    port.edit(thread, ts, status(RunState.DONE, elapsed_s=65, checklist=[("write hello.txt", True)],
                                 tokens_in=2000, tokens_out=80, cost=0.02, note="1 file(s) attached."))

    message = slack_server.message(CHANNEL, ts)
    assert message is not None and message.thread_ts == thread.thread
    queued, running, done = message.versions
    head = text_of(queued.blocks, "status_head")
    assert "*Agent run 12*" in head and "queued · #2 in line" in head
    assert "*Asked by*\nalice" in [f["text"] for f in block(queued.blocks, "status_head")["fields"]]
    (button,) = block(queued.blocks, "status_actions")["elements"]
    assert (button["action_id"], button["value"], button["style"]) == (CANCEL_ACTION_ID, "12", "danger")

    fields = [f["text"] for f in block(running.blocks, "status_head")["fields"]]
    assert "*Elapsed*\n0:42" in fields and "*Steps*\n1 of 3 done" in fields
    assert text_of(running.blocks, "status_steps").splitlines() == [
        ":white_check_mark: write hello.txt", ":x: bash npm test", ":hourglass_flowing_sand: bash npm test again"]
    assert text_of(running.blocks, "status_latest") == "> Tests fail on &lt;node 18&gt;."
    assert block(running.blocks, "status_usage")["elements"][0]["text"] == "Tokens 1,234 in / 56 out · $0.0123"
    assert "status_actions" in block_ids(running.blocks)

    assert "done" in text_of(done.blocks, "status_head")
    assert text_of(done.blocks, "status_note") == "1 file(s) attached."
    assert "status_actions" not in block_ids(done.blocks)  # nothing left to cancel
    assert done.text.startswith("✅ *Agent run 12* · done")  # the fallback text, for notifications
    assert len(done.text) <= 1_500


def test_a_file_is_uploaded_into_the_thread(port: SlackPort, thread: ThreadRef,
                                            slack_server: FakeSlackServer) -> None:
    data = b"line\n" * 10_000
    file_id = port.upload(thread, Attachment("run-12.log", data, title="Run 12 log", comment="The **full** log"))

    uploaded = slack_server.file(file_id)
    assert uploaded is not None
    assert (uploaded.data, uploaded.filename, uploaded.title, uploaded.channel, uploaded.thread_ts) == (
        data, "run-12.log", "Run 12 log", CHANNEL, thread.thread)
    share = slack_server.messages_in_thread(CHANNEL, thread.thread)[-1]
    assert (share.files, share.text) == ([file_id], "The *full* log")
    assert "files.upload" not in [call.method for call in slack_server.calls]  # the retired method


def test_a_429_storm_on_edits_delays_only_its_own_message_and_loses_nothing(
        port: SlackPort, thread: ThreadRef, slack_server: FakeSlackServer) -> None:
    other = ThreadRef("slack", "C0OTHER", bolt_web_client(slack_server).chat_postMessage(
        channel="C0OTHER", text="another request")["ts"])

    def live(where: ThreadRef) -> LiveMessage:
        return LiveMessage(post=lambda reply: port.post(where, reply),
                           edit=lambda ts, reply: port.edit(where, ts, reply), interval=0.05)

    stormy, calm = live(thread), live(other)
    stormy_ts = stormy.start(status(RunState.RUNNING, checklist=[("step 0", True)]))
    calm_ts = calm.start(status(RunState.RUNNING))
    time.sleep(0.06)
    slack_server.rate_limit("chat.update", times=3, retry_after=1)
    for step in range(1, 6):  # edits arrive faster than the storm lets them through
        stormy.update(status(RunState.RUNNING, checklist=[(f"step {n}", True) for n in range(step + 1)]))
        time.sleep(0.02)
    slack_server.wait_for(lambda: len(slack_server.ratelimited) == 3, timeout=5)

    # The stormy message is waiting out its Retry-After; the other one is edited at once.
    started = time.monotonic()
    calm.update(status(RunState.RUNNING, checklist=[("calm step", True)]))
    calm.finish(status(RunState.DONE, note="calm done"))
    assert time.monotonic() - started < 0.9  # well inside the stormy message's 1 s Retry-After
    assert slack_server.message("C0OTHER", calm_ts).edits  # type: ignore[union-attr]

    message = slack_server.message(CHANNEL, stormy_ts)
    assert message is not None and message.edits == []

    def steps_shown(version: Any) -> int:
        return text_of(version.blocks, "status_steps").count("step")

    # When the storm passes, the newest progress lands by itself (the ones between are coalesced).
    slack_server.wait_for(lambda: message.edits and steps_shown(message.versions[-1]) == 6, timeout=5)
    stormy.finish(status(RunState.DONE, checklist=[(f"step {n}", True) for n in range(6)], note="all done"))
    assert [steps_shown(version) for version in message.versions] == [1, 6, 6]
    final = message.versions[-1]
    assert text_of(final.blocks, "status_note") == "all done"
    assert "status_actions" not in block_ids(final.blocks)
    assert len(slack_server.ratelimited) == 3
    assert all(call.method == "chat.update" and call.params["ts"] == stormy_ts for call in slack_server.ratelimited)


# -- workers: the Web API alone ---------------------------------------------------------------------------


def test_a_worker_posts_edits_and_uploads_with_the_web_api_alone(
        tmp_path: Path, slack_server: FakeSlackServer, thread: ThreadRef) -> None:
    settings = make_settings(tmp_path, SLACK_BOT_TOKEN=slack_server.bot_token, SLACK_API_URL=slack_server.api_url)
    worker_engine = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
    try:
        worker_port = worker_engine.port_for("slack")  # through the chat_port hook, as a worker gets it
        assert isinstance(worker_port, SlackPort)
        ts = worker_port.post(thread, Reply("from a worker"))
        worker_port.edit(thread, ts, Reply("from a worker, edited"))
        worker_port.upload(thread, Attachment("notes.txt", b"notes"))
    finally:
        worker_engine.close()
    assert slack_server.message(CHANNEL, ts).history == ["from a worker", "from a worker, edited"]  # type: ignore[union-attr]
    assert slack_server.files[0].thread_ts == thread.thread
    assert slack_server.connection_count == 0  # no Socket Mode connection was needed


def test_without_a_bot_token_there_is_no_web_api_port(engine: Engine) -> None:
    assert web_api_port(engine) is None

