"""Agent runs: latency to visible progress, edits against events, memory; cold run vs warm server.

Everything is real: the pinned opencode binary, driven by a scripted OpenAI-compatible model on
127.0.0.1 (tests/fakes/openai_server.py), through Threadwork's engine and in-process worker.
Run: `python bench/agent_runs.py [-n 3]` (needs `npm install` for the binary).

Part 1 (through the engine, cold `opencode run` per task, as the bot runs it): time from the
request's dispatch to the status message, from the run job's enqueue to the first status
edit ("running") and to the first agent event, status edits against agent events per run, and
the peak RSS of the agent's process tree.

Part 2 (the CLI alone): a cold `opencode run` per task against a warm `opencode serve` per
worker with `run --attach`, timing the first event and the whole run, and checking whether the
run's final text arrives at all.

Part 2b (`--warm` runs only this): cold against warm through the engine, in one run: per mode,
a new conversation and then a follow-up in it, timing enqueue -> first agent event and the whole
short run, and where the time before the first event goes (the agent handed the run after the
workspace and recall, the model's first request); then the agent's memory with 1, 4 and 8
concurrent new conversations, each count on a fresh engine and server (`concurrent_memory`):
PSS of the warm server's process tree or of the cold runs' trees, sampled during the runs, idle,
peak and after, per run and per extra run, with the RSS sums beside it (bench/agent_memory.py).
`--memory-only` runs only that part. The machine's load is printed before and after.
`bench/opencode_memory.py` measures where the warm server's memory goes.

Part 3 (`--compare` runs only this): both agents, cold, one CLI start per task with the same
script shape (write a file, run it, answer): opencode against the chat-completions endpoint,
Codex (`codex exec --json`, its workspace-write sandbox on) against the Responses endpoint of
the same fake. Time to the first event line, the whole short run, and the peak RSS of the tree.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import agent_memory  # noqa: E402
from bench.agent_memory import MemoryFigure  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.engine import Engine, set_current  # noqa: E402
from bot.hookspecs import hookimpl  # noqa: E402
from bot.runs import RUN_JOB  # noqa: E402
from bot.types import Attachment, Message, Reply, ThreadRef  # noqa: E402
from plugins.agents import codex  # noqa: E402
from tests.fakes.openai_fixtures import OPENCODE_BIN, make_opencode_env  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer, Turn  # noqa: E402
from tests.support.servers import free_port, wait_for_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CODEX_BIN = REPO / "node_modules" / ".bin" / "codex"
FIRST_PROGRESS_TARGET_S = 1.0
#: Issue 14's targets for the warm server: enqueue -> first agent event, p50.
WARM_FOLLOW_UP_TARGET_S = 0.3
WARM_NEW_TARGET_S = 1.5
#: Issue 14's target for memory: what each extra concurrent run adds to the worker's tree.
WARM_EXTRA_RUN_TARGET_MB = 120



def record_run_enqueues(engine: Engine) -> list[float]:
    """Return a list that gets the perf_counter time of every agent-run job the engine enqueues."""
    times: list[float] = []
    enqueue = engine.queue.enqueue

    def timed_enqueue(func, *args, **kwargs):
        if func == RUN_JOB:
            times.append(time.perf_counter())
        return enqueue(func, *args, **kwargs)

    engine.queue.enqueue = timed_enqueue  # type: ignore[method-assign]
    return times

def script() -> list[Turn]:
    return [Turn.write("hello.py", "print('hi')\n"), Turn.bash("python3 hello.py"), Turn.text("Wrote and ran hello.py.")]


class TimedThread:
    """A chat port that timestamps the status message's post and edits."""

    platform = "bench"

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []

    def post(self, where: ThreadRef, reply: Reply) -> str:
        self.events.append((time.perf_counter(), "post", reply.text))
        return f"m{len(self.events)}"

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self.events.append((time.perf_counter(), "edit", reply.text))

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        return "f"


class EventClock:
    """A plugin that timestamps agent events as the engine reports them."""

    def __init__(self) -> None:
        self.times: list[float] = []

    @hookimpl
    def report_progress(self, event) -> None:
        self.times.append(time.perf_counter())


