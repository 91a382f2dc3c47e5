"""Scale-out: the README's deployment commands, run on one machine, share the work and lose nothing.

The commands are read from the README's "Many processes, many machines" block and run as
written, with one environment: a fresh PostgreSQL database, a real Redis, a shared
`BOT_DATA_DIR`, and the local Slack (Socket Mode and Web API) the bot processes connect to.
Eight people ask the agent (the toy CLI agent, working slowly) at once in one channel: the
local Slack spreads the events over both bot processes' connections, as Slack does; both
workers take runs; every request gets one status and one answer, and every run ends done.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from redis import Redis
from rq import Worker
from rq.job import Job
from sqlalchemy import create_engine, text

from tests.adapters.test_slack import CHANNEL
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.faults.test_slow_backends import postgres_database  # noqa: F401 (a fixture)
from tests.support.engines import REPO, bot_env
from tests.support.processes import start_bot, stop
from tests.workers.agent_support import wait_until

REQUESTS = 8
README_BLOCK = re.compile(r"### Many processes, many machines\n.*?```sh\n(.*?)```", re.S)


def deployment_commands() -> list[str]:
    """Return the README's deployment commands, one per line, as written."""
    found = README_BLOCK.search((REPO / "README.md").read_text())
    assert found, "the README's deployment section has no ```sh block of commands"
    return [line.strip() for line in found.group(1).splitlines() if line.strip()]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop(process)


def test_the_readme_deployment_runs_on_one_machine_and_shares_the_work(
        tmp_path: Path, postgres_database: str, redis_url: str,  # noqa: F811
        processes: list[subprocess.Popen[bytes]]) -> None:
    manifest = yaml.safe_load((REPO / "manifest.yml").read_text())
    manifest["plugins"] = {"modules": ["tests.workers.toy_agent_plugin"]}
    manifest["agent"]["name"] = "toy"
    (tmp_path / "manifest.yml").write_text(yaml.safe_dump(manifest))
    with FakeSlackServer() as slack:
        env = bot_env(tmp_path, DATABASE_URL=postgres_database, REDIS_URL=redis_url,
                      BOT_MANIFEST=str(tmp_path / "manifest.yml"), SLACK_BOT_TOKEN=slack.bot_token,
                      SLACK_APP_TOKEN=slack.app_token, SLACK_API_URL=slack.api_url.rstrip("/"))
        for command in deployment_commands():
            argv = shlex.split(command.removesuffix("&"))
            assert argv[:3] == ["python", "-m", "bot"], command
            argv[0] = sys.executable
            if command.endswith("&"):
                processes.append(start_bot(argv[3:], env, cwd=tmp_path))
            else:
                done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, done.stderr
        assert len(processes) == 4
        slack.wait_for_connection(2, timeout=60)  # both bot processes are connected
        wait_until(lambda: worker_count(redis_url) == 2, 60, "both workers to listen")

        threads = [slack.envelope(slack.send_event(
            {"type": "app_mention", "channel": CHANNEL, "text": f"<@{BOT_USER_ID}> /agent list the files slowly"}
        )).event["ts"] for _ in range(REQUESTS)]

        def answers() -> list[list[str]]:
            return [[m.text for m in slack.messages_in_thread(CHANNEL, ts) if m.bot_id and not m.blocks]
                    for ts in threads]

        wait_until(lambda: all(answers()), 180, "every request to be answered")

        def statuses() -> list[list]:
            return [[m for m in slack.messages_in_thread(CHANNEL, ts) if m.blocks] for ts in threads]

        # A run's final status edit waits for the workspace's chat.update budget (50 a minute,
        # shared by every run), so it can land after the answer's post.
        wait_until(lambda: all(status and "done" in status[0].versions[-1].text for status in statuses()), 120,
                   "every status message to show its run done")
        assert all(process.poll() is None for process in processes)  # nothing crashed meanwhile

        assert all(len(status) == 1 for status in statuses())
    assert [len(each) for each in answers()] == [1] * REQUESTS, answers()
    with create_engine(postgres_database).connect() as connection:
        runs = connection.execute(text("select state, job_id from agent_runs")).all()
    assert sorted(state for state, _ in runs) == ["done"] * REQUESTS
    assert {worker_of(redis_url, job_id) for _, job_id in runs} == {"worker-1", "worker-2"}  # both took runs


def worker_count(redis_url: str) -> int:
    with Redis.from_url(redis_url) as redis:
        return Worker.count(connection=redis)


def worker_of(redis_url: str, job_id: str) -> str:
    """Return the name of the RQ worker that executed the job."""
    with Redis.from_url(redis_url) as redis:
        return Job.fetch(job_id, connection=redis).worker_name or ""


def test_discord_shards_split_between_two_bot_processes_answer_once(
        tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    from tests.fakes.discord_server import FakeDiscordServer

    with FakeDiscordServer() as server:
        env = bot_env(tmp_path, DISCORD_TOKEN=server.token, **server.env, DISCORD_SHARD_COUNT="2")
        subprocess.run([sys.executable, "-m", "bot", "migrate"], cwd=tmp_path, env=env, check=True,
                       capture_output=True, timeout=120)
        for shard in ("0", "1"):
            processes.append(start_bot(["run"], {**env, "DISCORD_SHARD_IDS": shard}, cwd=tmp_path))
        server.wait_for(lambda: sorted(p.get("shard", [None])[0] for p in server.identify_payloads) == [0, 1],
                        timeout=60)
        request = server.send_message_create(server.channel_id, f"<@{server.bot_id}> help")
        server.wait_for(lambda: [m for m in server.messages_in(request.id) if m.author["id"] == server.bot_id],
                        timeout=30)
        time.sleep(1)  # a second answer, from the other process, would have been posted by now
        assert all(process.poll() is None for process in processes)
        answers = [m for m in server.messages_in(request.id) if m.author["id"] == server.bot_id]
    assert len(answers) == 1 and "/agent" in answers[0].content
    assert sorted(tuple(p["shard"]) for p in server.identify_payloads) == [(0, 2), (1, 2)]
