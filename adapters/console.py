"""The console adapter: a terminal chat through the same `Message` flow as Slack and Discord.

`python -m bot chat` reads lines, dispatches each as a message in one thread, and shows the
bot's posts, edits and files (adapters/console_view.py). On a TTY, messages still being edited
(a streaming answer, a running agent) stay live in a toolbar under the prompt and land in the
transcript when done; Ctrl-C cancels the run in progress. Piped, each line is handled once the
previous line's work (its answer, its agent run) has finished, and each message is printed at
each change of stage, so a script's transcript follows its input and is the same every time;
`--concurrent` dispatches lines as they come and prints every edit instead.
"""

from __future__ import annotations

import getpass
import itertools
import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from adapters.console_view import PlainView, TtyView, View, terminal_input
from bot import constants
from bot.db.repositories import Conversations, Runs
from bot.engine import Engine
from bot.file_links import FileLinks
from bot.pubsub import Subscription
from bot.types import AgentRun, Attachment, Message, Reply, RunState, RunStatus, ThreadRef

log = logging.getLogger(__name__)
PLATFORM = "console"
#: The one console "channel"; threads are what differ between sessions.
CHANNEL = "local"
#: The longest line the console sends. The agent gets its task as one command-line argument,
#: which Linux caps at 128 KiB (MAX_ARG_STRLEN); 100,000 characters leaves room for the preamble.
MESSAGE_LIMIT = 100_000
#: How long cancelled runs get to end before the console exits anyway: a cancel ends the
#: agent's process tree within 5 s (tests/workers/test_agent_runs.py), then the run is stored.
CANCEL_WAIT_S = 15.0
#: How often waiting re-reads the thread's runs, for runs whose job is not this process's.
RUN_POLL_S = 0.5
#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
INTERRUPTED_EXIT = 130
#: What `/quit` and `/exit` do at the prompt and in a script: end input.
QUIT_COMMANDS = ("/quit", "/exit")


def status_mark(state: RunState) -> RunStatus:
    """Stand in for a status sent over Redis: the view only needs to know its stage."""
    return RunStatus(run_id=0, state=state, agent="")


def redis_channel(where: ThreadRef) -> str:
    """Return the Redis pub/sub channel that carries a console thread's posts from workers."""
    return f"threadwork:console:{where.channel}:{where.thread}"


class ConsolePort:
    """The console's `ChatPort`: posts and edits go to the view; files to the data directory."""

    platform = PLATFORM

    def __init__(self, view: View, files_dir: Path) -> None:
        self._view = view
        self._files_dir = files_dir
        # Ids are unique across sessions, as a platform's are: the database keys replies by them.
        self._session = secrets.token_hex(2)
        self._ids = itertools.count(1)
        self.links = FileLinks()

    def post(self, where: ThreadRef, reply: Reply) -> str:
        message_id = f"{self._session}-{next(self._ids)}"
        self._view.show(message_id, reply, edited=False)
        return message_id

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self._view.show(message_id, reply, edited=True)

    def open_thread(self, where: ThreadRef, text: str) -> ThreadRef:
        """Start a new console thread named after this one, show its first message; return it.

        `python -m bot chat --thread NAME` continues it.
        """
        opened = ThreadRef(where.platform, where.channel, f"{where.thread}-{secrets.token_hex(2)}")
        self.post(opened, Reply(text))
        return opened

    def upload_limit(self, where: ThreadRef) -> int:
        """Return the largest file the console takes: any, it saves files to disk."""
        return sys.maxsize

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        path = save_file(self._files_dir, where, attachment)
        file_id = f"{self._session}-f{next(self._ids)}"
        self._view.show_file(file_id, attachment.filename, len(attachment.data), path)
        self.links.remember(file_id, path.as_uri())
        return file_id

    def file_link(self, file_id: str) -> str | None:
        """Return where a file this port saved lately is (a file: URI)."""
        return self.links.get(file_id)


class RemoteConsolePort:
    """The console's `ChatPort` inside a worker process: publishes to the console over Redis."""

    platform = PLATFORM

    def __init__(self, redis_url: str, files_dir: Path) -> None:
        from redis import Redis

        self._redis = Redis.from_url(redis_url)
        self._files_dir = files_dir

    def post(self, where: ThreadRef, reply: Reply) -> str:
        import uuid

        message_id = f"r{uuid.uuid4().hex[:8]}"
        self._publish(where, {"op": "post", "id": message_id, **_reply_event(reply)})
        return message_id

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self._publish(where, {"op": "edit", "id": message_id, **_reply_event(reply)})

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        import uuid

        path = save_file(self._files_dir, where, attachment)
        file_id = f"rf{uuid.uuid4().hex[:8]}"
        self._publish(where, {"op": "file", "id": file_id, "name": attachment.filename,
                              "size": len(attachment.data), "path": str(path)})
        return file_id

    def _publish(self, where: ThreadRef, event: dict[str, Any]) -> None:
        self._redis.publish(redis_channel(where), json.dumps(event))


