"""Rate budget: ten agent runs in one Slack channel, with and without the per-channel budget.

Everything is real but the platform: the local Slack (tests/fakes/slack_server.py) with its
per-channel limit on (about 1 post/s, a burst of 3, 429 + Retry-After beyond it), Threadwork's
engine with an in-process queue of ten job threads, the toy CLI agent working slowly. Ten
people ask the agent at once in one channel; the bench times the first request's dispatch to
the moment every status message shows its run done and every answer is posted, and counts
the 429s and the calls. "without" replaces the engine's budget with one that has no limits.
Run: `python bench/rate_budget.py [-n 2] [--redis redis://127.0.0.1:6379/0]`; run it on a
quiet machine (`cat /proc/loadavg`). Measured once (-n 1) on 2 cores at load 3.13 (others'
benches running): without the budget 3 of 10 landed within 180 s, 69 429s, 82 posts; with it
10 of 10 in 19.3 s, 0 429s, 20 posts, 18 edits. Again at load 2.19: the same counts, 18.2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import Settings  # noqa: E402
from bot.engine import Engine, set_current  # noqa: E402
from bot.queue import InProcessQueue  # noqa: E402
from bot.rate_budget import LocalBuckets, RateBudget  # noqa: E402
from bot.types import Message, ThreadRef  # noqa: E402
from tests.fakes.slack_server import DEFAULT_USER_ID, FakeSlackServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHANNEL = "C0BENCH"
RUNS = 10
#: A round whose ten runs have not all landed by then is reported with how many did.
GIVE_UP_S = 180


def one_round(folder: Path, *, budget: bool, redis_url: str | None) -> dict[str, float]:
    """Run ten requests in one channel; return the seconds until all landed and the calls counted."""
    manifest = yaml.safe_load((REPO / "manifest.yml").read_text())
    manifest["plugins"] = {"modules": ["tests.workers.toy_agent_plugin"]}
    manifest["agent"].update(name="toy", mode="cold")
    (folder / "manifest.yml").write_text(yaml.safe_dump(manifest))
    with FakeSlackServer(rate_limits=True) as slack:
        env = {"BOT_DATA_DIR": str(folder / "data"), "BOT_MANIFEST": str(folder / "manifest.yml"),
               "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url.rstrip("/")}
        engine = Engine.from_settings(Settings.from_env(env), queue=InProcessQueue(workers=RUNS),
                                      load_entrypoints=False)
        set_current(engine)
        if not budget:
            engine.rate_budget = RateBudget(LocalBuckets(), limits={})
        elif redis_url:
            engine.rate_budget = RateBudget.from_url(redis_url)
        parents = [slack.add_thread_message(CHANNEL, f"request {n}").ts for n in range(RUNS)]
        started = time.monotonic()
        for ts in parents:
            engine.dispatch(Message(where=ThreadRef("slack", CHANNEL, ts), text="/agent list the files slowly",
                                    user_id=DEFAULT_USER_ID, user_name="alice"))

        def landed() -> int:
            """Return how many requests show their status done and have their answer."""
            count = 0
            for ts in parents:
                thread = slack.messages_in_thread(CHANNEL, ts)
                statuses = [m for m in thread if m.blocks]
                answers = [m for m in thread if m.bot_id and not m.blocks]
                count += bool(statuses and "done" in statuses[0].text and answers)
            return count

        try:
            slack.wait_for(lambda: landed() == RUNS, timeout=GIVE_UP_S)
            took = time.monotonic() - started
        except TimeoutError:
            took = float("nan")  # some never landed: a job gave up on its post
        engine.queue.wait(timeout=GIVE_UP_S)
        result = {"seconds": took, "landed": landed(), "429s": len(slack.ratelimited),
                  "posts": len(slack.calls_to("chat.postMessage")), "edits": len(slack.calls_to("chat.update"))}
        engine.close()
        set_current(None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2, help="rounds per mode")
    parser.add_argument("--redis", default=None, help="take the budget from this Redis (default: in-process)")
    args = parser.parse_args()
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
    rows = []
    for label, budget in (("without budget", False), ("with budget", True)):
        results = []
        for _ in range(args.n):
            with tempfile.TemporaryDirectory() as folder:
                results.append(one_round(Path(folder), budget=budget, redis_url=args.redis))
        rows.append((label, results))
    print(f"\n{RUNS} runs in one channel, local Slack at ~1 post/s per channel (burst 3); {args.n} round(s) each")
    print(f"{'mode':<16} {'all landed (s), each round':>28} {'landed':>9} {'429s':>9} {'posts':>7} {'edits':>7}")
    for label, results in rows:
        seconds = " / ".join(f"{r['seconds']:.1f}" for r in results)
        print(f"{label:<16} {seconds:>28} "
              f"{'/'.join(str(int(r['landed'])) for r in results):>9} "
              f"{'/'.join(str(int(r['429s'])) for r in results):>9} "
              f"{statistics.median(r['posts'] for r in results):>7.0f} {statistics.median(r['edits'] for r in results):>7.0f}")
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
