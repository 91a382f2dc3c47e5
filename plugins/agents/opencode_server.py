"""The warm agent: one `opencode serve` per worker process, watched, and one event reader fanning out.

    OpencodeServer(spec) ─► supervisor thread: spawn (scrubbed env, worker-scoped HOME/XDG,
        password, PR_SET_PDEATHSIG) ─► wait for /global/health ─► watchdog every few seconds:
        health hangs, RSS past agent.server_max_rss_mb, agent.server_max_runs served ─► restart
    one GET /global/event reader ─► {directory, payload} ─► the subscription of the run whose
        directory and session match (`subscribe`)
    between runs (ready, no run in progress) ─► `between_runs`: keep a workspace prepared for the
        next new conversation (`opencode_pool`)

The supervisor thread spawns every server process, so the server dies with that thread's
process (PR_SET_PDEATHSIG follows the thread that forked it). An RQ worker forks a work-horse
per job: in the horse the server is *borrowed* (`borrowed`): runs talk to it over HTTP with
an event reader of their own (threads do not survive a fork), but only the worker restarts it.
The run counters and the server's address live in shared memory, so the worker sees what its
horses did and a horse forked while the server was still starting finds it once it is ready.

The worker starts its server in the background (`start`): the worker takes jobs at once, and a
run that arrives before the server is ready waits up to `RUN_WAIT_S` (about what a cold start
costs) and otherwise takes the cold path. opencode installs `@opencode-ai/plugin` (~64 MB from
npm) into a fresh config dir on first use; the checkout installs it once (`.ci/run`, README) into
`PLUGIN_DEPS` and every server's config dir is seeded from there, so no run waits on npm.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import queue
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx2 as httpx

from bot.processes import process_alive
from plugins.agents.process_tree import descendants, kill_tree, spawn

log = logging.getLogger(__name__)

#: Basic-auth user of `opencode serve` when OPENCODE_SERVER_PASSWORD is set (PLATFORM_FACTS).
SERVER_USER = "opencode"
#: Seconds a new server gets to answer /global/health: ready ~7.6 s after spawn on 2 cores
#: (PLATFORM_FACTS, "as a server"); the margin covers a CI run sharing the cores.
READY_TIMEOUT_S = 45.0
#: Seconds a run waits for a server that is still starting before it takes the cold path: about
#: what the cold path costs to its first event (3.1-5.4 s on 2 cores, PLATFORM_FACTS).
RUN_WAIT_S = 5.0
#: Where the checkout installs the npm packages opencode wants in its config dir (`.ci/run`:
#: `npm install --save-exact --prefix .agent-runtime/opencode-config @opencode-ai/plugin@1.18.33`).
PLUGIN_DEPS = Path(__file__).resolve().parents[2] / ".agent-runtime" / "opencode-config"
#: Seconds a health check may take before the server counts as hung (issue 14: "about 5 s").
HEALTH_TIMEOUT_S = 5.0
#: Seconds between the watchdog's looks at health, RSS and the runs served.
WATCH_INTERVAL_S = 2.0
#: Seconds `opencode serve` gets after SIGTERM before SIGKILL (it once outlived 10 s: opencode_probe.md).
STOP_GRACE_S = 3.0
#: Seconds to wait for the event stream to be connected before a run posts its prompt.
READER_CONNECT_S = 5.0
#: Seconds between reconnects of the event reader after its stream broke.
READER_RETRY_S = 0.5
#: Timeouts of ordinary API calls (session create, prompt_async, abort, messages).
API_TIMEOUT = httpx.Timeout(10.0, connect=HEALTH_TIMEOUT_S)

#: Put in a subscription's queue when the server went away under the run.
SERVER_LOST = {"type": "threadwork.server_lost"}


class ServerUnavailable(Exception):
    """The warm server cannot take this run (not started, dead, hung): use the cold path."""


@dataclass(frozen=True)
class ServerSpec:
    """Everything a server is started with; two runs share a server only when these match."""

    binary: Path
    #: opencode config (JSON text) written for the server: the user's, with the bot's rules over it.
    config: str
    #: Variables beyond the scrubbed basics: offline switches and the manifest's pass_env.
    env: tuple[tuple[str, str], ...]
    #: $BOT_DATA_DIR/agent-state/server-<worker pid>: its HOME and XDG dirs.
    state_dir: Path
    max_rss_mb: int = 1500
    max_runs: int = 0


class RunLedger:
    """Runs started and in progress on the current server, in memory shared with forked horses."""

    _FORMAT = "qq"

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, struct.calcsize(self._FORMAT))  # MAP_SHARED: survives fork
        self._lock = threading.Lock()

    def read(self) -> tuple[int, int]:
        """Return (runs started since the server started, runs in progress)."""
        return struct.unpack_from(self._FORMAT, self._memory)

    def add(self, started: int = 0, active: int = 0) -> None:
        """Count a run starting (started=1, active=1) or ending (active=-1)."""
        with self._lock:
            total, running = self.read()
            struct.pack_into(self._FORMAT, self._memory, 0, total + started, max(0, running + active))

    def reset(self) -> None:
        """Start counting afresh (a new server process)."""
        with self._lock:
            struct.pack_into(self._FORMAT, self._memory, 0, 0, 0)


class SharedAddress:
    """The serving process's pid, port and password, in memory shared with forked horses."""

    _FORMAT = "qq64s"

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, struct.calcsize(self._FORMAT))  # MAP_SHARED: survives fork

    def publish(self, pid: int, port: int, password: str) -> None:
        """Say where the ready server listens (pid 0: no server ready)."""
        struct.pack_into(self._FORMAT, self._memory, 0, pid, port, password.encode())

    def read(self) -> tuple[int, int, str]:
        """Return (pid, port, password) of the ready server; pid 0 when there is none."""
        pid, port, password = struct.unpack_from(self._FORMAT, self._memory)
        return pid, port, password.rstrip(b"\0").decode()


