"""Where the warm opencode server's memory per run goes: its own options measured, and what a directory keeps.

Run: `python bench/opencode_memory.py [--variants NAME,...] [--counts 1,8] [--sequential 6]
[--timeline N] [--on VARIANT]` (needs `npm install` for the binary). Everything runs through the
engine as `bench/agent_runs.py --warm` does, with the same measure (PSS of the server's process
tree, bench/agent_memory.py). Nothing here changes the product: a variant lays an option over
the scripted model's opencode config, or passes a variable to the agent, for this bench only.

Variants: each is the 1/N concurrent new conversations of `agent_runs.concurrent_memory`, warm
only, on a fresh server each. Sequential: one primed server serves K new conversations one after
another, then K follow-ups in one conversation; after each run (settled) its PSS, threads and
open files, to tell what each new directory keeps from what a run takes while it runs.
Timeline: the PSS through N concurrent new conversations on a primed server, beside the
model's requests. `--on` picks the variant the sequential and timeline parts run on.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import agent_memory  # noqa: E402
from bench.agent_runs import MEMORY_SETTLE_S, UNLIMITED_RSS_MB, bench_engine, concurrent_memory, load  # noqa: E402
from bot.types import Message, ThreadRef  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer, Turn  # noqa: E402

#: name: (what it is, opencode config laid over the scripted one, variables passed to the agent).
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "baseline": ("as the bot runs it", {}, {}),
    "no-snapshot": ('"snapshot": false', {"snapshot": False}, {}),
    "no-watcher": ("OPENCODE_EXPERIMENTAL_DISABLE_FILEWATCHER=1", {}, {"OPENCODE_EXPERIMENTAL_DISABLE_FILEWATCHER": "1"}),
    "no-fff": ("OPENCODE_DISABLE_FFF=1 (its native file finder)", {}, {"OPENCODE_DISABLE_FFF": "1"}),
    "all-off": ("the three above together", {"snapshot": False},
                {"OPENCODE_EXPERIMENTAL_DISABLE_FILEWATCHER": "1", "OPENCODE_DISABLE_FFF": "1"}),
    # JavaScriptCore sizes its heap from the machine's RAM (24 GB here): these show how much of
    # the growth is garbage not yet collected rather than state kept.
    "gc-eager": ("BUN_GARBAGE_COLLECTOR_LEVEL=2", {}, {"BUN_GARBAGE_COLLECTOR_LEVEL": "2"}),
    "ram-1g": ("BUN_JSC_forceRAMSize=1 GiB (JSC's heap sized as on a 1 GB machine)", {},
               {"BUN_JSC_forceRAMSize": str(1 << 30)}),
    "ram-2g": ("BUN_JSC_forceRAMSize=2 GiB", {}, {"BUN_JSC_forceRAMSize": str(2 << 30)}),
    "ram-512m": ("BUN_JSC_forceRAMSize=512 MiB", {}, {"BUN_JSC_forceRAMSize": str(1 << 29)}),
}


def print_variants(names: list[str], counts: tuple[int, ...]) -> None:
    """Print, per variant, the warm server's PSS around 1 and N concurrent new conversations."""
    mb = 1024
    top = max(counts)
    print(f"warm server (PSS of its tree) per variant, 1 and {top} concurrent new conversations, fresh server each")
    print(f"{'variant':<12} {'started':>8} {'idle':>7} {'peak 1':>7} {f'peak {top}':>7} {f'after {top}':>8}"
          f" {'per extra run':>14} {f'(peak-idle)/{top}':>15} {'in tool':>8} {f'{top} done in':>10}"
          f" {'load before/after':>18}  what")
    for name in names:
        what, config, env = VARIANTS[name]
        before = load().split()[0]
        figures = concurrent_memory(counts=counts, modes=("warm",), config=config, env=env)["warm"]
        one, most = figures[min(counts)], figures[top]
        extra = (most.peak.pss_kb - one.peak.pss_kb) / mb / (top - min(counts))
        warnings = ""
        if most.answered != top or one.answered != min(counts) or most.restarts:
            warnings = f" (answered {one.answered}, {most.answered}; restarts {most.restarts})"
        print(f"{name:<12} {most.started.pss_kb / mb:>6.0f}MB {most.idle.pss_kb / mb:>5.0f}MB {one.peak.pss_kb / mb:>5.0f}MB"
              f" {most.peak.pss_kb / mb:>5.0f}MB {most.after.pss_kb / mb:>6.0f}MB {extra:>12.0f}MB"
              f" {(most.peak.pss_kb - most.idle.pss_kb) / mb / top:>13.0f}MB {most.overlap:>5}/{top:<2}"
              f" {most.wall_s:>9.1f}s {before:>8} / {load().split()[0]:<8} {what}{warnings}", flush=True)


