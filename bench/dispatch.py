"""Messages per second through `dispatch` into SQLite, beside Errbot's in-process test backend.

Both bots answer the same workload, interleaved in one run: a command (`/echo hello` here,
`!echo hello` for Errbot) and a pattern-matched chat line (`hello there`). The bots take turns
in blocks of `--block` messages: Errbot's thread pool finishes each message's work after its
reply is out, and message-by-message turns would bill that work to whichever bot runs next.
Threadwork persists every message, its routing decision and its reply in SQLite; Errbot
persists none. Run: `python bench/dispatch.py [-n 3000]`.

Targets: p99 under 5 ms per message; at least twice Errbot's messages per second. The machine's
load average is printed beside the figures: both bots are single-threaded here, so a busy
second core (a test suite, another benchmark) slows them unevenly. `--profile` prints where
Threadwork's time goes (measured: about a third is SQLite's commit, a seventh the statements,
a tenth the connection pool's checkout and return; the rest is routing and Python overhead).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_plugin  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.engine import Engine  # noqa: E402
from bot.queue import InProcessQueue  # noqa: E402
from bot.types import Attachment, Message, Reply, ThreadRef  # noqa: E402

#: (our text, our expected reply, Errbot's text, Errbot's expected reply)
WORKLOAD = (
    ("/echo hello", "hello", "!echo hello", "hello"),
    ("hello there", "Hi bench!", "hello there", "Hello!"),
)
P99_TARGET_MS = 5.0
RATIO_TARGET = 2.0


class MemoryPort:
    """A chat port that keeps the last reply, like Errbot's test backend keeps its queue."""

    platform = "bench"

    def __init__(self) -> None:
        self.last = ""
        self.count = 0

    def post(self, where: ThreadRef, reply: Reply) -> str:
        self.last = reply.text
        self.count += 1
        return str(self.count)

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self.last = reply.text

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        return "file"


class ThreadworkWorkload:
    """Threadwork's engine on a fresh SQLite file, answering through `dispatch`."""

    def __init__(self, data_dir: Path) -> None:
        settings = Settings.from_env({"BOT_DATA_DIR": str(data_dir)})
        self.engine = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
        self.engine.pm.register(bench_plugin, name="bench_plugin")
        self.engine.commands.update({c.name: c for c in bench_plugin.register_commands()})
        self.port = MemoryPort()
        self.engine.attach_port(self.port)
        self.where = ThreadRef("bench", "C1", "T1")

    def send(self, text: str) -> str:
        self.engine.dispatch(Message(where=self.where, text=text, user_id="U1", user_name="bench"))
        return self.port.last

    def close(self) -> None:
        self.engine.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="messages per bot (default 3000)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--block", type=int, default=100, help="messages per turn (default 100)")
    parser.add_argument("--profile", action="store_true", help="print where Threadwork's time goes")
    args = parser.parse_args()
    load_before = os.getloadavg()
    profile = cProfile.Profile() if args.profile else None

    from bench.errbot_workload import ErrbotWorkload

    with tempfile.TemporaryDirectory(prefix="tw-bench-") as scratch:
        ours = ThreadworkWorkload(Path(scratch) / "threadwork")
        theirs = ErrbotWorkload(Path(scratch) / "errbot")
        timings: dict[str, list[float]] = {"threadwork": [], "errbot": []}
        try:
            for block_start in range(0, args.warmup + args.n, args.block):
                block = range(block_start, min(block_start + args.block, args.warmup + args.n))
                for name, bot in (("threadwork", ours), ("errbot", theirs)):
                    for i in block:
                        ours_text, ours_reply, errbot_text, errbot_reply = WORKLOAD[i % len(WORKLOAD)]
                        text, expected = (ours_text, ours_reply) if name == "threadwork" else (errbot_text, errbot_reply)
                        profiling = profile is not None and name == "threadwork" and i >= args.warmup
                        if profiling:
                            profile.enable()
                        start = time.perf_counter()
                        reply = bot.send(text)
                        elapsed = time.perf_counter() - start
                        if profiling:
                            profile.disable()
                        if not reply.startswith(expected):
                            raise SystemExit(f"{name} answered {text!r} with {reply!r}")
                        if i >= args.warmup:
                            timings[name].append(elapsed)
            with ours.engine.db.session() as session:
                from sqlalchemy import func, select

                from bot.db.models import MessageRow

                stored = session.scalar(select(func.count(MessageRow.id)))
        finally:
            ours.close()
            theirs.close()

    rows = []
    for name, values in timings.items():
        rate = len(values) / sum(values)
        rows.append((name, rate, statistics.median(values) * 1000, percentile(values, 99) * 1000))
    print(f"dispatch benchmark: {args.n} messages per bot, interleaved in blocks of {args.block},"
          f" after {args.warmup} warm-up each")
    print(f"{'bot':<12} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8}  persisted")
    for name, rate, p50, p99 in rows:
        persisted = f"{stored} rows (message + reply each)" if name == "threadwork" else "nothing"
        print(f"{name:<12} {rate:>9,.0f} {p50:>8.3f} {p99:>8.3f}  {persisted}")
    ratio = rows[0][1] / rows[1][1]
    p99 = rows[0][3]
    print(f"ratio threadwork/errbot msg/s: {ratio:.2f}x (target >= {RATIO_TARGET:.0f}x)"
          f" | threadwork p99 {p99:.3f} ms (target < {P99_TARGET_MS:.0f} ms)")
    load_after = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
          " (above ~0.5 before, the figures are not from a quiet machine)")
    if profile is not None:
        print("\nwhere Threadwork's time went (profiled run; profiling itself slows it):")
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