class TreeMemory(agent_memory.Sampler):
    """Samples the summed RSS of every process below this one (and, with include_self, its own), keeping the peak."""

    def __init__(self, include_self: bool = False) -> None:
        super().__init__(interval=0.05)
        self.include_self = include_self
        self.peak_kb = 0

    def take(self) -> None:
        from plugins.agents.process_tree import descendants

        total = 0
        for pid in [*([os.getpid()] if self.include_self else []), *descendants(os.getpid())]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        self.peak_kb = max(self.peak_kb, total)


def through_engine(runs: int) -> list[dict[str, float]]:
    results = []
    for n in range(runs):
        with tempfile.TemporaryDirectory(prefix="tw-bench-agent-") as scratch, FakeOpenAIServer(script()) as model:
            root = Path(scratch)
            config = root / "opencode.json"
            model.write_opencode_config(config)
            settings = Settings.from_env({"BOT_DATA_DIR": str(root / "data"), "OPENCODE_CONFIG": str(config),
                                          "BOT_MANIFEST": str(REPO / "manifest.yml")})
            engine = Engine.from_settings(settings, load_entrypoints=False)
            set_current(engine)
            port, clock = TimedThread(), EventClock()
            engine.attach_port(port)
            engine.pm.register(clock, name="bench-clock")
            enqueued = record_run_enqueues(engine)
            with TreeMemory() as memory:
                start = time.perf_counter()
                engine.dispatch(Message(where=ThreadRef("bench", "C", f"T{n}"), text="/agent write hello.py",
                                        user_id="U", user_name="bench"))
                engine.queue.wait(timeout=300)
            engine.close()
            status_posted = next(t for t, kind, _ in port.events if kind == "post")
            first_running = next(t for t, kind, text in port.events if kind == "edit" and "running" in text)
            status_edits = sum(1 for _, kind, text in port.events if kind == "edit" and "Agent run" in text)
            results.append({
                "dispatch_to_status_s": status_posted - start,
                "enqueue_to_first_edit_s": first_running - enqueued[0],
                "enqueue_to_first_event_s": clock.times[0] - enqueued[0],
                "events": len(clock.times),
                "edits": status_edits,
                "peak_rss_mb": memory.peak_kb / 1024,
            })
    return results


def bench_engine(root: Path, model: FakeOpenAIServer, mode: str, threads: int = 4,
                 config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 server_max_rss_mb: int | None = None) -> tuple[Engine, EventClock]:
    """Return an engine on a scratch data dir running opencode in `mode` in-process, and its event clock.

    In warm mode the server is started as a worker starts it, and waited for: the figures are
    of a worker that has been up for a while. `config` is laid over the scripted model's opencode
    config and `env` is passed to the agent (the manifest's pass_env): the memory investigation
    measures opencode's own options with them. `server_max_rss_mb` replaces agent.server_max_rss_mb.
    """
    from bot.queue import InProcessQueue
    from plugins.agents.opencode_server import READY_TIMEOUT_S, running_servers

    config_path = root / "opencode.json"
    model.write_opencode_config(config_path, **(config or {}))
    settings = Settings.from_env({"BOT_DATA_DIR": str(root / "data"), "OPENCODE_CONFIG": str(config_path),
                                  "BOT_MANIFEST": str(REPO / "manifest.yml"), **(env or {})})
    engine = Engine.from_settings(settings, queue=InProcessQueue(workers=threads), load_entrypoints=False)
    engine.manifest.agent.mode = mode  # type: ignore[assignment]
    engine.manifest.agent.pass_env = [*engine.manifest.agent.pass_env, *(env or {})]
    if server_max_rss_mb is not None:
        engine.manifest.agent.server_max_rss_mb = server_max_rss_mb
    set_current(engine)
    engine.attach_port(TimedThread())
    clock = EventClock()
    engine.pm.register(clock, name="bench-clock")
    if mode == "warm":
        engine.agents["opencode"].warm_up()  # type: ignore[attr-defined]
        for server in running_servers():
            server.ensure(READY_TIMEOUT_S)
    return engine, clock


class RunPhases:
    """Times when the agent is handed a run (workspace prepared, memories recalled) in this process."""

    def __init__(self, engine: Engine) -> None:
        self.handed: list[float] = []
        agent = engine.agents["opencode"]
        run = agent.run

        def timed_run(task, on_event, cancel, *args, **kwargs):
            self.handed.append(time.perf_counter())
            return run(task, on_event, cancel, *args, **kwargs)

        agent.run = timed_run  # type: ignore[method-assign]


