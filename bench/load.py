"""A load run on one machine: the README's deployment (2 bots, 1-4 workers) under many Slack threads.

Everything is real except Slack and the agent: a throw-away PostgreSQL, a real redis-server,
the local Slack of the tests (tests/fakes/slack_server.py) with its per-channel
`chat.postMessage` limit on, so a 429 is a real one, and the processes started as the README's
"Many processes, many machines" block starts them: `python -m bot migrate`, two
`python -m bot run` (Socket Mode; the local Slack spreads events over both connections) and
N `python -m bot worker --name worker-N`. The agent is the toy CLI agent
(tests/workers/toy_agent.py: one tool call, then its answer) through the shared CLI runner.

Each conversation is a person in a thread: an `app_mention` asking the agent, then
`--messages` - 1 more messages in its thread (`message` events with `thread_ts`, no mention:
the bot answers in threads it takes part in). The person waits for the answer before writing
again, as people do (a message sent while a run is going on steers that run instead: a
different thing from a new request). All conversations go at once, spread over `--channels`
channels, so the load is as many requests in flight as there are conversations. The mix: every
`--command-every`-th message (default 5th) is `!history`, answered in dispatch by the bot
process; the rest are `!agent` requests, each a run on a worker. Mostly runs, because that is
what the bot is for and what the workers scale; a few commands, because their replies share
the bot processes, the acknowledgement path and the channels' rate budget with the runs.
`--agent-every N` turns the mix around: message k (0-based) is an `!agent` request when k is a
multiple of N, so the opening mention is always a run, and `!history` otherwise; it cannot be
combined with `--command-every`. Mostly commands, for the full 1,000 x 10: every run needs at
least one `chat.update` from the workspace-wide edit budget below (about 50 runs a minute), so
with the default mix its 8,000 runs would take at least 160 minutes per worker count, and with
`--agent-every 10` its 1,000 runs about twenty minutes, while the 9,000 commands load the
acknowledgement path and the channels' post budget.

The opening mentions go out as fast as they can be sent (1,000 in ~0.3 s), or `--opening-rate`
a second: Slack itself delivers at most 30,000 events an hour to an app per workspace (~8 a
second), so an opening burst of thousands a second is a stress no one workspace produces.

Measured per worker count, each on a fresh database and Redis: events per second sent and
acknowledged, acknowledgement p50/p99 (the local Slack's time from pushing an envelope to its
ack), p99 of the opening mentions' acks and of the later messages' apart, runs per minute
(finished runs over the span from the first start to the last finish, from the `agent_runs`
table), status edits per second (the local Slack's `chat.update` calls over that span: every
process shares one workspace-wide edit budget, Slack's Tier 3 of 50 a minute in
`bot/constants.py`, and a run's final status edit waits for its token, so past some number of
workers the edits, not the workers, set the pace), 429s by Web API method, lost messages (no reply
when the run ends: every conversation done or no new reply for `--drain-timeout` seconds),
duplicates (more than one reply), and runs per minute relative to 1 worker. The machine's cores
and load average are printed with the figures: the workers, both bots, PostgreSQL, Redis, the
local Slack and the agent processes all share its cores, so workers scale only while cores are
free.

Run: `python bench/load.py [--conversations 1000] [--messages 10] [--workers 1,2,3,4]`, and for
the full 1,000 x 10 add `--agent-every 10`
(targets: zero lost, zero 429 storms, p99 acknowledgement under 100 ms, 4 workers at least
3.5x the runs per minute of 1 on a machine with the cores for it).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402
from redis import Redis  # noqa: E402
from rq import Worker  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from bench.measure import percentile, postgres  # noqa: E402
from bot.constants import WORKERS_RECHECK_S  # noqa: E402
from bot.engine import NO_WORKER  # noqa: E402
from tests.fakes.slack_server import BOT_ID, BOT_USER_ID, FakeSlackServer, Message  # noqa: E402
from tests.support.servers import redis_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: Issue 17's targets.
ACK_P99_TARGET_MS = 100.0
SCALING_TARGET = 3.5
#: Seconds the processes get to connect (2 Socket Mode connections) and to register (workers).
START_TIMEOUT_S = 120
#: Seconds to wait after the run ends for a late second reply (a duplicate) to show.
SETTLE_S = 3.0
#: Seconds between two looks at the local Slack's messages.
POLL_S = 0.02
AGENT_REQUEST = "!agent list the files of conversation {n}"
COMMAND = "!history 3"


@dataclass
class Conversation:
    """One person's thread: what was sent, and the bot's messages in it."""

    n: int
    channel: str
    thread_ts: str = ""
    sent: int = 0
    bot_messages: list[Message] = field(default_factory=list)

    def replies(self) -> int:
        """Return the bot's replies in the thread: its messages without blocks (a run's status has
        blocks), the "no worker is running" notice left out (it comes with a queued request)."""
        return sum(1 for m in self.bot_messages if not m.blocks and m.text != NO_WORKER)


@dataclass
class Result:
    workers: int
    sent: int
    unsent: int
    send_span_s: float
    acked: int
    ack_span_s: float
    ack_ms: list[float]
    #: Seconds the opening mentions took to send, and the acks of those and of every later message.
    opening_s: float
    opening_ack_ms: list[float]
    later_ack_ms: list[float]
    runs_done: int
    runs_other: Counter[str]
    runs_span_s: float
    ratelimited: Counter[str]
    edits: int
    lost: int
    duplicates: int
    wall_s: float
    load_before: float
    load_after: float

    @property
    def runs_per_minute(self) -> float:
        return self.runs_done / self.runs_span_s * 60 if self.runs_span_s else 0.0


def manifest(root: Path) -> Path:
    """Write the repository's manifest with the toy agent chosen; return its path."""
    data = yaml.safe_load((REPO / "manifest.yml").read_text())
    data["plugins"] = {"modules": ["tests.workers.toy_agent_plugin"]}
    data["agent"]["name"] = "toy"
    # The toy is the agent here: no worker needs the warm opencode server it would start for opencode.
    data["agent"]["mode"] = "cold"
    path = root / "manifest.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def fresh_database(server_url: str, name: str) -> str:
    """Create an empty database on the PostgreSQL server; return its URL."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start one of the README's processes in a session of its own, its output in a log file."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "bot", *argv], cwd=cwd, env=env, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def wait_until(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def worker_count(redis_url: str) -> int:
    with Redis.from_url(redis_url) as redis:
        return Worker.count(connection=redis)


def text_of(conversation: Conversation, k: int, command_every: int, agent_every: int) -> str:
    """Return the k-th (0-based) message of a conversation: with `agent_every`, an agent request when k
    is a multiple of it and a command otherwise; without, a command every `command_every`-th, else an
    agent request."""
    if agent_every:
        return AGENT_REQUEST.format(n=conversation.n) if k % agent_every == 0 else COMMAND
    if command_every and (k + 1) % command_every == 0:
        return COMMAND
    return AGENT_REQUEST.format(n=conversation.n)


def drive(slack: FakeSlackServer, conversations: list[Conversation], messages: int, command_every: int,
          agent_every: int, drain_timeout: float, opening_rate: float = 0.0) -> tuple[float, float, set[str]]:
    """Send every conversation's messages, each after the previous one's reply.

    The opening mentions go `opening_rate` a second (0: as fast as they can be sent). Return the
    first and last send, and the envelope ids of the opening mentions.
    """
    by_thread: dict[str, Conversation] = {}
    opening: set[str] = set()
    first = time.monotonic()
    for i, c in enumerate(conversations):
        if opening_rate and (wait := first + i / opening_rate - time.monotonic()) > 0:
            time.sleep(wait)
        envelope = slack.send_event({"type": "app_mention", "channel": c.channel,
                                     "text": f"<@{BOT_USER_ID}> {text_of(c, 0, command_every, agent_every)}"})
        opening.add(envelope)
        c.thread_ts = slack.envelope(envelope).event["ts"]
        c.sent = 1
        by_thread[c.thread_ts] = c
    opened = time.monotonic()
    last_send = time.monotonic()
    seen, last_progress, replied = 0, time.monotonic(), 0
    waiting = list(conversations)
    while waiting and time.monotonic() - last_progress < drain_timeout:
        new = slack.messages[seen:]
        seen += len(new)
        for m in new:
            if m.bot_id == BOT_ID and m.thread_ts in by_thread:
                by_thread[m.thread_ts].bot_messages.append(m)
        still = []
        for c in waiting:
            if c.replies() >= c.sent and c.sent < messages:
                slack.send_event({"type": "message", "channel": c.channel, "thread_ts": c.thread_ts,
                                  "text": text_of(c, c.sent, command_every, agent_every)})
                c.sent += 1
                last_send = time.monotonic()
            if c.replies() < messages:
                still.append(c)
        waiting = still
        total = sum(c.replies() for c in conversations)
        if total != replied:
            replied, last_progress = total, time.monotonic()
        time.sleep(POLL_S)
    time.sleep(SETTLE_S)
    for m in slack.messages[seen:]:
        if m.bot_id == BOT_ID and m.thread_ts in by_thread:
            by_thread[m.thread_ts].bot_messages.append(m)
    return first, last_send, opening, opened - first


def measure(workers: int, args: argparse.Namespace, pg_url: str, redis_base: str, root: Path) -> Result:
    """Run the load against a fresh deployment with this many workers; return its figures."""
    load_before = os.getloadavg()[0]
    database = fresh_database(pg_url, f"load_{workers}")
    redis_url = redis_base.rsplit("/", 1)[0] + f"/{workers}"
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    work = root / f"workers-{workers}"
    work.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    with FakeSlackServer(rate_limits=True) as slack:
        channels = [f"C0LOAD{i:04d}" for i in range(args.channels)]
        for channel in channels:
            slack.add_channel(channel)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "ANTHROPIC_"))},
               "DATABASE_URL": database, "REDIS_URL": redis_url, "BOT_DATA_DIR": str(work / "data"),
               "BOT_MANIFEST": str(manifest(work)), "PYTHONPATH": str(REPO),
               "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token,
               "SLACK_API_URL": slack.api_url.rstrip("/")}
        try:
            migrate = subprocess.run([sys.executable, "-m", "bot", "migrate"], cwd=work, env=env,
                                     capture_output=True, text=True, timeout=120)
            if migrate.returncode:
                raise SystemExit(f"migrate failed: {migrate.stderr[-2000:]}")
            for i in (1, 2):
                processes.append(start(["run"], env, work, work / f"bot-{i}.log"))
            for i in range(1, workers + 1):
                processes.append(start(["worker", "--name", f"worker-{i}"], env, work, work / f"worker-{i}.log"))
            slack.wait_for_connection(2, timeout=START_TIMEOUT_S)
            wait_until(lambda: worker_count(redis_url) == workers, START_TIMEOUT_S, f"{workers} workers to listen")
            # The bots looked for workers when they started, before these did: until they look
            # again a request would also get the "no worker is running" notice.
            time.sleep(WORKERS_RECHECK_S + 0.5)
            conversations = [Conversation(n, channels[n % len(channels)]) for n in range(args.conversations)]
            started = time.monotonic()
            first, last_send, opening, opening_s = drive(slack, conversations, args.messages, args.command_every,
                                                         args.agent_every, args.drain_timeout, args.opening_rate)
            wall = time.monotonic() - started
            crashed = [p.args for p in processes if p.poll() is not None]
            if crashed:
                print(f"warning: processes exited during the run: {crashed} (logs in {work})", file=sys.stderr)
        finally:
            stop(processes)
        with slack._cond:  # a consistent copy of the record
            envelopes = {e.envelope_id for e in slack.envelopes if e.type == "events_api"}
            acks = [a for a in slack.acks if a.envelope_id in envelopes]
            ratelimited = Counter(call.method for call in slack.ratelimited)
            edits = sum(1 for call in slack.calls if call.method == "chat.update")
            if args.keep:  # every thread as the local Slack holds it, to read what went wrong
                with (work / "threads.txt").open("w") as out:
                    for c in conversations:
                        for m in slack.messages_in_thread(c.channel, c.thread_ts):
                            out.write(f"{c.n} {m.ts} {'bot' if m.bot_id else 'user'}"
                                      f"{' blocks' if m.blocks else ''}: {m.text[:150]!r}\n")
    engine = create_engine(database)
    with engine.connect() as connection:
        states = Counter(dict(connection.execute(text("select state, count(*) from agent_runs group by state")).all()))
        if args.keep:
            with (work / "runs.txt").open("w") as out:
                for row in connection.execute(text("select * from agent_runs order by id")).mappings():
                    out.write(f"{dict(row)}\n")
        span = connection.execute(text(
            "select extract(epoch from max(finished_at) - min(started_at)) from agent_runs where state = 'done'"
        )).scalar()
    engine.dispose()
    sent = sum(c.sent for c in conversations)
    done = states.pop("done", 0)
    return Result(
        workers=workers, sent=sent, unsent=args.conversations * args.messages - sent,
        send_span_s=last_send - first, acked=len(acks),
        ack_span_s=(max(a.received_at for a in acks) - first) if acks else 0.0,
        ack_ms=[a.latency * 1000 for a in acks], opening_s=opening_s,
        opening_ack_ms=[a.latency * 1000 for a in acks if a.envelope_id in opening],
        later_ack_ms=[a.latency * 1000 for a in acks if a.envelope_id not in opening], runs_done=done, runs_other=states,
        runs_span_s=float(span or 0.0), ratelimited=ratelimited, edits=edits,
        lost=sum(max(0, c.sent - c.replies()) for c in conversations),
        duplicates=sum(max(0, c.replies() - c.sent) for c in conversations),
        wall_s=wall, load_before=load_before, load_after=os.getloadavg()[0])


def ordinal(n: int) -> str:
    """Return n as an English ordinal: 1st, 2nd, 3rd, 4th, 11th, 22nd."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    base = results[0].runs_per_minute if results else 0.0
    if args.agent_every:
        mix = f"every {ordinal(args.agent_every)} from the first an agent run, the others commands answered in dispatch"
    else:
        mix = f"every {ordinal(args.command_every)} a command answered in dispatch"
    print(f"load: {args.conversations} conversations x {args.messages} messages over {args.channels} channels,"
          f" {mix}, 2 bot processes, toy agent")
    print(f"{'workers':>7} {'sent ev/s':>9} {'acked ev/s':>10} {'ack p50 ms':>10} {'ack p99 ms':>10}"
          f" {'opening p99':>11} {'later p99':>9} {'runs/min':>8} {'vs 1':>5} {'edits/s':>7}"
          f" {'429s':>5} {'lost':>5} {'dup':>4} {'wall s':>7} {'load':>11}")
    for r in results:
        p50 = percentile(r.ack_ms, 50) if r.ack_ms else float("nan")
        p99 = percentile(r.ack_ms, 99) if r.ack_ms else float("nan")
        ratio = r.runs_per_minute / base if base else float("nan")
        opening = percentile(r.opening_ack_ms, 99) if r.opening_ack_ms else float("nan")
        later = percentile(r.later_ack_ms, 99) if r.later_ack_ms else float("nan")
        print(f"{r.workers:>7} {r.sent / r.send_span_s if r.send_span_s else 0:>9.1f}"
              f" {r.acked / r.ack_span_s if r.ack_span_s else 0:>10.1f} {p50:>10.1f} {p99:>10.1f}"
              f" {opening:>11.1f} {later:>9.1f} {r.runs_per_minute:>8.1f} {ratio:>4.2f}x"
              f" {r.edits / r.runs_span_s if r.runs_span_s else 0:>7.2f}"
              f" {sum(r.ratelimited.values()):>5} {r.lost:>5}"
              f" {r.duplicates:>4} {r.wall_s:>7.1f} {r.load_before:>5.2f}-{r.load_after:<5.2f}")
    for r in results:
        notes = [f"the {len(r.opening_ack_ms)} opening mentions went out in {r.opening_s:.1f} s"
                 f" ({len(r.opening_ack_ms) / r.opening_s if r.opening_s else 0:,.0f} a second)"]
        if r.unsent:
            notes.append(f"{r.unsent} messages never sent (their conversation waited on a lost reply)")
        if r.ratelimited:
            notes.append("429s by method: " + ", ".join(f"{m} {n}" for m, n in r.ratelimited.most_common()))
        if r.runs_other:
            notes.append("runs not done: " + ", ".join(f"{s} {n}" for s, n in r.runs_other.items()))
        if r.acked != r.sent:
            notes.append(f"{r.sent - r.acked} events not acknowledged")
        print(f"  {r.workers} workers: " + "; ".join(notes))
    print(f"targets: 0 lost, no 429 storms, ack p99 < {ACK_P99_TARGET_MS:.0f} ms,"
          f" 4 workers >= {SCALING_TARGET}x 1 worker's runs/min (with the cores for it)")
    with open("/proc/loadavg") as loadavg:
        print(f"machine: {os.cpu_count()} cores; /proc/loadavg now: {loadavg.read().strip()}"
              " (load is per row above: before-after, 1-minute average)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000, help="threads, all at once (default 1000)")
    parser.add_argument("--messages", type=int, default=10, help="messages per thread (default 10)")
    parser.add_argument("--workers", default="1,2,3,4", help="worker counts to measure (default 1,2,3,4)")
    parser.add_argument("--channels", type=int, default=50, help="channels the threads are spread over (default 50)")
    parser.add_argument("--command-every", type=int,
                        help="every n-th message is `!history` (0: all agent requests; default 5)")
    parser.add_argument("--agent-every", type=int, default=0,
                        help="message k (0-based) is an agent request when k %% n == 0 and `!history` otherwise"
                             " (0: off; not with --command-every)")
    parser.add_argument("--opening-rate", type=float, default=0.0,
                        help="opening mentions per second (0, the default: as fast as they can be sent; Slack"
                             " delivers at most 30,000 events an hour to an app per workspace, ~8 a second)")
    parser.add_argument("--keep", type=Path, help="keep the processes' logs and data in this new directory")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="end when no reply has come for this many seconds (default 120)")
    args = parser.parse_args()
    if args.agent_every < 0:
        parser.error("--agent-every must be 0 (off) or more")
    if args.agent_every and args.command_every is not None:
        parser.error("--agent-every cannot be combined with --command-every: each sets the whole mix")
    if args.command_every is None:
        args.command_every = 5
    counts = [int(n) for n in args.workers.split(",")]
    # `kill PID` ends the bench through its `finally`s: no bot, worker or server outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tw-load-") as scratch, postgres() as pg_url, redis_server() as redis_url:
        if pg_url is None:
            raise SystemExit("bench/load.py needs PostgreSQL (initdb, pg_ctl)")
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        for workers in counts:
            results.append(measure(workers, args, pg_url, redis_url, root))
            print(f"  {workers} workers: {results[-1].wall_s:.0f} s", file=sys.stderr)
    print_table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
