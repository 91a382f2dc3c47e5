"""Errbot's in-process test backend as a benchmark workload.

The comparison benchmark drives our engine and Errbot (6.2.x) with the same
messages in one process and times every message on its own. This module owns the
Errbot side: it starts ``errbot.backends.test.TestBot`` once, with the plugin in
``bench/errbot_plugins/`` (``!echo <text>`` and an un-prefixed ``hi|hello``
pattern), and then hands messages over one at a time::

    wl = ErrbotWorkload(tmp_dir)
    try:
        reply = wl.send("!echo hello")   # -> "hello"
        reply = wl.send("hello there")   # -> "Hello!"
    finally:
        wl.close()

``send`` is just the test backend's ``push_message`` followed by a blocking
``pop_message``: the text goes onto the backend's incoming queue, Errbot's
serve thread dispatches it (command filters, then with ``BOT_ASYNC`` the
command runs on Errbot's thread pool), the reply lands on the outgoing queue.

Errbot is isolated from the rest of the process as far as the backend allows:

* logging: the ``errbot`` logger (Errbot's own modules and every plugin's
  ``self.log``) is sent to ``<tmp_dir>/errbot/errbot.log`` at WARNING and does
  not propagate; whatever Errbot adds to the *root* logger while it starts (a
  ``basicConfig`` stderr handler, its coloured console handler, two file
  handlers, a different root level) is undone before ``__init__`` returns;
* network: no plugin index is configured (``BOT_PLUGIN_INDEXES = ()``),
  plugin requirements are never pip-installed (``AUTOINSTALL_DEPS = False``), and
  the core plugins that can open connections (VersionChecker, Webserver) are not
  loaded;
* threads: ``close()`` stops the serve thread and both of Errbot's thread
  pools (commands and flows); all of them are daemon threads anyway, so a
  forgotten ``close()`` cannot keep the interpreter alive;
* files: everything Errbot writes goes under ``<tmp_dir>/errbot/``.

Only one instance should be alive at a time (Errbot keeps some global state, e.g.
the Flask app of its web views, which ``close()`` resets).

Run ``python bench/errbot_workload.py`` for a self-check: 1,000 messages
alternating ``!echo hello`` / ``hello there``, every reply verified, throughput
and p50/p99 latency printed.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import time
from collections.abc import Mapping
from queue import Empty
from typing import Any

__all__ = ["ErrbotWorkload", "PLUGIN_DIR", "PLUGIN_NAME", "DEFAULT_CORE_PLUGINS"]

#: Directory holding the benchmark plugin (benchplug.plug + benchplug.py).
PLUGIN_DIR = pathlib.Path(__file__).resolve().parent / "errbot_plugins"
#: ``Name`` from benchplug.plug.
PLUGIN_NAME = "BenchPlug"

#: Errbot's core plugins that are loaded: the default set minus
#:  * Utils          -- its ``!echo`` clashes with ours (Errbot would rename one of
#:                      the two to ``<plugin>-echo``, whichever loaded second);
#:  * VersionChecker -- polls https://errbot.io/versions.json outside test mode;
#:  * Webserver      -- starts an HTTP server once configured;
#:  * TextCmds       -- only activates under the ``text`` backend anyway.
#: What stays is what a stock Errbot runs on every message: the ACLs command
#: filter, the command-not-found filter, the flow executor hooks, ChatRoom's
#: ``callback_message``, plus inert command-only plugins.
#: NB: ``CORE_PLUGINS = ()`` does NOT mean "none" in Errbot 6.2.1 (an empty tuple
#: is falsy, so every core plugin is loaded); to load none, pass a tuple naming
#: only non-core plugins, e.g. ``("BenchPlug",)``.
DEFAULT_CORE_PLUGINS = (
    "ACLs",
    "Backup",
    "ChatRoom",
    "CommandNotFoundFilter",
    "Flows",
    "Health",
    "Help",
    "Plugins",
)

_LOG_LEVEL = logging.WARNING
_START_TIMEOUT = 5.0  # TestBot.start pops up to 60 times with this timeout each
_STOP_TIMEOUT = 10.0


class ErrbotWorkload:
    """Errbot's in-process test backend, started once, driven one message at a time."""

    def __init__(
        self,
        tmp_dir: pathlib.Path,
        *,
        reply_timeout: float = 5.0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Start Errbot's TestBot with the benchmark plugin loaded.

        ``tmp_dir`` must exist or be creatable; Errbot's data and log go to
        ``tmp_dir / "errbot"``. ``reply_timeout`` bounds each ``send``.
        ``extra_config`` overrides Errbot config keys last (e.g.
        ``{"BOT_ASYNC": False}`` runs commands on the serve thread instead of the
        thread pool, ``{"CORE_PLUGINS": ("BenchPlug",)}`` loads no core plugin).
        """
        self._closed = False
        self._testbot = None
        self._bot = None
        self.reply_timeout = float(reply_timeout)
        self.data_dir = pathlib.Path(tmp_dir) / "errbot"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.data_dir / "errbot.log"

        # Snapshot process-global state Errbot mutates, before importing it:
        # importing errbot.logs already sets the root logger to INFO.
        root = logging.getLogger()
        root_level, root_handlers = root.level, list(root.handlers)
        self._sys_path = list(sys.path)
        err_logger = logging.getLogger("errbot")
        self._err_logger_state = (
            err_logger.level,
            err_logger.propagate,
            list(err_logger.handlers),
        )
        self._log_handler = logging.FileHandler(self.log_file, encoding="utf-8")
        self._log_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-8s %(name)s %(message)s")
        )
        err_logger.setLevel(_LOG_LEVEL)
        err_logger.propagate = False
        err_logger.handlers = [self._log_handler]

        t0 = time.perf_counter()
        try:
            from errbot.backends import test as errbot_test

            self._quit_message = errbot_test.QUIT_MESSAGE
            config: dict[str, Any] = {
                "BOT_DATA_DIR": str(self.data_dir),
                "BOT_LOG_FILE": str(self.log_file),
                "BOT_LOG_FORMATTER": logging.Formatter("%(levelname)s %(name)s %(message)s"),
                "BOT_LOG_SENTRY": False,
                "STORAGE": "Memory",
                "BOT_PLUGIN_INDEXES": (),
                "AUTOINSTALL_DEPS": False,
                "CORE_PLUGINS": DEFAULT_CORE_PLUGINS,
            }
            config.update(extra_config or {})

            # TestBot.setup() makes its own mkdtemp() directory (then we override
            # BOT_DATA_DIR anyway); point it at ours so nothing leaks into /tmp.
            real_mkdtemp = errbot_test.mkdtemp
            errbot_test.mkdtemp = lambda: str(self.data_dir)
            try:
                self._testbot = errbot_test.TestBot(
                    extra_plugin_dir=str(PLUGIN_DIR),
                    loglevel=_LOG_LEVEL,
                    extra_config=config,
                )
            finally:
                errbot_test.mkdtemp = real_mkdtemp

            # Runs setup_bot(), starts the daemon "TestBot main thread", then does
            # a push("!echo ready") / pop() handshake -- answered by our plugin.
            self._testbot.start(timeout=_START_TIMEOUT)
            self._bot = self._testbot.bot
            self._check_plugin()
            self._drain()
        except BaseException:
            self._shutdown()
            raise
        finally:
            _restore_root_logger(root, root_level, root_handlers)
        self.startup_seconds = time.perf_counter() - t0

        # Bound methods of the backend (TestBot's own methods only forward).
        self._push = self._bot.push_message
        self._pop = self._bot.pop_message

    # -- the hot path -------------------------------------------------------

    def send(self, text: str) -> str:
        """Push one message and block until its reply arrives; return the reply text.

        Not thread-safe: one message in flight at a time. Raises ``TimeoutError``
        if no reply arrives within ``reply_timeout`` (a late reply would then be
        returned by the next ``send``, so treat a timeout as fatal).
        """
        self._push(text)
        try:
            return self._pop(timeout=self.reply_timeout)
        except Empty:
            raise TimeoutError(
                f"Errbot sent no reply to {text!r} within {self.reply_timeout}s"
                f" (see {self.log_file})"
            ) from None

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Stop Errbot's threads and undo its global side effects. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._shutdown()

    def __enter__(self) -> ErrbotWorkload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _check_plugin(self) -> None:
        bot = self._bot
        plugin = bot.plugin_manager.get_plugin_obj_by_name(PLUGIN_NAME)
        if plugin is None or not plugin.is_activated:
            raise RuntimeError(
                f"Errbot did not activate {PLUGIN_NAME} from {PLUGIN_DIR} (see {self.log_file})"
            )
        echo = bot.commands.get("echo")
        if echo is None or getattr(echo, "__self__", None) is not plugin:
            raise RuntimeError(
                "Errbot's !echo is not BenchPlug's (command clash with a core plugin?)"
            )
        if getattr(bot.re_commands.get("greet"), "__self__", None) is not plugin:
            raise RuntimeError("BenchPlug's greeting pattern is not registered")

    def _drain(self) -> list[Any]:
        left = []
        if self._bot is None:
            return left
        for q in (self._bot.incoming_stanza_queue, self._bot.outgoing_message_queue):
            while True:
                try:
                    left.append(q.get_nowait())
                except Empty:
                    break
        return left

    def _shutdown(self) -> None:
        testbot, bot = self._testbot, None
        if testbot is not None:
            bot = getattr(testbot, "_bot", None)
        try:
            thread = getattr(testbot, "bot_thread", None)
            if bot is not None and thread is not None:
                # Same as TestBot.stop(), but with bounded waits: the serve loop
                # exits on the quit marker, deactivates plugins, closes storage.
                if thread.is_alive():
                    bot.push_message(self._quit_message)
                    thread.join(_STOP_TIMEOUT)
                if thread.is_alive():  # daemon thread: cannot block exit
                    logging.getLogger("errbot").warning(
                        "Errbot serve thread did not stop within %ss", _STOP_TIMEOUT
                    )
                testbot.bot_thread = None
            if bot is not None:
                for pool in (
                    getattr(bot, "thread_pool", None),  # absent when BOT_ASYNC=False
                    getattr(getattr(bot, "flow_executor", None), "_pool", None),
                ):
                    if pool is not None:
                        pool.close()
                        pool.join()
                self._drain()
            if testbot is not None:
                from errbot.core_plugins.wsview import reset_app

                reset_app()
        finally:
            self._bot = None
            # Errbot appends every plugin root (incl. its core_plugins dir, which
            # holds modules named utils, plugins, help...) to sys.path.
            added = [p for p in sys.path if p not in self._sys_path]
            for p in added:
                while p in sys.path:
                    sys.path.remove(p)
            err_logger = logging.getLogger("errbot")
            level, propagate, handlers = self._err_logger_state
            err_logger.setLevel(level)
            err_logger.propagate = propagate
            err_logger.handlers = handlers
            self._log_handler.close()


def _restore_root_logger(
    root: logging.Logger, level: int, handlers: list[logging.Handler]
) -> None:
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()  # file handlers; StreamHandler.close() leaves stderr open
    root.setLevel(level)


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def _block_network() -> list[str]:
    """Make every IP connect/DNS lookup fail and record it (self-check only)."""
    import socket

    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(f"connect {address!r}")
            raise OSError("network disabled by errbot_workload self-check")

    def connect(self, address):
        guard(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(f"getaddrinfo {host!r}")
        raise socket.gaierror("network disabled by errbot_workload self-check")

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
    return attempts


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile
    import threading

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=1000, help="messages to send")
    parser.add_argument(
        "--no-async", action="store_true", help="BOT_ASYNC=False (no thread-pool hop)"
    )
    parser.add_argument(
        "--no-core-plugins", action="store_true", help="load no Errbot core plugin"
    )
    args = parser.parse_args(argv)

    extra: dict[str, Any] = {}
    if args.no_async:
        extra["BOT_ASYNC"] = False
    if args.no_core_plugins:
        extra["CORE_PLUGINS"] = (PLUGIN_NAME,)

    net_attempts = _block_network()
    threads_before = set(threading.enumerate())
    cases = [("!echo hello", "hello"), ("hello there", "Hello!")]
    latencies: list[float] = []
    wrong: list[tuple[str, str, str]] = []
    clock = time.perf_counter

    with tempfile.TemporaryDirectory(prefix="errbot-workload-") as tmp:
        t0 = clock()
        wl = ErrbotWorkload(pathlib.Path(tmp), extra_config=extra)
        startup = clock() - t0
        try:
            start = clock()
            for i in range(args.count):
                text, expected = cases[i % 2]
                t = clock()
                reply = wl.send(text)
                latencies.append(clock() - t)
                if reply != expected:
                    wrong.append((text, expected, reply))
            elapsed = clock() - start
        finally:
            t = clock()
            wl.close()
            shutdown = clock() - t
        log_text = wl.log_file.read_text(encoding="utf-8") if wl.log_file.exists() else ""

    leftover = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    lat = sorted(x * 1000 for x in latencies)
    variant = f"BOT_ASYNC={not args.no_async}, core plugins: " + (
        "none" if args.no_core_plugins else "default set"
    )
    print(f"errbot TestBot ({variant})")
    print(f"  startup {startup * 1000:.0f} ms, shutdown {shutdown * 1000:.0f} ms")
    print(
        f"  {len(latencies)} messages in {elapsed:.3f} s -> {len(latencies) / elapsed:,.0f} msg/s"
    )
    print(
        f"  latency ms: p50 {_percentile(lat, 50):.3f}  p99 {_percentile(lat, 99):.3f}"
        f"  min {lat[0]:.3f}  max {lat[-1]:.3f}"
    )
    for k, (text, _) in enumerate(cases):
        part = sorted(x * 1000 for x in latencies[k::2])
        print(
            f"    {text!r:15} p50 {_percentile(part, 50):.3f}  p99 {_percentile(part, 99):.3f}"
        )
    print(f"  wrong replies: {len(wrong)}  network attempts: {len(net_attempts)}"
          f"  threads left: {len(leftover)}  log lines: {len(log_text.splitlines())}")
    for text, expected, reply in wrong[:5]:
        print(f"    {text!r}: expected {expected!r}, got {reply!r}")
    for attempt in net_attempts[:5]:
        print(f"    network: {attempt}")
    for t in leftover:
        print(f"    thread still alive: {t.name} (daemon={t.daemon})")
    if log_text.strip():
        print("  errbot.log:\n" + "\n".join("    " + line for line in log_text.splitlines()[:20]))
    return 1 if wrong or net_attempts else 0


if __name__ == "__main__":
    sys.exit(_main())