#: The runs timed per round: a new conversation on a worker that has been idle a few seconds (warm:
#: a prepared workspace is waited for), a follow-up in it, and a second new conversation at once
#: after that (the worker has had no time to prepare one).
RUN_KINDS = ("new", "follow", "next")
#: Seconds the bench waits for the warm server to prepare a workspace (~1-2 s after a run).
PREPARE_WAIT_S = 30


def wait_for_prepared_workspace(root: Path) -> None:
    """Wait until the warm server has a workspace prepared for the next new conversation."""
    deadline = time.monotonic() + PREPARE_WAIT_S
    while not list((root / "data" / "workspaces" / ".prepared").glob("*/*.ready")):
        if time.monotonic() > deadline:
            raise SystemExit(f"no workspace was prepared within {PREPARE_WAIT_S} s")
        time.sleep(0.05)


def engine_modes(runs: int) -> dict[str, dict[str, list[float]]]:
    """Return per-mode figures of new-conversation and follow-up runs through the engine."""
    from plugins.agents.opencode_server import stop_all

    results: dict[str, dict[str, list[float]]] = {}
    for mode in ("cold", "warm"):
        rows: dict[str, list[float]] = {f"{kind}_{figure}": [] for kind in RUN_KINDS
                                        for figure in ("first_s", "run_s", "handed_s", "model_s")}
        with tempfile.TemporaryDirectory(prefix=f"tw-bench-{mode}-") as scratch, FakeOpenAIServer() as model:
            engine, clock = bench_engine(Path(scratch), model, mode)
            phases = RunPhases(engine)
            enqueued = record_run_enqueues(engine)
            for n in range(runs):
                for kind in RUN_KINDS:
                    thread = f"T{n}" if kind != "next" else f"T{n}-next"
                    if kind == "new" and mode == "warm":
                        wait_for_prepared_workspace(Path(scratch))
                    model.script(Turn.bash("echo hi > hi.txt"), Turn.text("Wrote hi.txt."))
                    seen, asked = len(clock.times), len(model.request_times)
                    engine.dispatch(Message(where=ThreadRef("bench", "C", thread), text=f"/agent {kind} task",
                                            user_id="U", user_name="bench"))
                    engine.queue.wait(timeout=300)
                    end = time.perf_counter()
                    start = enqueued[-1]
                    rows[f"{kind}_first_s"].append(clock.times[seen] - start)
                    rows[f"{kind}_run_s"].append(end - start)
                    rows[f"{kind}_handed_s"].append(phases.handed[-1] - start)
                    # The model's clock is time.monotonic(); perf_counter shares its origin on Linux.
                    rows[f"{kind}_model_s"].append(model.request_times[asked] - start)
            workspaces = [p for p in (Path(scratch) / "data" / "workspaces").iterdir() if p.name.isdigit()]
            rows["prepared"] = [sum(p.is_symlink() for p in workspaces), len(workspaces)]  # links into the pool
            engine.close()
            stop_all()
        results[mode] = rows
    return results


#: Seconds each run's tool sleeps: long enough that all 8 concurrent runs are inside their tool at
#: once, cold and warm, on 2 busy cores (the bench prints how many were: "in tool at once").
MEMORY_TOOL_SLEEP_S = 15
#: Seconds the agent's side is left alone before "idle" and after the runs before "after".
MEMORY_SETTLE_S = 2.0
#: agent.server_max_rss_mb while memory is measured: no restart empties the server between samples.
UNLIMITED_RSS_MB = 1_000_000


