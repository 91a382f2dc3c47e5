"""Restart soak: bot processes and workers killed and restarted at random points of a stream of requests.

The deployment of the README (two `python -m bot run`, two `python -m bot worker`, one
PostgreSQL, one Redis, the local Slack) takes a stream of requests: agent runs of the toy
agent and greetings answered in dispatch. At random points (a fixed seed, printed) a random
process is SIGKILLed and started again a moment later; at one point both bot processes are down
together, and what people write meanwhile stays in Slack unannounced, as it would (catch-up).
Slack re-sends an event nobody acknowledged, as Slack does. Afterwards every request has
exactly one outcome: its answer, or a run whose status says it failed.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.adapters.test_slack import CHANNEL
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.faults.test_slow_backends import postgres_database  # noqa: F401 (a fixture)
from tests.support.engines import REPO, bot_env
from tests.support.processes import kill, start_bot, stop
from tests.workers.agent_support import wait_until

SEED = int(os.environ.get("SOAK_SEED", "20261127"))
REQUESTS = 24
KILLS = 5
AGENT_REQUEST, GREETING = "/agent list the files slowly", "hello"


class Deployment:
    """The README's processes, each startable and killable by name."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.commands = {"bot-1": ["run"], "bot-2": ["run"],
                         "worker-1": ["worker", "--name", "worker-1"], "worker-2": ["worker", "--name", "worker-2"]}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        self.running[name] = start_bot(self.commands[name], self.env, cwd=self.cwd)

    def kill(self, name: str) -> None:
        kill(self.running.pop(name))  # the process and its work-horses and agents

    def stop_all(self) -> None:
        for name in list(self.running):
            stop(self.running.pop(name))


@pytest.fixture
def deployment(tmp_path: Path, postgres_database: str, redis_url: str) -> Iterator[tuple[Deployment, FakeSlackServer]]:  # noqa: F811
    manifest = yaml.safe_load((REPO / "manifest.yml").read_text())
    manifest["plugins"] = {"modules": ["tests.workers.toy_agent_plugin"]}
    manifest["agent"].update(name="toy", stale_after_seconds=5, retry_lost_runs=True, mode="cold")
    (tmp_path / "manifest.yml").write_text(yaml.safe_dump(manifest))
    with FakeSlackServer() as slack:
        env = bot_env(tmp_path, DATABASE_URL=postgres_database, REDIS_URL=redis_url,
                      BOT_MANIFEST=str(tmp_path / "manifest.yml"), SLACK_BOT_TOKEN=slack.bot_token,
                      SLACK_APP_TOKEN=slack.app_token, SLACK_API_URL=slack.api_url.rstrip("/"))
        subprocess.run([sys.executable, "-m", "bot", "migrate"], cwd=tmp_path, env=env, check=True,
                       capture_output=True, timeout=120)
        processes = Deployment(env, tmp_path)
        try:
            yield processes, slack
        finally:
            processes.stop_all()


def test_killing_and_restarting_every_process_loses_and_repeats_nothing(
        deployment: tuple[Deployment, FakeSlackServer]) -> None:
    processes, slack = deployment
    rng = random.Random(SEED)
    for name in processes.commands:
        processes.start(name)
    slack.wait_for_connection(2, timeout=60)
    kill_at = set(rng.sample(range(2, REQUESTS - 2), KILLS))
    both_bots_down_at = rng.choice(sorted(set(range(4, REQUESTS - 4)) - kill_at))
    requests: list[tuple[str, str]] = []  # (thread ts, what was asked)
    envelopes: list[str] = []
    print(f"soak seed {SEED}: kills at {sorted(kill_at)}, both bots down at {both_bots_down_at}")

    for n in range(REQUESTS):
        asked = AGENT_REQUEST if rng.random() < 0.6 else GREETING
        text = f"<@{BOT_USER_ID}> {asked}"
        if n == both_bots_down_at:
            processes.kill("bot-1")
            processes.kill("bot-2")
            slack.wait_for(lambda: slack.connection_count == 0, timeout=10)
            for _ in range(3):  # people write while no bot listens: Slack keeps the messages
                requests.append((slack.add_thread_message(CHANNEL, text).ts, asked))
                asked = AGENT_REQUEST if rng.random() < 0.6 else GREETING
                text = f"<@{BOT_USER_ID}> {asked}"
            processes.start("bot-1")
            processes.start("bot-2")
            slack.wait_for_connection(2, timeout=60)
        envelope = slack.send_event({"type": "app_mention", "channel": CHANNEL, "text": text}, timeout=30)
        envelopes.append(envelope)
        requests.append((slack.envelope(envelope).event["ts"], asked))
        if n in kill_at:
            victim = rng.choice(sorted(processes.running))
            processes.kill(victim)
            time.sleep(rng.uniform(0.5, 2.0))
            processes.start(victim)
            if victim.startswith("bot"):
                slack.wait_for_connection(2, timeout=60)
        time.sleep(rng.uniform(0.1, 0.5))

    # Slack re-sends what nobody acknowledged (an event sent to a connection that was dying).
    time.sleep(3)
    for envelope in envelopes:
        if slack.ack_for(envelope) is None:
            slack.resend(envelope, retry_reason="timeout", timeout=30)

    def outcomes(thread: str, asked: str) -> list[str]:
        posted = [m for m in slack.messages_in_thread(CHANNEL, thread) if m.bot_id and m.ts != thread]
        answers = [m.text for m in posted if not m.blocks and ("Listed the files" in m.text or "Hi alice" in m.text)]
        failed = [m.text for m in posted if m.blocks and "failed" in m.versions[-1].text.split("\n")[0]]
        return answers + failed

    try:
        wait_until(lambda: all(outcomes(thread, asked) for thread, asked in requests), 240,
                   f"every request to have its outcome (seed {SEED})")
    except AssertionError:
        for thread, asked in requests:
            if not outcomes(thread, asked):
                print("no outcome:", requests.index((thread, asked)), asked, explain(processes, slack, thread))
        raise
    time.sleep(2)  # a second outcome would have landed by now
    counts = {thread: len(outcomes(thread, asked)) for thread, asked in requests}
    assert sorted(set(counts.values())) == [1], {t: c for t, c in counts.items() if c != 1}


def explain(processes: Deployment, slack: FakeSlackServer, thread: str) -> str:
    """Say what became of a request with no outcome: stored, its runs and replies, its envelope."""
    lines = []
    with create_engine(processes.env["DATABASE_URL"]).connect() as db:
        for message_id, in db.execute(text("select id from messages where external_id = :t"), {"t": thread}):
            runs = db.execute(text("select id, state, attempt, worker from agent_runs where request_message_id = :m"),
                              {"m": message_id}).all()
            replies = db.execute(text("select external_id, substr(text, 1, 40) from messages where reply_to_id = :m"),
                                 {"m": message_id}).all()
            lines.append(f"stored as {message_id}; runs {runs}; replies {replies}")
    envelope = next((e for e in slack.envelopes if e.payload.get("event", {}).get("ts") == thread), None)
    if envelope is not None:
        lines.append(f"envelope acked: {slack.ack_for(envelope.envelope_id) is not None}")
    return "; ".join(lines) or "never stored"