@dataclass
class Subscription:
    """The events of one run: its directory and session, and a queue the reader fills."""

    directory: str
    session_id: str
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)


class OpencodeServer:
    """One `opencode serve` for this worker process: started lazily, watched, restarted, stopped."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.ledger = RunLedger()
        self.address = SharedAddress()
        self.owner_pid = os.getpid()
        self.process: subprocess.Popen[bytes] | None = None
        #: The pid of the serving process (also known in a forked horse, which has no Popen).
        self.pid = 0
        self.port = 0
        self.password = ""
        self.restarts = 0
        self._ready = threading.Event()
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._restart_reason = ""
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._reader_connected = threading.Event()
        self._subscribers: list[Subscription] = []
        self._generation = 0
        self._start_error = ""
        #: Called by the supervisor with the server whenever it is ready and no run is in
        #: progress (`opencode_pool.PreparedWorkspaces.keep`); None: nothing to do between runs.
        self.between_runs: Callable[[OpencodeServer], None] | None = None

    # -- the server's address -----------------------------------------------------------------
    @property
    def borrowed(self) -> bool:
        """Return True in a forked work-horse: the server belongs to the worker process."""
        return os.getpid() != self.owner_pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: httpx.Timeout = API_TIMEOUT) -> httpx.Client:
        """Return an HTTP client for the server's API (basic auth, its base URL)."""
        return httpx.Client(base_url=self.url, auth=(SERVER_USER, self.password), timeout=timeout, trust_env=False)

    # -- life --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the server in the background (the supervisor thread); return at once."""
        if self.borrowed:
            return
        with self._lock:
            if self._supervisor is None or not self._supervisor.is_alive():
                self._stopping.clear()
                self._wanted.set()
                self._supervisor = threading.Thread(target=self._supervise, name="opencode-server", daemon=True)
                self._supervisor.start()

    def ensure(self, timeout: float = RUN_WAIT_S) -> None:
        """Start the server if needed and wait until it answers; raise ServerUnavailable otherwise."""
        if self.borrowed:
            self._borrow(timeout)
            self._ensure_reader()
            return
        self.start()
        if not self._ready.wait(timeout):
            raise ServerUnavailable(self._start_error or f"the opencode server was not ready within {timeout:g} s")
        if self.process is None or self.process.poll() is not None:
            self.request_restart("it was found dead when a run started")
            raise ServerUnavailable("the opencode server is not running")
        self._ensure_reader()

    def _borrow(self, timeout: float) -> None:
        """In a horse: wait (up to `timeout`) until the worker's server is ready, and use it."""
        deadline = time.monotonic() + timeout
        while True:
            pid, port, password = self.address.read()
            if pid and process_alive(pid):
                if (pid, port) != (self.pid, self.port):
                    self.pid, self.port, self.password = pid, port, password
                    self._generation += 1
                return
            if time.monotonic() >= deadline:
                raise ServerUnavailable("the worker's opencode server is not running (yet)")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the watchdog, the reader and the server process (SIGTERM, then SIGKILL)."""
        self._stopping.set()
        self._wanted.set()
        if self._supervisor is not None and not self.borrowed:
            self._supervisor.join(STOP_GRACE_S + HEALTH_TIMEOUT_S + 2)
        self._ready.clear()

    def request_restart(self, reason: str) -> None:
        """Ask the supervisor to restart the server now (a run found it hung or gone)."""
        if self.borrowed:
            return
        self._restart_reason = reason
        self._wanted.set()

    def alive(self) -> bool:
        """Return True while the serving process exists."""
        if self.process is not None and not self.borrowed:
            return self.process.poll() is None
        return bool(self.pid) and process_alive(self.pid)

    def _supervise(self) -> None:
        """Own the server process: spawn it, watch it, restart it, stop it (runs in one thread)."""
        try:
            self._spawn()
            self._idle_work()
            while not self._stopping.is_set():
                self._wanted.wait(WATCH_INTERVAL_S)
                self._wanted.clear()
                if self._stopping.is_set():
                    break
                reason = self._restart_reason or self._why_restart()
                if reason:
                    self._restart_reason = ""
                    log.warning("restarting the opencode server (pid %s): %s", self.pid, reason)
                    self._terminate()
                    self.restarts += 1
                    self._spawn()
                self._idle_work()
        except Exception:  # boundary: the supervisor thread; runs fall back to the cold path
            log.exception("the opencode server's supervisor failed")
        finally:
            self._terminate()

    def _idle_work(self) -> None:
        """Run `between_runs` if the server is up and no run is in progress."""
        if self.between_runs is None or self._start_error or self.process is None or self.process.poll() is not None:
            return
        if self.ledger.read()[1] == 0 and not self._stopping.is_set():
            try:
                self.between_runs(self)
            except Exception:  # boundary: work between runs never takes the watchdog down
                log.exception("work between runs on the opencode server failed")

    def _why_restart(self) -> str:
        """Return why the server should be restarted now, or ""."""
        if self.process is None or self.process.poll() is not None:
            return "the server process is gone"
        if not self.healthy():
            return f"/global/health did not answer within {HEALTH_TIMEOUT_S:g} s"
        started, active = self.ledger.read()
        rss = tree_rss_mb(self.process.pid)
        if rss > self.spec.max_rss_mb and active == 0:
            return f"RSS {rss:.0f} MB > agent.server_max_rss_mb {self.spec.max_rss_mb}"
        if self.spec.max_runs and started >= self.spec.max_runs and active == 0:
            return f"served {started} runs (agent.server_max_runs)"
        return ""

    def _spawn(self) -> None:
        self._ready.clear()
        self._start_error = ""
        state = self.spec.state_dir
        env = server_environment(self.spec)
        self.password = env["OPENCODE_SERVER_PASSWORD"]
        self.port = free_port()
        argv = [str(self.spec.binary), "serve", "--hostname", "127.0.0.1", "--port", str(self.port)]
        self.process = spawn(argv, env=env, cwd=state)
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=_drain, args=(stream, state / "serve.log"), name="opencode-serve-log",
                             daemon=True).start()
        self.pid = self.process.pid
        self.ledger.reset()
        self._generation += 1
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self._stopping.is_set():
            if self.process.poll() is not None:
                self._start_error = f"opencode serve exited with status {self.process.returncode} (see {state}/serve.log)"
                break
            if self.healthy(timeout=1.0):
                self.address.publish(self.pid, self.port, self.password)
                self._ready.set()
                log.info("opencode server ready on %s (pid %s)", self.url, self.pid)
                return
            time.sleep(0.1)
        self._start_error = self._start_error or f"opencode serve was not healthy within {READY_TIMEOUT_S:g} s"
        log.warning("%s", self._start_error)
        self._ready.set()  # waiters see the failure at once rather than at their timeout

    def _terminate(self) -> None:
        process, self.process = self.process, None
        self.address.publish(0, 0, "")
        self._ready.clear()
        self._reader_connected.clear()
        if process is not None and process.poll() is None:
            # As root the server runs under `unshare --kill-child`, which ignores SIGTERM
            # (opencode_probe.md): end the tree; its bash tools die with the namespace.
            kill_tree(process)

    def healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> bool:
        """Return True if GET /global/health answers healthy within `timeout`."""
        try:
            with self.client(httpx.Timeout(timeout)) as client:
                answer = client.get("/global/health")
            return answer.status_code == 200 and bool(answer.json().get("healthy"))
        except (httpx.HTTPError, ValueError):
            return False

    # -- events ------------------------------------------------------------------------------
    def subscribe(self, directory: str, session_id: str) -> Subscription:
        """Return a subscription to the events of one session in one directory."""
        subscription = Subscription(directory, session_id)
        with self._lock:
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop routing events to a subscription."""
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def _ensure_reader(self) -> None:
        with self._lock:
            if self._reader is None or not self._reader.is_alive():
                self._reader_connected.clear()
                self._reader = threading.Thread(target=self._read_events, name="opencode-events", daemon=True)
                self._reader.start()
        if not self._reader_connected.wait(READER_CONNECT_S):
            raise ServerUnavailable("the opencode server's event stream did not connect")

    def _read_events(self) -> None:
        """Read GET /global/event for as long as this process lives, fanning events out."""
        while not self._stopping.is_set():
            generation = self._generation
            try:
                with self.client(httpx.Timeout(None, connect=HEALTH_TIMEOUT_S)) as client, \
                        client.stream("GET", "/global/event") as stream:
                    stream.raise_for_status()
                    self._reader_connected.set()
                    for line in stream.iter_lines():
                        if line.startswith("data:"):
                            self._route(line[5:].strip())
            except httpx.HTTPError as exc:
                log.info("opencode event stream ended: %s", exc)
            self._reader_connected.clear()
            self._lose_all()
            if self.borrowed and not self.alive():
                return
            self._stopping.wait(READER_RETRY_S)
            if generation == self._generation and not self.alive() and self.borrowed:
                return

    def _route(self, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        payload = event.get("payload") or {}
        directory = str(event.get("directory") or "")
        session_id = session_of(payload)
        with self._lock:
            targets = [s for s in self._subscribers if s.session_id == session_id and s.directory == directory]
        for subscription in targets:
            subscription.events.put(payload)

    def _lose_all(self) -> None:
        with self._lock:
            targets = list(self._subscribers)
        for subscription in targets:
            subscription.events.put(SERVER_LOST)


def session_of(payload: dict[str, Any]) -> str:
    """Return the session id a server event is about ("" when it names none)."""
    properties = payload.get("properties") or {}
    if properties.get("sessionID"):
        return str(properties["sessionID"])
    for key in ("part", "info"):
        inner = properties.get(key) or {}
        if inner.get("sessionID"):
            return str(inner["sessionID"])
    return ""


def directory_header(directory: Path | str) -> dict[str, str]:
    """Return the header naming a request's directory (URI-encoded; `?directory=` is decoded twice)."""
    return {"x-opencode-directory": quote(str(directory), safe="")}


def server_environment(spec: ServerSpec) -> dict[str, str]:
    """Return the server's environment: the cold path's basics, worker-scoped HOME/XDG, a fresh password."""
    from plugins.agents.cli_runner import BASE_ENV, XDG_DIRS

    env = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
    home = spec.state_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    for name in XDG_DIRS:
        path = spec.state_dir / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    seed_plugin_deps(spec.state_dir / "xdg_config_home" / "opencode")
    config = spec.state_dir / "opencode.json"
    config.write_text(spec.config, encoding="utf-8")
    env.update(dict(spec.env))
    env["OPENCODE_CONFIG"] = str(config)
    env["OPENCODE_SERVER_PASSWORD"] = secrets.token_urlsafe(24)
    return env


def seed_plugin_deps(config_dir: Path, source: Path = PLUGIN_DEPS) -> bool:
    """Give opencode's config dir the npm packages installed with the checkout; return whether it has them.

    Hard links where the file system allows (the files are only read), copies elsewhere.
    """
    if (config_dir / "node_modules").is_dir():
        return True
    if not (source / "node_modules").is_dir():
        log.warning("%s is missing: opencode will fetch @opencode-ai/plugin from npm on first use (run .ci/run's "
                    "npm step, see the README)", source)
        return False

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(source / name, config_dir / name)
    shutil.copytree(source / "node_modules", config_dir / "node_modules", symlinks=True, copy_function=link,
                    dirs_exist_ok=True)
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """Return the resident memory of a process and its descendants in MB (0 when gone)."""
    total = 0
    for member in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def serving_pid(pid: int) -> int:
    """Return the pid of `opencode serve` itself: under `unshare` it is the wrapper's child."""
    for member in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            if b"serve" in Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")[1:3]:
                return member
    return pid


def _drain(stream: IO[bytes] | None, path: Path) -> None:
    """Append what the server prints to its log file (an unread pipe would stall it)."""
    if stream is None:
        return
    with path.open("ab") as log_file:
        for line in stream:
            log_file.write(line)
            log_file.flush()


def kill(pid: int) -> None:
    """SIGKILL a process if it exists (tests and the bench simulate a dead server with it)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


_SERVERS: dict[ServerSpec, OpencodeServer] = {}
_SERVERS_LOCK = threading.Lock()


def server_for(spec: ServerSpec) -> OpencodeServer:
    """Return this process's server for the spec (made once; started by its first `ensure`)."""
    with _SERVERS_LOCK:
        server = _SERVERS.get(spec)
        if server is None:
            server = _SERVERS[spec] = OpencodeServer(spec)
        return server


def running_servers() -> list[OpencodeServer]:
    """Return the servers this process made."""
    with _SERVERS_LOCK:
        return list(_SERVERS.values())


def stop_all() -> None:
    """Stop every server this process started (worker exit, test teardown)."""
    with _SERVERS_LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for server in servers:
        if not server.borrowed:
            server.stop()


def _after_fork_in_child() -> None:
    """Forget the threads a fork did not copy: a horse re-connects its own event reader."""
    for server in running_servers():
        server._lock = threading.Lock()
        server._reader = None
        server._reader_connected = threading.Event()
        server._subscribers = []


os.register_at_fork(after_in_child=_after_fork_in_child)