def _reply_event(reply: Reply) -> dict[str, Any]:
    state = reply.status.state.value if reply.status is not None else None
    return {"text": reply.text, "partial": reply.partial, "status": reply.status is not None, "state": state}


class RemoteListener:
    """Shows what workers publish for this console thread; `flush` waits for all of it."""

    def __init__(self, redis_url: str, where: ThreadRef, view: View) -> None:
        self._channel = redis_channel(where)
        self._view = view
        self._flushed = threading.Event()
        self._subscription = Subscription(redis_url, self._channel, self._handle)

    def _handle(self, data: bytes) -> None:
        event = json.loads(data)
        if event["op"] == "flush":
            self._flushed.set()
        elif event["op"] == "file":
            self._view.show_file(event["id"], event["name"], event["size"], Path(event["path"]))
        else:
            status = status_mark(RunState(event.get("state") or RunState.RUNNING.value)) if event.get("status") else None
            self._view.show(event["id"], Reply(event["text"], status=status, partial=event.get("partial", False)),
                            edited=event["op"] == "edit")

    def flush(self, timeout: float = 10) -> None:
        """Wait until everything published before now has been shown (Redis keeps order)."""
        self._flushed.clear()
        self._subscription.publish(self._channel, json.dumps({"op": "flush"}))
        self._flushed.wait(timeout)

    def close(self) -> None:
        self._subscription.close()


def save_file(files_dir: Path, where: ThreadRef, attachment: Attachment) -> Path:
    """Save an uploaded file under the thread's folder; return its path."""
    folder = files_dir / where.thread
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(attachment.filename).name
    path.write_bytes(attachment.data)
    return path