def server_facts(pid: int) -> tuple[int, int]:
    """Return the serving process's threads and open file descriptors (0, 0 when gone)."""
    try:
        threads = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("Threads:"))
        return threads, len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except (OSError, StopIteration):
        return 0, 0


def thread_names(pid: int) -> Counter[str]:
    """Return how many threads of the process carry each name."""
    names: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                names[(task / "comm").read_text().strip()] += 1
    return names


def print_sequential(runs: int, variant: str = "baseline") -> None:
    """Print the server's PSS, threads and open files after each of K new conversations, then K follow-ups."""
    from plugins.agents.opencode_server import running_servers, serving_pid, stop_all

    mb = 1024
    what, config, env = VARIANTS[variant]
    print(f"variant {variant} ({what}):")
    print(f"one warm server, primed, then {runs} new conversations one after another, then {runs} follow-ups")
    print("in one conversation; each run writes a file with bash and answers; measured 2 s after each run")
    print(f"{'step':<16} {'PSS':>8} {'anon PSS':>9} {'change':>8} {'threads':>8} {'open files':>11}")
    with tempfile.TemporaryDirectory(prefix="tw-bench-seq-") as scratch, FakeOpenAIServer() as model:
        engine, _clock = bench_engine(Path(scratch), model, "warm", config=config, env=env,
                                      server_max_rss_mb=UNLIMITED_RSS_MB)
        pid = serving_pid(running_servers()[0].pid)
        time.sleep(MEMORY_SETTLE_S)
        threads_at_start = thread_names(pid)
        last = agent_memory.sample(whole_tree=False)
        print(f"{'started':<16} {last.pss_kb / mb:>6.0f}MB {last.anon_pss_kb / mb:>7.0f}MB {'':>8}"
              f" {server_facts(pid)[0]:>8} {server_facts(pid)[1]:>11}")
        steps = [("prime", "prime")] + [(f"new {n + 1}", f"N{n}") for n in range(runs)] \
            + [(f"follow-up {n + 1}", "N0") for n in range(runs)]
        changes: dict[str, list[float]] = {"new": [], "follow-up": []}
        for n, (label, thread) in enumerate(steps):
            model.script(Turn.bash(f"echo hi > hi{n}.txt"), Turn.text("Done."))
            engine.dispatch(Message(where=ThreadRef("bench", "S", thread), text=f"/agent step {n}",
                                    user_id="U", user_name="bench"))
            engine.queue.wait(timeout=300)
            time.sleep(MEMORY_SETTLE_S)
            now = agent_memory.sample(whole_tree=False)
            change = (now.pss_kb - last.pss_kb) / mb
            changes.setdefault(label.split()[0], []).append(change)
            threads, files = server_facts(pid)
            print(f"{label:<16} {now.pss_kb / mb:>6.0f}MB {now.anon_pss_kb / mb:>7.0f}MB {change:>+6.0f}MB"
                  f" {threads:>8} {files:>11}", flush=True)
            last = now
        restarts = running_servers()[0].restarts
        new_threads = thread_names(pid) - threads_at_start
        engine.close()
        stop_all()
    for kind in ("new", "follow-up"):
        values = changes[kind]
        print(f"mean change per {kind}: {sum(values) / len(values):+.0f} MB over {len(values)} runs")
    print("threads the server gained since its start, by name: "
          + (", ".join(f"{name} {count}" for name, count in new_threads.most_common()) or "none"))
    if restarts:
        print(f"(the server restarted {restarts} times: the figures above are not of one server)")