def concurrent_memory(counts: tuple[int, ...] = (1, 4, 8), modes: tuple[str, ...] = ("cold", "warm"),
                      config: dict[str, Any] | None = None,
                      env: dict[str, str] | None = None) -> dict[str, dict[int, MemoryFigure]]:
    """Return, per mode and number N of concurrent new conversations, the agent side's memory.

    The agent's side is the warm server's process tree, or the cold `opencode run` trees with
    their tools (bench/agent_memory.py), as PSS: the bench process, which hosts the engine and
    the scripted model, is not the agent's memory, and a sum of RSS counts shared pages once per
    process. It is sampled every 0.1 s from the first dispatch until every run has ended.

    Each count gets a fresh engine (and, warm, a fresh server), so no earlier count's directories
    are counted. A warm server first serves one short run in a directory of its own, as a worker's
    server has before, and is measured idle after it ("started" is before it): a server's first
    run leaves it about 200 MB larger, a later new conversation about 40 MB (bench/opencode_memory.py
    --sequential), so the first run's share is the server's, not a run's. Cold, idle is zero.

    Two figures per run, both printed. (peak - idle) / N: what the runs took on average, the
    first included. (peak_N - peak_1) / (N - 1), "per extra run": what one more concurrent
    conversation adds once one is running; the issue's target ("each extra concurrent run")
    is this one, and it stays free of whatever the first run still pays once per server.

    Each run is one new conversation whose model asks for `sleep; echo` and then answers. Each
    model answer depends on the run's own history (the turn's `instead_if`), so concurrent runs
    cannot take each other's turns.
    """
    from plugins.agents.opencode_server import running_servers, stop_all

    answer = Turn.text("Done.")
    results: dict[str, dict[int, MemoryFigure]] = {mode: {} for mode in modes}
    for mode in modes:
        for count in counts:
            with tempfile.TemporaryDirectory(prefix=f"tw-bench-mem-{mode}-") as scratch, FakeOpenAIServer() as model:
                # The watchdog restarts a server past agent.server_max_rss_mb once it is idle: that
                # would empty the "after" figure, so the bench lifts it (restarts are still counted).
                engine, _clock = bench_engine(Path(scratch), model, mode, threads=max(counts), config=config, env=env,
                                              server_max_rss_mb=UNLIMITED_RSS_MB)
                time.sleep(MEMORY_SETTLE_S)  # let the server settle after its start
                started = agent_memory.sample()
                if mode == "warm":
                    model.script(*[Turn.bash("echo hi > hi.txt", instead_if=("hi.txt", answer))] * 2)
                    engine.dispatch(Message(where=ThreadRef("bench", "M", "prime"), text="/agent write",
                                            user_id="U", user_name="bench"))
                    engine.queue.wait(timeout=300)
                    time.sleep(MEMORY_SETTLE_S)
                idle = agent_memory.sample()
                answered_before = answered(model)
                model.script(*[Turn.bash(f"sleep {MEMORY_TOOL_SLEEP_S}; echo hi > hi.txt", timeout_ms=120_000,
                                         instead_if=("hi.txt", answer))] * (2 * count))
                with agent_memory.AgentMemory() as memory:
                    begun = time.perf_counter()
                    for n in range(count):
                        engine.dispatch(Message(where=ThreadRef("bench", "M", f"T{n}"), text="/agent sleep and write",
                                                user_id="U", user_name="bench"))
                    engine.queue.wait(timeout=600)
                    wall = time.perf_counter() - begun
                time.sleep(MEMORY_SETTLE_S)
                results[mode][count] = MemoryFigure(
                    started=started, idle=idle, peak=memory.peak, after=agent_memory.sample(),
                    peak_rss_kb=memory.peak_rss_kb, peak_whole_tree=memory.peak_whole_tree, wall_s=wall,
                    overlap=max(s.by_command.get("sleep", (0, 0))[0] for s in memory.samples),
                    answered=answered(model) - answered_before,
                    restarts=sum(server.restarts for server in running_servers()), samples=len(memory.samples),
                    shared_samples=memory.shared_samples)
                engine.close()
                stop_all()
    return results


def answered(model: FakeOpenAIServer) -> int:
    """Return how many model requests so far carried a tool's result back (one per finished run here)."""
    return sum(1 for body in model.scripted_requests if "hi.txt" in json.dumps(body.get("messages")))


