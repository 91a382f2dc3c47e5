"""Fault suite, item 5: agent output of 200,000 characters and a 5,000-character answer arrive intact.

- A streamed 5,000-character answer from the model (the real anthropic SDK against the local
  Messages API) reaches a Slack thread whole: one message, edited as it grows, its last
  version the full text. (On Discord, 2,000 characters a message, it is split outside code
  blocks: tests/adapters/test_discord.py, test_a_5000_character_answer_arrives_whole_and_split_outside_code_blocks.)
- The real opencode prints 200,000 characters from a command and answers with 200,000: the
  status stays within Slack's limits, the answer's head is in the thread and the whole answer
  is attached, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from bot.queue import InProcessQueue
from bot.types import RunState
from tests.adapters.test_slack import CHANNEL, socket_adapter
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.openai_server import Turn
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.support.engines import EngineBuilder, rows
from tests.workers.agent_support import agent_settings, requires_opencode


def numbered(count: int) -> str:
    """Return `count` characters of numbered lines: any loss, repeat or reorder shows."""
    lines, size = [], 0
    while size < count:
        line = f"line {len(lines):06d} of the long output\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)[:count]


def test_a_5000_character_answer_arrives_whole_in_slack(make_engine: EngineBuilder,
                                                        anthropic_server: FakeAnthropicServer) -> None:
    answer = numbered(5_000).rstrip("\n")
    anthropic_server.script.text(answer, chunk_size=400)
    engine, _ = make_engine(queue=InProcessQueue(), **anthropic_server.env())
    with FakeSlackServer() as slack, socket_adapter(engine, slack):
        envelope = slack.send_event({"type": "app_mention", "channel": CHANNEL,
                                     "text": f"<@{BOT_USER_ID}> /ask print the long report"})
        thread = slack.envelope(envelope).event["ts"]
        slack.wait_for(lambda: any(answer == m.text for m in slack.messages_in_thread(CHANNEL, thread)), timeout=30)
        assert engine.queue.wait(timeout=30)
        posted = [m for m in slack.messages_in_thread(CHANNEL, thread) if m.bot_id]
    assert len(posted) == 1 and posted[0].versions[-1].text == answer
    assert rows(engine, "select text from messages where role = 'assistant'") == [(answer,)]


@requires_opencode
def test_200000_characters_of_agent_output_arrive_attached_byte_for_byte(
        tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    answer = numbered(200_000).rstrip()  # an answer ends with its last word
    model.script(Turn.bash("seq 100000 130000"), Turn.text(answer))  # 210,007 characters printed
    engine, _ = make_engine(agent_settings(tmp_path, model, SLACK_BOT_TOKEN="xoxb-unused"))
    with FakeSlackServer() as slack, socket_adapter(engine, slack):
        envelope = slack.send_event({"type": "app_mention", "channel": CHANNEL,
                                     "text": f"<@{BOT_USER_ID}> /agent print a lot"})
        thread = slack.envelope(envelope).event["ts"]
        assert engine.queue.wait(timeout=180)
        slack.wait_for(lambda: [f for f in slack.files if f.filename == "run-1-answer.md"], timeout=30)
        posted = [m for m in slack.messages_in_thread(CHANNEL, thread) if m.bot_id]
        (attached,) = [f for f in slack.files if f.filename == "run-1-answer.md"]
    assert rows(engine, "select state from agent_runs") == [(RunState.DONE.value,)]
    assert attached.data.decode() == answer and attached.thread_ts == thread
    head = next(m.text for m in posted if "The full answer is attached" in m.text)
    assert head.startswith(answer[:1000].rsplit("\n", 1)[0][:900])
    assert all(len(version.text) <= 40_000 for m in posted for version in m.versions)
