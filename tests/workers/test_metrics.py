"""What an operator sees of a deployment on a real redis-server with a real `python -m bot worker`:
`python -m bot status`, the worker's Prometheus endpoint scraped over HTTP, and its JSON log lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.db.repositories import Runs
from bot.types import Message, RunState, ThreadRef
from tests.support.engines import REPO, EngineBuilder, run_bot
from tests.support.processes import stop
from tests.support.servers import free_port, wait_for_port
from tests.workers.agent_support import wait_until

pytestmark = pytest.mark.redis

TOY = {"plugins": {"modules": ["tests.workers.toy_agent_plugin"]}, "agent": {"name": "toy"}}
SLEEPING = ThreadRef("console", "local", "sleeping")
LISTING = ThreadRef("console", "local", "listing")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample the endpoint serves, keyed by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """Return one sample's value (0 when the endpoint has none yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def counted(port: int, name: str, **labels: str) -> dict:
    """Return a scrape once it has the sample (an empty dict until then, to wait on)."""
    samples = scrape(port)
    return samples if value(samples, name, **labels) else {}


@contextmanager
def worker(settings, tmp_path: Path, name: str, **env: str) -> Iterator[tuple[int, Path]]:
    """Run `python -m bot worker` with a metrics port and JSON logs; yield the port and its log file."""
    port = free_port()
    log_path = tmp_path / f"{name}.log"
    environ = {**os.environ, **{k: v for k, v in settings.env.items() if v}, "PYTHONPATH": str(REPO),
               "BOT_METRICS_PORT": str(port), "BOT_LOG_FORMAT": "json", "BOT_LOG_LEVEL": "INFO",
               "BOT_TRACE_PLUGINS": "1", **env}
    with log_path.open("w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "bot", "worker", "--name", name], env=environ, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=log_file, text=True, start_new_session=True)
    try:
        wait_for_port(port)
        wait_until(lambda: "worker ready" in log_path.read_text(), 60, "the worker to listen")
        yield port, log_path
    finally:
        stop(process)


def run_state(engine, run_id: int) -> RunState | None:
    with engine.db.reading() as session:
        run = Runs(session).get_or_none(run_id)
        return run.state if run else None


def test_status_metrics_and_logs_show_a_running_run_a_waiting_job_and_the_jobs_done(
        tmp_path: Path, redis_url: str, make_engine: EngineBuilder) -> None:
    engine, _view = make_engine(manifest=TOY, REDIS_URL=redis_url)
    with worker(engine.settings, tmp_path, "metrics-worker") as (port, log_path):
        before = wait_until(lambda: counted(port, "threadwork_workers"), 30, "the worker to register with RQ")
        assert value(before, "threadwork_workers") == 1
        assert value(before, "threadwork_runs", state="running") == 0
        assert value(before, "threadwork_job_seconds_count", function="run_agent", outcome="ok") == 0

        engine.dispatch(Message(where=SLEEPING, text="/agent sleep 300", user_id="U1", user_name="ana"))
        wait_until(lambda: run_state(engine, 1) == RunState.RUNNING, 90, "the first run to be running")
        # The only worker is busy with it: the next request waits in Redis.
        engine.dispatch(Message(where=LISTING, text="/agent list the files", user_id="U1", user_name="ana"))

        status = run_bot(["status"], tmp_path, REDIS_URL=redis_url, BOT_MANIFEST=str(engine.settings.manifest_path))
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert re.fullmatch(r"queue: 1 job waiting on 'threadwork' at redis://127\.0\.0\.1:\d+/\d+", lines[0]), lines
        assert lines[1] == "workers: 1"
        assert lines[2].split() == ["metrics-worker", "busy", "job", "run-1"]
        assert lines[3] == "runs: queued 0, running 1, done 0, failed 0, cancelled 0"
        with engine.db.reading() as session:
            first = Runs(session).get(1)
        assert re.fullmatch(rf"oldest running run: 1 in conversation {first.conversation_id}, started \d+s ago, "
                            rf"worker {re.escape(first.worker)}", lines[4]), lines[4]
        assert first.worker and status.stderr == ""

        during = scrape(port)
        assert value(during, "threadwork_runs", state="running") == 1
        assert value(during, "threadwork_queue_depth") == 1
        assert value(during, "threadwork_job_seconds_count", function="handle_message", outcome="ok") == 1

        engine.dispatch(Message(where=SLEEPING, text="/cancel", user_id="U1", user_name="ana"))
        wait_until(lambda: run_state(engine, 2) == RunState.DONE, 120, "the second run to be done")
        wait_until(lambda: value(scrape(port), "threadwork_job_seconds_count", function="run_agent", outcome="ok") == 2,
                   30, "both run jobs to be counted")
        after = scrape(port)

    # Counted in the work-horses RQ forked, added up by the worker's endpoint.
    assert value(after, "threadwork_job_seconds_count", function="handle_message", outcome="ok") == 2
    assert value(after, "threadwork_job_wait_seconds_count", function="run_agent") == 2
    assert value(after, "threadwork_agent_tokens_total", agent="toy", direction="input") == 120
    assert value(after, "threadwork_agent_tokens_total", agent="toy", direction="output") == 30
    assert value(after, "threadwork_runs", state="cancelled") == 1 and value(after, "threadwork_runs", state="done") == 1
    assert value(after, "threadwork_queue_depth") == 0
    assert value(after, "threadwork_edit_seconds_count") > value(before, "threadwork_edit_seconds_count")
    # Four jobs ran in four work-horses; the scrapes folded their files into one per metric type.
    (directory,) = (tmp_path / "data" / "metrics").iterdir()
    assert {path.name for path in directory.glob("*_merged.db")} == {"counter_merged.db", "histogram_merged.db"}
    assert len(list(directory.glob("*.db"))) <= 4  # the merged two, and the worker's own

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert records and all(record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for record in records)
    tagged = {(record.get("run_id"), record.get("job_id")) for record in records}
    assert (1, "run-1") in tagged and (2, "run-2") in tagged
    conversations = {record["conversation_id"] for record in records if record.get("job_id") == "run-2"}
    with engine.db.reading() as session:
        assert conversations == {Runs(session).get(2).conversation_id}
    assert any(record.get("job_id", "").startswith("message-") and "conversation_id" in record for record in records)


def test_status_without_redis_says_jobs_run_in_process(tmp_path: Path) -> None:
    result = run_bot(["status"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "queue: in-process (no REDIS_URL: jobs run inside the bot's own process, no workers)",
        "runs: queued 0, running 0, done 0, failed 0, cancelled 0",
        "oldest running run: none",
    ]


def test_status_with_redis_or_the_database_unreachable_is_one_plain_line(tmp_path: Path) -> None:
    no_redis = run_bot(["status"], tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    assert no_redis.stderr.splitlines() == [
        "error: cannot reach Redis at REDIS_URL redis://127.0.0.1:1/0 (ConnectionError): start redis-server or fix "
        "REDIS_URL"]
    assert no_redis.returncode == 2 and no_redis.stdout == ""
    no_db = run_bot(["status"], tmp_path, DATABASE_URL="postgresql+psycopg://bot:s3cret-pw@127.0.0.1:1/threadwork")
    (line,) = no_db.stderr.splitlines()
    assert line.startswith("error: cannot open the database postgresql+psycopg://bot:***@127.0.0.1:1/threadwork")
    assert "s3cret-pw" not in no_db.stderr and no_db.returncode == 2


def test_a_bad_metrics_port_or_log_format_is_one_plain_line(tmp_path: Path, redis_url: str) -> None:
    bad_port = run_bot(["worker", "--burst"], tmp_path, REDIS_URL=redis_url, BOT_METRICS_PORT="nine")
    assert bad_port.stderr.splitlines() == [
        "error: BOT_METRICS_PORT='nine' is not a port number: use 1-65535, or leave it unset for no metrics endpoint"]
    bad_format = run_bot(["status"], tmp_path, BOT_LOG_FORMAT="yaml")
    assert bad_format.stderr.splitlines() == ["error: BOT_LOG_FORMAT='yaml' is not a log format: use text or json"]
    assert bad_port.returncode == bad_format.returncode == 2
    with _listening() as taken:
        busy = run_bot(["worker", "--burst", "--metrics-port", str(taken)], tmp_path, REDIS_URL=redis_url)
    assert busy.returncode == 2 and "Traceback" not in busy.stderr
    assert busy.stderr.splitlines()[-1].startswith(f"error: cannot serve metrics on 127.0.0.1:{taken} ")


@contextmanager
def _listening() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_bot_run_serves_events_acknowledgements_429s_edits_and_model_calls(
        tmp_path: Path, slack_server, anthropic_server) -> None:
    from tests.adapters.test_slack import mention, replies
    from tests.support.engines import bot_env, write_manifest

    port = free_port()
    anthropic_server.script.text("The nightly job backs up the database.", usage=(42, 9))
    env = bot_env(tmp_path, SLACK_BOT_TOKEN=slack_server.bot_token, SLACK_APP_TOKEN=slack_server.app_token,
                  SLACK_API_URL=slack_server.api_url, BOT_METRICS_PORT=str(port),
                  BOT_MANIFEST=str(write_manifest(tmp_path, {"router": {"llm_stage": False}})),
                  **anthropic_server.env())
    process = subprocess.Popen([sys.executable, "-m", "bot", "run"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        slack_server.wait_for_connection(timeout=30)
        wait_for_port(port)
        before = scrape(port)
        assert value(before, "threadwork_events_received_total", platform="slack") == 0
        _, hello = mention(slack_server, "hello")
        assert replies(slack_server, hello)[0].text.startswith("Hi alice!")
        slack_server.rate_limit("chat.update", times=1, retry_after=1)  # the answer's first edit meets a 429
        _, question = mention(slack_server, "what does the nightly job do?")
        slack_server.wait_for(lambda: any("backs up the database" in m.text for m in replies(slack_server, question)))

        # The job's end is recorded last: its model call and edits are counted by then.
        after = wait_until(lambda: counted(port, "threadwork_job_seconds_count", function="handle_message", outcome="ok"),
                           30, "the answer's job to be counted")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert f"metrics: http://127.0.0.1:{port}/metrics" in stderr and "Traceback" not in stderr
    assert value(after, "threadwork_events_received_total", platform="slack") == 2
    assert value(after, "threadwork_dispatch_seconds_count", platform="slack") == 2
    assert value(after, "threadwork_rate_limited_total", platform="slack", method="chat.update") == 1
    assert value(after, "threadwork_model_calls_total", purpose="answer", model="claude-sonnet-4-6", outcome="ok") == 1
    assert value(after, "threadwork_edit_seconds_count") >= 1  # the answer's edits (the 429'd one not counted)
    assert value(after, "threadwork_model_tokens_total", purpose="answer", model="claude-sonnet-4-6",
                  direction="input") == 42
    assert value(after, "threadwork_model_tokens_total", purpose="answer", model="claude-sonnet-4-6",
                  direction="output") == 9
    assert value(after, "threadwork_job_seconds_count", function="handle_message", outcome="ok") == 1
    assert value(after, "threadwork_runs", state="running") == 0  # no Redis: no queue depth, runs still read
    assert ("threadwork_queue_depth", frozenset()) not in after


def test_bot_run_on_discord_counts_a_429_by_route(tmp_path: Path) -> None:
    from tests.fakes.discord_server import FakeDiscordServer
    from tests.support.engines import bot_env

    port = free_port()
    with FakeDiscordServer() as server:
        env = bot_env(tmp_path, DISCORD_TOKEN=server.token, BOT_METRICS_PORT=str(port), **server.env)
        process = subprocess.Popen([sys.executable, "-m", "bot", "run"], env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_port(port)
            server.wait_for(lambda: server._sessions, timeout=60)  # the gateway session is up
            server.rate_limit("POST", r"/channels/\d+/messages$", times=1, retry_after=0.5)
            request = server.send_message_create(server.channel_id, f"<@{server.bot_id}> hello")
            server.wait_for(lambda: [m for m in server.messages_in(request.id) if m.author["id"] == server.bot_id],
                            timeout=60)
            after = wait_until(lambda: counted(port, "threadwork_rate_limited_total", platform="discord",
                                               method="POST /channels/{id}/messages"), 30, "the 429 to be counted")
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=20)
    assert "Traceback" not in stderr
    assert value(after, "threadwork_rate_limited_total", platform="discord", method="POST /channels/{id}/messages") == 1
    assert value(after, "threadwork_events_received_total", platform="discord") == 1