def print_memory(figures: dict[str, dict[int, MemoryFigure]]) -> None:
    """Print the agent side's memory per mode and N (PSS), then the RSS figures beside the old measure."""
    mb = 1024
    print("memory of the agent's side (the warm server's process tree, or the cold `opencode run` trees), PSS,")
    print(f"with N concurrent new conversations, each tool call a `sleep {MEMORY_TOOL_SLEEP_S}`")
    print(f"{'mode':<6} {'N':>3} {'started':>8} {'idle':>8} {'peak':>8} {'after':>8} {'(peak-idle)/N':>14}"
          f" {'per extra run':>14} {'in tool at once':>16} {'all N done in':>14}")
    for mode, by_count in figures.items():
        one = by_count.get(1)
        for count, f in by_count.items():
            extra = (f"{(f.peak.pss_kb - one.peak.pss_kb) / mb / (count - 1):>12.0f}MB"
                     if one is not None and count > 1 else f"{'-':>14}")
            print(f"{mode:<6} {count:>3} {f.started.pss_kb / mb:>6.0f}MB {f.idle.pss_kb / mb:>6.0f}MB"
                  f" {f.peak.pss_kb / mb:>6.0f}MB {f.after.pss_kb / mb:>6.0f}MB"
                  f" {(f.peak.pss_kb - f.idle.pss_kb) / mb / count:>12.0f}MB {extra}"
                  f" {f.overlap:>12}/{count:<3} {f.wall_s:>13.1f}s")
    print(f"target (warm): each extra concurrent run < {WARM_EXTRA_RUN_TARGET_MB} MB (issue 14); per extra run ="
          " (peak_N - peak_1) / (N - 1); warm idle = after one earlier run, started = before it")
    print("RSS beside it: the agent's side summed (counts shared pages once per process), and the old measure")
    print("(this process, which hosts the engine and the scripted model, plus everything below it)")
    print(f"{'mode':<6} {'N':>3} {'agent RSS peak':>15} {'per extra run':>14} {'old: tree RSS peak':>19}"
          f" {'per extra run':>14}")
    for mode, by_count in figures.items():
        one = by_count.get(1)
        for count, f in by_count.items():
            old_peak = f.peak_whole_tree.whole_tree_rss_kb
            extra = extra_old = f"{'-':>14}"
            if one is not None and count > 1:
                extra = f"{(f.peak_rss_kb - one.peak_rss_kb) / mb / (count - 1):>12.0f}MB"
                extra_old = f"{(old_peak - one.peak_whole_tree.whole_tree_rss_kb) / mb / (count - 1):>12.0f}MB"
            print(f"{mode:<6} {count:>3} {f.peak_rss_kb / mb:>13.0f}MB {extra} {old_peak / mb:>17.0f}MB {extra_old}")
    print("at the peak, per process (PSS), and the anonymous part of the agent side's PSS:")
    for mode, by_count in figures.items():
        for count, f in by_count.items():
            warnings = [f"only {f.answered}/{count} runs got their tool's result"] if f.answered != count else []
            warnings += [f"{f.restarts} server restarts"] if f.restarts else []
            print(f"{mode:<6} {count:>3} anon {f.peak.anon_pss_kb / mb:.0f} MB: {agent_memory.describe(f.peak.by_command)}"
                  f"{' (' + ', '.join(warnings) + ')' if warnings else ''}")
    print("at the old measure's peak, the tree's processes outside the agent's side (RSS; python = this process),")
    print("and the agent's processes that shared their parent's memory (a spawn before its exec; counted once here):")
    for mode, by_count in figures.items():
        for count, f in by_count.items():
            old_peak = f.peak_whole_tree
            print(f"{mode:<6} {count:>3} {agent_memory.describe(old_peak.others_rss)}; sharing {old_peak.shared} x"
                  f" {old_peak.shared_rss_kb / mb:.0f} MB RSS (such a process in {f.shared_samples} of {f.samples}"
                  " samples)")