def print_timeline(count: int, variant: str = "baseline") -> None:
    """Print the server's PSS through `count` concurrent new conversations on a primed server, with what happened when."""
    from plugins.agents.opencode_server import stop_all
    from tests.fakes.openai_server import is_side_request

    mb = 1024
    what, config, env = VARIANTS[variant]
    print(f"variant {variant} ({what}):")
    print(f"one warm server, primed, then {count} new conversation(s) at once (bash `sleep 5`, then the answer): PSS of")
    print("its tree every 0.1 s, shown where it moved by 10 MB or more or something happened (t from the dispatch)")
    with tempfile.TemporaryDirectory(prefix="tw-bench-timeline-") as scratch, FakeOpenAIServer() as model:
        engine, _clock = bench_engine(Path(scratch), model, "warm", config=config, env=env,
                                      server_max_rss_mb=UNLIMITED_RSS_MB)
        answer = Turn.text("Done.")
        model.script(*[Turn.bash("echo hi > hi.txt", instead_if=("hi.txt", answer))] * 2)
        engine.dispatch(Message(where=ThreadRef("bench", "S", "prime"), text="/agent prime", user_id="U",
                                user_name="bench"))
        engine.queue.wait(timeout=300)
        time.sleep(MEMORY_SETTLE_S)
        seen_requests = len(model.requests)
        model.script(*[Turn.bash("sleep 5; echo hi > hi.txt", instead_if=("hi.txt", answer))] * (2 * count))
        with agent_memory.AgentMemory() as memory:
            start = time.perf_counter()
            for n in range(count):
                engine.dispatch(Message(where=ThreadRef("bench", "S", f"T{n}"), text="/agent sleep and write",
                                        user_id="U", user_name="bench"))
            engine.queue.wait(timeout=300)
            time.sleep(MEMORY_SETTLE_S)
        engine.close()
        stop_all()
    events: list[tuple[float, str]] = []
    for body, at in list(zip(model.requests, model.request_times, strict=True))[seen_requests:]:
        kind = "title request" if is_side_request(body) else (
            "model request (tool result back)" if "hi.txt" in str(body.get("messages")) else "first model request")
        events.append((at - start, kind))
    last_pss, previous_t, previous_tool = None, float("-inf"), 0
    for sample in memory.samples:
        t, in_tool = sample.at - start, sample.by_command.get("sleep", (0, 0))[0]
        happened = [kind for at, kind in events if previous_t < at <= t]
        if in_tool != previous_tool:
            happened.append(f"{in_tool} in the tool")
        if last_pss is None or abs(sample.pss_kb - last_pss) >= 10 * mb or happened:
            print(f"{t:>6.1f}s {sample.pss_kb / mb:>6.0f}MB  anon {sample.anon_pss_kb / mb:>5.0f}MB  {', '.join(happened)}")
            last_pss = sample.pss_kb
        previous_t, previous_tool = t, in_tool
    print(f"{memory.samples[-1].at - start:>6.1f}s {memory.samples[-1].pss_kb / mb:>6.0f}MB  (last sample)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--counts", default="1,8", help="concurrent new conversations per variant (default 1,8)")
    parser.add_argument("--sequential", type=int, default=6, help="runs of each kind in the sequential part (0: skip)")
    parser.add_argument("--on", default="baseline", choices=list(VARIANTS),
                        help="the variant the timeline and sequential parts run on (default baseline)")
    parser.add_argument("--timeline", type=int, default=0, help="N: the PSS through N concurrent runs, over time")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)}")
    print(f"load average before: {load()}")
    if args.timeline:
        print_timeline(args.timeline, args.on)
        print()
    if args.sequential:
        print_sequential(args.sequential, args.on)
        print()
    if names:
        print_variants(names, tuple(int(count) for count in args.counts.split(",")))
    print(f"load average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
