"""Start-up time of the command line: seconds from spawning `python -m bot ...` to being usable.

Each command runs as a user runs it, in a fresh process on a fresh data directory:

- `chat` on a pseudo-terminal, to its prompt (`<user>> `, prompt_toolkit's), on a database
  whose schema is current (every start but the first), and on an empty one (the first start);
- `chat` piped, writing `hello`, to the bot's reply (the first `bot[...]` line);
- `route`, one input line, to the first JSON line;
- `doctor`, to its exit;
- `worker` (REDIS_URL set, against a throw-away redis-server), to its `worker ready` line on
  stderr, or, while the worker prints none, to the moment it registers itself in Redis (RQ's
  `rq:workers` set), which is when it starts listening.

A first, untimed round warms the `.pyc` caches. Run: `python bench/startup.py [-n 5]`; prints
the median, min and max of N runs as a markdown table.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.servers import free_port, wait_for_port  # noqa: E402

#: The issue's goal: `python -m bot chat` shows its prompt within 1.5 s on the 2-core machine.
CHAT_TARGET_S = 1.5
#: Runs per command unless `-n` says otherwise.
DEFAULT_RUNS = 5
#: Seconds one start may take before the bench gives up on it (a broken start, not a slow one).
START_TIMEOUT_S = 60
#: Seconds a command gets to exit after the bench has what it measures.
EXIT_TIMEOUT_S = 30
#: How long the worker is given after registering to print its ready line (see `worker_ready`).
READY_LINE_GRACE_S = 2.0
#: How often Redis is asked whether the worker has registered (RQ's own heartbeat is seconds).
REGISTRATION_POLL_S = 0.005
#: The line the worker prints when it listens (another change adds it; see the module docstring).
WORKER_READY = "worker ready"
#: The chat prompt, `session.prompt(f"{user}> ")` in adapters/console.py; prompt_toolkit draws
#: its trailing space as a cursor move, so the text on the terminal is `<user>>`.
PROMPT = re.escape(f"{getpass.getuser()}>")

#: What the worker row measured to, told under the table.
worker_endpoint: set[str] = set()


def bot_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Return the environment of one start: no tokens, keys or servers but those given."""
    dropped = ("SLACK_", "DISCORD_", "ANTHROPIC_", "REDIS_URL", "DATABASE_URL", "BOT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update({"BOT_DATA_DIR": str(data_dir), "BOT_MANIFEST": str(REPO / "manifest.yml"),
                "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def bot_command(*args: str) -> list[str]:
    """Return the argv of `python -m bot ARGS` with this interpreter."""
    return [sys.executable, "-m", "bot", *args]


def chat_prompt(env: dict[str, str]) -> float:
    """Return seconds from spawning `chat` on a pseudo-terminal to its prompt."""
    start = time.perf_counter()
    child = pexpect.spawn(sys.executable, ["-m", "bot", "chat"], env=env, cwd=str(REPO),
                          dimensions=(24, 100), encoding="utf-8", timeout=START_TIMEOUT_S)
    try:
        child.expect(PROMPT)
        elapsed = time.perf_counter() - start
        child.sendeof()
        child.expect(pexpect.EOF, timeout=EXIT_TIMEOUT_S)
    finally:
        child.close(force=True)
    return elapsed


def chat_piped(env: dict[str, str]) -> float:
    """Return seconds from spawning `chat` with `hello` on stdin to the bot's reply."""
    start = time.perf_counter()
    with subprocess.Popen(bot_command("chat"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO) as process:
        assert process.stdin and process.stdout
        process.stdin.write("hello\n")
        process.stdin.close()
        return _first_line(process, process.stdout, start, lambda line: line.startswith("bot["))


def route_line(env: dict[str, str]) -> float:
    """Return seconds from spawning `route` with one input line to its first JSON line."""
    start = time.perf_counter()
    with subprocess.Popen(bot_command("route"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO) as process:
        assert process.stdin and process.stdout
        process.stdin.write("what does a mutex do?\n")
        process.stdin.close()
        return _first_line(process, process.stdout, start, lambda line: line.startswith("{"))


def doctor_exit(env: dict[str, str]) -> float:
    """Return seconds from spawning `doctor` to its exit (whatever its checks found)."""
    start = time.perf_counter()
    subprocess.run(bot_command("doctor"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env, cwd=REPO, timeout=START_TIMEOUT_S)
    return time.perf_counter() - start


def worker_ready(env: dict[str, str]) -> float:
    """Return seconds from spawning `worker` to its ready line, or to its registration in Redis."""
    from redis import Redis

    redis = Redis.from_url(env["REDIS_URL"])
    redis.flushdb()
    ready_at: list[float] = []
    start = time.perf_counter()
    with subprocess.Popen(bot_command("worker", "--name", f"bench-{time.monotonic_ns()}"),
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=REPO) as process:
        assert process.stderr
        reader = threading.Thread(target=_watch_ready_line, args=(process.stderr, ready_at), daemon=True)
        reader.start()
        registered = None
        deadline = start + START_TIMEOUT_S
        try:
            while not ready_at and time.perf_counter() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"the worker exited with {process.returncode} before it was ready")
                if registered is None and redis.scard("rq:workers"):
                    registered = time.perf_counter()
                if registered is not None and time.perf_counter() - registered > READY_LINE_GRACE_S:
                    break
                time.sleep(REGISTRATION_POLL_S)
        finally:
            process.terminate()
            process.wait(EXIT_TIMEOUT_S)
        redis.close()
        if ready_at:
            worker_endpoint.add(f"its `{WORKER_READY}` line")
            return ready_at[0] - start
        if registered is None:
            raise RuntimeError("the worker neither printed a ready line nor registered in Redis")
        worker_endpoint.add("its registration in Redis (it printed no ready line)")
        return registered - start


def _watch_ready_line(stream, ready_at: list[float]) -> None:
    for line in stream:
        if line.startswith(WORKER_READY) and not ready_at:
            ready_at.append(time.perf_counter())


def _first_line(process: subprocess.Popen, stream, start: float, wanted: Callable[[str], bool]) -> float:
    """Return seconds from `start` to the first line that is `wanted`, then let the process exit."""
    for line in stream:
        if wanted(line):
            elapsed = time.perf_counter() - start
            stream.read()
            process.wait(EXIT_TIMEOUT_S)
            return elapsed
    raise RuntimeError(f"{process.args} exited with {process.wait()} before the line measured")


@contextmanager
def redis_server() -> Iterator[str]:
    """Run a throw-away redis-server on a free port; yield its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tw-bench-redis-") as workdir:
        process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", workdir],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(EXIT_TIMEOUT_S)


def migrated_data_dir(root: Path) -> Path:
    """Return a data directory whose database schema is current (`python -m bot migrate`)."""
    template = root / "template"
    subprocess.run(bot_command("migrate"), env=bot_env(template), cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, timeout=START_TIMEOUT_S)
    return template


def measure(name: str, run: Callable[[dict[str, str]], float], root: Path, template: Path | None,
            runs: int, **env: str) -> list[float]:
    """Return the seconds of `runs` starts, each on a fresh data directory, after an untimed one."""
    times = []
    for n in range(runs + 1):
        data_dir = root / f"{name.replace(' ', '-')}-{n}"
        if template is not None:
            shutil.copytree(template, data_dir)
        seconds = run(bot_env(data_dir, **env))
        if n:  # the first run only warms the caches
            times.append(seconds)
        shutil.rmtree(data_dir, ignore_errors=True)
    return times


def table(rows: list[tuple[str, list[float], float | None]]) -> str:
    """Return the figures as a markdown table: command, median, min, max, target."""
    lines = ["| command | median s | min s | max s | target |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, times, target in rows:
        lines.append(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | "
                     f"{f'{target:.1f} s' if target else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=DEFAULT_RUNS, help=f"runs per command (default {DEFAULT_RUNS})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tw-bench-startup-") as scratch, redis_server() as redis_url:
        root = Path(scratch)
        template = migrated_data_dir(root)
        rows = [
            ("`chat` (TTY) to its prompt", measure("chat-tty", chat_prompt, root, template, args.n), CHAT_TARGET_S),
            ("`chat` (TTY) to its prompt, first start (empty database)",
             measure("chat-first", chat_prompt, root, None, args.n), None),
            ("`chat` piped to the reply to `hello`", measure("chat-piped", chat_piped, root, template, args.n), None),
            ("`route` to the first JSON line", measure("route", route_line, root, template, args.n), None),
            ("`doctor` to its exit", measure("doctor", doctor_exit, root, template, args.n), None),
            ("`worker` (Redis) to ready", measure("worker", worker_ready, root, template, args.n,
                                                  REDIS_URL=redis_url), None),
        ]
    print(table(rows))
    print(f"\nMedian of {args.n} runs, each on a fresh data directory, after an untimed one. "
          f"The worker row measures to {' / '.join(sorted(worker_endpoint))}.")


if __name__ == "__main__":
    main()