def print_modes(runs: int, memory: bool = True) -> None:
    """Print cold against warm through the engine (medians), then memory with concurrent conversations."""
    print(f"load average before: {load()}")
    rows = engine_modes(runs)
    print(f"cold `opencode run` against the warm server, through the engine, median of {runs} (p50)")
    print(f"{'mode':<6} {'new: first event':>17} {'new: run':>9} {'follow-up: first event':>23} {'follow-up: run':>15}"
          f" {'new at once: first event':>25}")
    for mode, row in rows.items():
        p50 = {key: statistics.median(values) for key, values in row.items() if key != "prepared"}
        print(f"{mode:<6} {p50['new_first_s']:>16.2f}s {p50['new_run_s']:>8.2f}s"
              f" {p50['follow_first_s']:>22.2f}s {p50['follow_run_s']:>14.2f}s {p50['next_first_s']:>24.2f}s")
    print("new: on a worker idle for a few seconds (warm: once a prepared workspace is ready); new at once: a new "
          "conversation right after a run (no time to prepare one)")
    for mode, row in rows.items():
        links, total = row["prepared"]
        print(f"{mode}: {links} of {total} new conversations started in a prepared workspace")
    print("where a run's time goes before its first event (p50, from the run's enqueue):")
    print(f"{'mode':<6} {'kind':<7} {'agent handed the run':>21} {'first model request':>20} {'first event':>12}")
    for mode, row in rows.items():
        for kind in RUN_KINDS:
            print(f"{mode:<6} {kind:<7} {statistics.median(row[f'{kind}_handed_s']):>20.2f}s"
                  f" {statistics.median(row[f'{kind}_model_s']):>19.2f}s"
                  f" {statistics.median(row[f'{kind}_first_s']):>11.2f}s")
    print(f"targets (warm): follow-up first event p50 < {WARM_FOLLOW_UP_TARGET_S} s, new conversation "
          f"< {WARM_NEW_TARGET_S} s (issue 14)")
    print(f"load average after: {load()}")
    if not memory:
        return
    print()
    print(f"load average before: {load()}")
    print_memory(concurrent_memory())
    print(f"load average after: {load()}")


