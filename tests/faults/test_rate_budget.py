"""One rate budget per channel across processes (`bot.rate_budget`), against a real Redis.

- Two processes taking tokens from one bucket as fast as they can are granted, together, no
  more than rate x window + burst, with the window read from Redis' own clock.
- Ten people ask the agent (the toy CLI agent, working slowly) at once in one Slack channel,
  with the local Slack's per-channel limit on (about 1 post/s, a burst of 3, 429 + Retry-After
  beyond it), and two real `python -m bot worker` processes take the work: the local Slack
  answers (almost) no 429, every status message ends showing its run done, every answer is
  posted once.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

from redis import Redis
from rq import Worker

from bot.progress import LiveMessage
from bot.rate_budget import EDIT, LIMITS, POST, Limit, LocalBuckets, RateBudget, RedisBuckets
from bot.types import Reply, ThreadRef
from tests.adapters.test_slack import CHANNEL, socket_adapter
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.support.engines import REPO, EngineBuilder
from tests.support.processes import start_bot, stop
from tests.workers.agent_support import wait_until

RATE_PER_S = 5.0
BURST = 3.0
#: How long each process keeps asking, by Redis' clock.
WINDOW_S = 2.0
KEY = "threadwork:rate:test:post:C1"
GO = "threadwork:test:go"

RUNS = 10
TOY = {"plugins": {"modules": ["tests.workers.toy_agent_plugin"]}, "agent": {"name": "toy"}}
#: The 429s the test tolerates: a post granted by the budget reaches the local Slack a few
#: milliseconds later, and the two clocks' buckets can disagree by that much; the budget's
#: burst (2) is one under the local Slack's (3) to absorb it, so none is expected.
TOLERATED_429S = 2


def redis_now(redis: Redis) -> float:
    seconds, micros = redis.time()
    return seconds + micros / 1_000_000


def take_for_a_window(redis_url: str, granted: multiprocessing.Queue) -> None:
    """In a process of its own: take tokens as fast as Redis answers for WINDOW_S; report the count."""
    buckets = RedisBuckets(redis_url)
    redis = Redis.from_url(redis_url)
    while not redis.exists(GO):
        time.sleep(0.001)
    start, count = redis_now(redis), 0
    while redis_now(redis) - start < WINDOW_S:
        if buckets.try_take(KEY, RATE_PER_S, BURST) == 0:
            count += 1
    granted.put(count)


def test_two_processes_sharing_a_bucket_get_no_more_than_rate_times_window_plus_burst(redis_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    granted: multiprocessing.Queue = context.Queue()
    takers = [context.Process(target=take_for_a_window, args=(redis_url, granted)) for _ in range(2)]
    for taker in takers:
        taker.start()
    with Redis.from_url(redis_url) as redis:
        started = redis_now(redis)  # before any token can be taken: the bucket starts at the first take
        redis.set(GO, 1)
        counts = [granted.get(timeout=60) for _ in takers]
        ended = redis_now(redis)
    for taker in takers:
        taker.join(30)
    assert all(count > 0 for count in counts), counts  # both processes drew on the bucket
    assert sum(counts) <= RATE_PER_S * (ended - started) + BURST, (counts, ended - started)


def test_threads_sharing_a_local_bucket_get_no_more_than_rate_times_window_plus_burst() -> None:
    buckets, counts = LocalBuckets(), [0, 0, 0]
    started = time.monotonic()

    def take(n: int) -> None:
        while time.monotonic() - started < WINDOW_S:
            if buckets.try_take("local", RATE_PER_S, BURST) == 0:
                counts[n] += 1

    threads = [threading.Thread(target=take, args=(n,)) for n in range(len(counts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = time.monotonic()
    assert sum(counts) <= RATE_PER_S * (ended - started) + BURST, counts


def test_an_intermediate_edit_leaves_the_reserve_for_a_final_one() -> None:
    buckets = LocalBuckets()
    assert buckets.try_take("slow", 0.001, 2, keep=1) == 0  # 2 tokens, keeps 1: granted
    assert buckets.try_take("slow", 0.001, 2, keep=1) > 0  # 1 left: an intermediate edit waits
    assert buckets.try_take("slow", 0.001, 2) == 0  # a final edit or a new post takes it


def test_what_shares_a_bucket_follows_each_platform() -> None:
    # The real table's bursts and scopes, refilling too slowly to matter while the test runs.
    budget = RateBudget(LocalBuckets(), {kind: replace(limit, rate_per_s=0.001) for kind, limit in LIMITS.items()})

    def granted(platform: str, channel: str, thread: str, kind: str) -> bool:
        return budget.try_take(ThreadRef(platform, channel, thread), kind) == 0

    # Slack: the threads of a channel share its posts (burst 2); another channel has its own.
    assert [granted("slack", "C1", f"t{n}", POST) for n in range(3)] == [True, True, False]
    assert granted("slack", "C2", "t1", POST)
    # Slack's chat.update limit is the workspace's: edits in five channels use it up.
    assert [granted("slack", f"C{n}", "t", EDIT) for n in range(6)] == [True] * 5 + [False]
    # Discord: posts and edits of a thread share its bucket (burst 4); a thread is a channel of its own.
    assert [granted("discord", "D1", "th1", kind) for kind in (POST, EDIT, POST, EDIT, POST)] == [True] * 4 + [False]
    assert granted("discord", "D1", "th2", POST)
    # The console has no limit.
    assert all(granted("console", "local", "main", POST) for _ in range(50))


def test_live_messages_of_one_channel_share_its_budget_and_every_final_state_lands(
        make_engine: EngineBuilder) -> None:
    engine, port = make_engine()
    shared = Limit("messages", RATE_PER_S, BURST)  # posts and edits of the channel, as on Discord
    engine.rate_budget = RateBudget(LocalBuckets(), {("test", POST): shared, ("test", EDIT): shared})
    conversations = [engine.inbox.conversation(ThreadRef("test", "C1", f"t{n}"), f"thread {n}") for n in range(3)]
    started = time.monotonic()
    lives = [LiveMessage.in_thread(engine, conversation, interval=0.05) for conversation in conversations]
    for n, live in enumerate(lives):
        live.start(Reply(f"{n}: queued", partial=True))
    for step in range(40):
        for n, live in enumerate(lives):
            live.update(Reply(f"{n}: step {step}", partial=True))
        time.sleep(0.01)
    for n, live in enumerate(lives):
        live.finish(Reply(f"{n}: done"))
    ended = time.monotonic()
    assert [port.last(message_id) for message_id in port.order] == ["0: done", "1: done", "2: done"]
    calls = len(port.order) + len(port.edits)
    assert calls <= RATE_PER_S * (ended - started) + BURST, calls  # 120 updates became what the budget allowed
    assert len(port.edits) < 3 * 40


def test_ten_runs_in_one_channel_over_two_workers_earn_no_429_storm_and_all_land(
        tmp_path: Path, redis_url: str, make_engine: EngineBuilder) -> None:
    with FakeSlackServer() as slack:
        slack.set_rate_limits(True)
        engine, _ = make_engine(manifest=TOY, REDIS_URL=redis_url, SLACK_BOT_TOKEN=slack.bot_token,
                                SLACK_API_URL=slack.api_url.rstrip("/"))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "ANTHROPIC_"))},
               **{k: v for k, v in engine.settings.env.items() if v}, "PYTHONPATH": str(REPO)}
        workers = [start_bot(["worker", "--name", f"budget-worker-{n}"], env, log=tmp_path / f"worker-{n}.log")
                   for n in (1, 2)]
        try:
            with Redis.from_url(redis_url) as redis:
                wait_until(lambda: Worker.count(connection=redis) == 2, 60, "both workers to listen")
            with socket_adapter(engine, slack):
                threads = [slack.envelope(slack.send_event(
                    {"type": "app_mention", "channel": CHANNEL,
                     "text": f"<@{BOT_USER_ID}> /agent list the files slowly"})).event["ts"] for _ in range(RUNS)]

                def answers() -> list[list[str]]:
                    return [[m.text for m in slack.messages_in_thread(CHANNEL, ts) if m.bot_id and not m.blocks]
                            for ts in threads]

                def finals() -> list[str]:
                    return [" ".join(m.versions[-1].text for m in slack.messages_in_thread(CHANNEL, ts) if m.blocks)
                            for ts in threads]

                wait_until(lambda: all(answers()) and all("done" in final for final in finals()), 300,
                           "every run's answer and its status showing done")
                time.sleep(1)  # a second answer or status, were one to come, would land by now
            assert all(worker.poll() is None for worker in workers)  # nothing crashed meanwhile
        finally:
            for worker in workers:
                stop(worker)
        statuses = [[m for m in slack.messages_in_thread(CHANNEL, ts) if m.blocks] for ts in threads]
        refused = list(slack.ratelimited)
        posts = slack.calls_to("chat.postMessage")

    assert len(refused) <= TOLERATED_429S, refused
    assert all(len(status) == 1 for status in statuses)  # one status message per run
    assert all("done" in status[0].versions[-1].text for status in statuses), [s[0].history for s in statuses]
    assert [len(each) for each in answers()] == [1] * RUNS  # each answer once, in its own thread
    assert all("Listed the files" in each[0] for each in answers())
    assert len(posts) == 2 * RUNS + len(refused)  # a status and an answer per run, a refused post sent again