class ConsoleChat:
    """One `bot chat` session: a thread, its view, and the loop over input lines."""

    def __init__(self, engine: Engine, thread: str, *, interactive: bool, concurrent: bool = False,
                 out: TextIO = sys.stdout) -> None:
        self.engine = engine
        self.where = ThreadRef(PLATFORM, CHANNEL, thread)
        self.user = getpass.getuser()
        self.interactive = interactive
        self.concurrent = concurrent
        self.view: PlainView | TtyView = TtyView() if interactive else PlainView(out, every_edit=concurrent)
        files_dir = engine.settings.data_dir / "console-files"
        engine.attach_port(ConsolePort(self.view, files_dir))
        self.listener = RemoteListener(engine.settings.redis_url, self.where, self.view) if engine.settings.redis_url else None
        self._jobs: list[str] = []
        #: Stored ids of this session's messages: the runs they asked for are this session's work.
        self._messages: set[int] = set()

    def run(self, lines: Iterable[str] | None = None) -> int:
        """Chat until input ends, then wait for this session's replies and runs; return the exit status.

        Ctrl-C while waiting cancels the session's runs, through `/cancel` as a person would.
        """
        try:
            if lines is None and self.interactive:
                self._prompt()
            else:
                self._read(lines if lines is not None else sys.stdin)
            runs = self.runs_in_progress()
            if runs:
                self.view.notice(f"waiting for {_label(runs)} · Ctrl-C cancels {'it' if len(runs) == 1 else 'them'}")
            self.drain()
            return 0
        except KeyboardInterrupt:
            return self._interrupted()
        finally:
            if self.listener:
                self.listener.close()

    def send(self, text: str) -> None:
        """Dispatch one line as a message from the person at the terminal (refused past `MESSAGE_LIMIT`)."""
        if len(text) > MESSAGE_LIMIT:
            self.view.notice(f"Not sent: that message is {len(text):,} characters; the console sends at most "
                             f"{MESSAGE_LIMIT:,}.")
            return
        dispatched = self.engine.receive(Message(where=self.where, text=text, user_id=self.user, user_name=self.user))
        if dispatched is not None:
            self._messages.add(dispatched.message_id)
            if dispatched.job_id:
                self._jobs.append(dispatched.job_id)

    def drain(self, timeout: float = constants.CONSOLE_DRAIN_TIMEOUT_S) -> bool:
        """Wait for this session's jobs and the agent runs its messages asked for; return whether all ended."""
        if self._jobs and self.engine.listening_workers() == 0:
            # Nothing takes the jobs until a worker starts, and the thread has been told so.
            self._jobs.clear()
            return False
        deadline = time.monotonic() + timeout
        waited: set[str] = set()
        ended = True
        while True:
            if not self.engine.queue.wait(self._jobs, max(0.0, deadline - time.monotonic())):
                ended = False
                break
            waited.update(self._jobs)
            self._jobs.clear()
            runs = self.runs_in_progress()
            if not runs:
                break
            if time.monotonic() >= deadline:
                ended = False
                break
            fresh = [job for run in runs if (job := run.job_id) and job not in waited]
            if fresh:
                self._jobs.extend(fresh)
            else:  # the run's job has ended: it waits its turn under another job, or in another process
                time.sleep(RUN_POLL_S)
        if not ended:
            self.view.notice("Stopped waiting: some work is still in progress; see /runs later.")
        if self.listener:
            self.listener.flush()
        return ended

    def runs_in_progress(self) -> list[AgentRun]:
        """Return the queued and running agent runs this session's messages asked for, oldest first."""
        with self.engine.db.reading() as session:
            conversation = Conversations(session).find(self.where)
            if conversation is None:
                return []
            return [run for run in Runs(session).active(conversation.id) if run.request_message_id in self._messages]

    def cancel(self, runs: list[AgentRun]) -> None:
        """Cancel runs with `/cancel N` from the person at the terminal, the queued ones first.

        Cancelling the running one first would let the next queued run start in its place.
        """
        for run in sorted(runs, key=lambda run: (run.state == RunState.RUNNING, -run.id)):
            self.view.echo(self.user, f"/cancel {run.id}")
            self.send(f"/cancel {run.id}")

    def _read(self, lines: Iterable[str]) -> None:
        for line in lines:
            text = line.strip()
            if text in QUIT_COMMANDS:
                return
            if text:
                self.send(text)
                if not self.concurrent:
                    self.drain()

    def _prompt(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        assert isinstance(self.view, TtyView)
        # The prompt erases the accepted line; the view echoes it, a long paste cut to its start.
        session: PromptSession[str] = PromptSession(
            bottom_toolbar=self.view.toolbar, refresh_interval=constants.STATUS_EDIT_INTERVAL_S,
            input=terminal_input(), erase_when_done=True,
        )
        self.view.app = session.app
        self.view.notice(f"{self.engine.manifest.name} - thread '{self.where.thread}'. Type help; Ctrl-C cancels "
                         "a run in progress, Ctrl-D quits.")
        with patch_stdout(raw=True):
            while True:
                try:
                    text = session.prompt(f"{self.user}> ").strip()
                except KeyboardInterrupt:  # cancels the running run; with none, it has cleared the line
                    runs = self.runs_in_progress()
                    running = [run for run in runs if run.state == RunState.RUNNING]
                    if runs:
                        self.cancel((running or runs)[:1])
                    continue
                except EOFError:
                    return
                if text in QUIT_COMMANDS:
                    return
                if text:
                    self.view.echo(self.user, text)
                    self.send(text)

    def _interrupted(self) -> int:
        """Cancel the session's runs after Ctrl-C, wait a little for them to end, and say how it went."""
        runs = self.runs_in_progress()
        if not runs:
            self.view.notice("Interrupted: stopped waiting for replies.")
            return INTERRUPTED_EXIT
        try:
            self.cancel(runs)
            self.drain(CANCEL_WAIT_S)
        except KeyboardInterrupt:
            pass
        left = self.runs_in_progress()
        if left:
            self.view.notice(f"Interrupted: {_label(left)} still stopping; `/runs` shows how it ended.")
        else:
            self.view.notice(f"Interrupted: cancelled {_label(runs)}.")
        return INTERRUPTED_EXIT


def _label(runs: list[AgentRun]) -> str:
    return f"run {runs[0].id}" if len(runs) == 1 else f"runs {', '.join(str(run.id) for run in runs)}"


def remote_port(engine: Engine) -> RemoteConsolePort | None:
    """Return the port a worker uses to reach console chats (over Redis), or None without Redis."""
    settings = engine.settings
    if not settings.redis_url:
        return None
    return RemoteConsolePort(settings.redis_url, settings.data_dir / "console-files")