def load() -> str:
    """Return the machine's load averages (1, 5, 15 min): the figures depend on them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cli_runs(runs: int, warm: bool) -> list[dict[str, float]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="tw-bench-cli-") as scratch, FakeOpenAIServer() as model:
        env, workspace = make_opencode_env(Path(scratch), model)
        server = None
        attach: list[str] = []
        if warm:
            port = free_port()
            server = subprocess.Popen([str(OPENCODE_BIN), "serve", "--port", str(port), "--hostname", "127.0.0.1"],
                                      env=env, cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            wait_for_port(port, 60)
            attach = ["--attach", f"http://127.0.0.1:{port}"]
        try:
            for _ in range(runs):
                model.reset(script())
                with TreeMemory() as memory:
                    start = time.perf_counter()
                    process = subprocess.Popen(
                        [str(OPENCODE_BIN), "run", "--format", "json", "--dir", str(workspace), *attach, "--",
                         "write hello.py and run it"],
                        env=env, cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
                    first = None
                    texts = []
                    assert process.stdout is not None
                    for line in process.stdout:
                        first = first or time.perf_counter()
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        if event.get("type") == "text":
                            texts.append(event["part"]["text"])
                    process.wait()
                    end = time.perf_counter()
                results.append({"first_event_s": (first or end) - start, "run_s": end - start,
                                "final_text": float("Wrote and ran hello.py." in " ".join(texts)),
                                "peak_rss_mb": memory.peak_kb / 1024})
        finally:
            if server is not None:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
    return results


def codex_script() -> list[Turn]:
    return [Turn.exec_command("printf 'print(1)\\n' > hello.py"), Turn.exec_command("python3 hello.py"),
            Turn.text("Wrote and ran hello.py.")]


def timed_cli(argv: list[str], env: dict[str, str], cwd: Path, final_text: str) -> dict[str, float]:
    """Run one cold CLI start to its end; return first event, whole run, final text seen, peak RSS."""
    with TreeMemory() as memory:
        start = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        first = None
        seen = False
        assert process.stdout is not None
        for line in process.stdout:
            first = first or time.perf_counter()
            seen = seen or final_text.encode() in line
        process.wait()
        end = time.perf_counter()
    return {"first_event_s": (first or end) - start, "run_s": end - start, "final_text": float(seen),
            "peak_rss_mb": memory.peak_kb / 1024}


def compare_agents(runs: int) -> dict[str, list[dict[str, float]]]:
    """Return per-run figures of a cold short run of each agent, against the same scripted fake."""
    results: dict[str, list[dict[str, float]]] = {"opencode": [], "codex": []}
    with tempfile.TemporaryDirectory(prefix="tw-bench-compare-") as scratch, FakeOpenAIServer() as model:
        root = Path(scratch)
        env, workspace = make_opencode_env(root / "opencode", model)
        codex_home, codex_ws = root / "codex-home", root / "codex-ws"
        codex_ws.mkdir()
        model.write_codex_config(codex_home)
        user = codex.read_user_config(codex_home / "config.toml")
        (codex_home / "config.toml").write_text(codex.to_toml(codex.laid_over(user)))
        codex_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root / "opencode" / "home"),
                     "CODEX_HOME": str(codex_home), **codex.QUIET_ENV}
        for _ in range(runs):
            model.reset(script())
            results["opencode"].append(timed_cli(
                [str(OPENCODE_BIN), "run", "--format", "json", "--dir", str(workspace), "--", "write hello.py and run it"],
                env, workspace, "Wrote and ran hello.py."))
            model.reset(codex_script())
            results["codex"].append(timed_cli(
                [str(CODEX_BIN), "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write",
                 "-C", str(codex_ws), "--", "write hello.py and run it"], codex_env, codex_ws, "Wrote and ran hello.py."))
    return results


def print_comparison(runs: int) -> None:
    """Print the two agents side by side (medians)."""
    rows = compare_agents(runs)
    print(f"opencode vs Codex, cold CLI start per task (write, run, answer), median of {runs}")
    print(f"{'agent':<10} {'first event':>12} {'whole run':>10} {'final text':>11} {'peak RSS':>9}")
    for name, agent_rows in rows.items():
        arrived = sum(int(row["final_text"]) for row in agent_rows)
        print(f"{name:<10} {median(agent_rows, 'first_event_s'):>11.2f}s {median(agent_rows, 'run_s'):>9.2f}s"
              f" {arrived:>5}/{len(agent_rows):<5} {median(agent_rows, 'peak_rss_mb'):>7.0f}MB")


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument("--compare", action="store_true", help="only part 3: opencode vs Codex, side by side")
    parser.add_argument("--warm", action="store_true", help="only part 2b: cold against warm through the engine")
    parser.add_argument("--no-memory", action="store_true", help="with --warm: skip the 1/4/8 concurrent runs")
    parser.add_argument("--memory-only", action="store_true", help="with --warm: only the 1/4/8 concurrent runs")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the engine's and alembic's INFO lines would bury the tables
    for binary in (OPENCODE_BIN, CODEX_BIN):
        if not binary.exists():
            raise SystemExit(f"no {binary.name} binary at {binary}: run `npm install` in {REPO}")
    if args.compare:
        print_comparison(args.n)
        return 0
    if args.warm and args.memory_only:
        print(f"load average before: {load()}")
        print_memory(concurrent_memory())
        print(f"load average after: {load()}")
        return 0
    if args.warm:
        print_modes(args.n, memory=not args.no_memory)
        return 0

    engine_rows = through_engine(args.n)
    print(f"agent runs through the engine (cold `opencode run` per task), median of {args.n}")
    print(f"{'measure':<44} {'value':>10}")
    for label, key, unit in (
        ("dispatch -> status message posted", "dispatch_to_status_s", "s"),
        ("run enqueued -> first status edit (running)", "enqueue_to_first_edit_s", "s"),
        ("run enqueued -> first agent event", "enqueue_to_first_event_s", "s"),
        ("agent events per run", "events", ""),
        ("status edits per run", "edits", ""),
        ("peak RSS of the agent's process tree", "peak_rss_mb", "MB"),
    ):
        print(f"{label:<44} {median(engine_rows, key):>9.2f}{unit}")
    first_edit = median(engine_rows, "enqueue_to_first_edit_s")
    print(f"first visible progress {first_edit:.3f} s after enqueue (target < {FIRST_PROGRESS_TARGET_S:.0f} s)")

    cold, warm = cli_runs(args.n, warm=False), cli_runs(args.n, warm=True)
    print()
    print(f"opencode CLI alone, median of {args.n}")
    print(f"{'mode':<34} {'first event':>12} {'whole run':>10} {'final text':>11} {'peak RSS':>9}")
    for label, rows in (("cold `run` per task", cold), ("warm `serve` + `run --attach`", warm)):
        arrived = sum(int(row["final_text"]) for row in rows)
        print(f"{label:<34} {median(rows, 'first_event_s'):>11.2f}s {median(rows, 'run_s'):>9.2f}s"
              f" {arrived:>5}/{len(rows):<5} {median(rows, 'peak_rss_mb'):>7.0f}MB")
    print("(peak RSS counts every process the mode needs: the warm row includes the server)")
    print()
    print_modes(args.n)
    print()
    print_comparison(args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
