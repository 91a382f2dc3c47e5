"""The console adapter: a terminal chat through the same `Message` flow as Slack and Discord.

`python -m bot chat` reads lines, dispatches each as a message in one thread, and shows the
bot's posts, edits and files. On a TTY, messages still being edited (a streaming answer, a
running agent) stay live in a toolbar under the prompt and land in the transcript when done;
otherwise every post and edit is printed as a plain line, so the bot can be scripted.
"""

from __future__ import annotations

import getpass
import io
import itertools
import json
import logging
import secrets
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, TextIO

from bot import constants
from bot.db.repositories import Runs
from bot.engine import Engine
from bot.pubsub import Subscription
from bot.types import Attachment, Message, Reply, RunState, RunStatus, ThreadRef

log = logging.getLogger(__name__)
PLATFORM = "console"
#: The one console "channel"; threads are what differ between sessions.
CHANNEL = "local"


#: Stands in for a status sent over Redis: the view only needs to know the text is one.
STATUS_MARK = RunStatus(run_id=0, state=RunState.RUNNING, agent="")


def redis_channel(where: ThreadRef) -> str:
    """Return the Redis pub/sub channel that carries a console thread's posts from workers."""
    return f"threadwork:console:{where.channel}:{where.thread}"


class View(Protocol):
    """Where the console shows the bot's messages."""

    def show(self, message_id: str, reply: Reply, *, edited: bool) -> None: ...
    def show_file(self, file_id: str, name: str, size: int, path: Path) -> None: ...
    def notice(self, text: str) -> None: ...


class PlainView:
    """Line-by-line output for pipes and scripts: every post and every edit is one entry."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def show(self, message_id: str, reply: Reply, *, edited: bool) -> None:
        label = f"bot[{message_id}]{' edited' if edited else ''}: "
        self._write(label + reply.text.replace("\n", "\n" + " " * len(label)))

    def show_file(self, file_id: str, name: str, size: int, path: Path) -> None:
        self._write(f"bot[{file_id}] file: {name} ({size:,} bytes) saved to {path}")

    def notice(self, text: str) -> None:
        self._write(f"! {text}")

    def _write(self, line: str) -> None:
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


class TtyView:
    """Interactive output: finished messages in the transcript, partial ones live in a toolbar."""

    def __init__(self) -> None:
        from rich.console import Console

        self._live: dict[str, Reply] = {}
        self._lock = threading.Lock()
        self._width = Console().width
        self.app: Any = None  # the prompt_toolkit application, once the prompt runs

    def show(self, message_id: str, reply: Reply, *, edited: bool) -> None:
        with self._lock:
            if reply.partial:
                self._live[message_id] = reply
            else:
                self._live.pop(message_id, None)
        if not reply.partial:
            self._print(self._ansi(reply))
        if self.app is not None:
            self.app.invalidate()

    def show_file(self, file_id: str, name: str, size: int, path: Path) -> None:
        self._print(self._ansi(Reply(f"📎 **{name}** ({size:,} bytes) saved to `{path}`")))

    def notice(self, text: str) -> None:
        self._print(self._ansi(Reply(f"*{text}*")))

    def toolbar(self) -> Any:
        from prompt_toolkit.formatted_text import ANSI

        with self._lock:
            live = list(self._live.values())
        return ANSI("\n".join(self._ansi(reply) for reply in live)) if live else ""

    def _ansi(self, reply: Reply) -> str:
        from rich.console import Console
        from rich.markdown import Markdown

        # A status message is laid out line by line; markdown would join its lines.
        text = reply.text.replace("\n", "  \n") if reply.status is not None else reply.text
        buffer = io.StringIO()
        Console(file=buffer, force_terminal=True, width=self._width).print(Markdown(text))
        return buffer.getvalue().rstrip("\n")

    @staticmethod
    def _print(ansi_text: str) -> None:
        from prompt_toolkit import print_formatted_text
        from prompt_toolkit.formatted_text import ANSI

        print_formatted_text(ANSI(ansi_text))


class ConsolePort:
    """The console's `ChatPort`: posts and edits go to the view; files to the data directory."""

    platform = PLATFORM

    def __init__(self, view: View, files_dir: Path) -> None:
        self._view = view
        self._files_dir = files_dir
        # Ids are unique across sessions, as a platform's are: the database keys replies by them.
        self._session = secrets.token_hex(2)
        self._ids = itertools.count(1)

    def post(self, where: ThreadRef, reply: Reply) -> str:
        message_id = f"{self._session}-{next(self._ids)}"
        self._view.show(message_id, reply, edited=False)
        return message_id

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self._view.show(message_id, reply, edited=True)

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        path = save_file(self._files_dir, where, attachment)
        file_id = f"{self._session}-f{next(self._ids)}"
        self._view.show_file(file_id, attachment.filename, len(attachment.data), path)
        return file_id


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
        self._publish(where, {"op": "post", "id": message_id, "text": reply.text, "partial": reply.partial,
                              "status": reply.status is not None})
        return message_id

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self._publish(where, {"op": "edit", "id": message_id, "text": reply.text, "partial": reply.partial,
                              "status": reply.status is not None})

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        import uuid

        path = save_file(self._files_dir, where, attachment)
        file_id = f"rf{uuid.uuid4().hex[:8]}"
        self._publish(where, {"op": "file", "id": file_id, "name": attachment.filename,
                              "size": len(attachment.data), "path": str(path)})
        return file_id

    def _publish(self, where: ThreadRef, event: dict[str, Any]) -> None:
        self._redis.publish(redis_channel(where), json.dumps(event))


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
            status = STATUS_MARK if event.get("status") else None
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

    def __init__(self, engine: Engine, thread: str, *, interactive: bool, out: TextIO = sys.stdout) -> None:
        self.engine = engine
        self.where = ThreadRef(PLATFORM, CHANNEL, thread)
        self.user = getpass.getuser()
        self.interactive = interactive
        self.view: PlainView | TtyView = TtyView() if interactive else PlainView(out)
        files_dir = engine.settings.data_dir / "console-files"
        engine.attach_port(ConsolePort(self.view, files_dir))
        self.listener = RemoteListener(engine.settings.redis_url, self.where, self.view) if engine.settings.redis_url else None
        self._jobs: list[str] = []

    def run(self, lines: Iterable[str] | None = None) -> int:
        """Chat until input ends, then wait for replies and runs in progress; return 0."""
        try:
            for line in lines if lines is not None else self._prompt_lines():
                text = line.strip()
                if text in ("/quit", "/exit"):
                    break
                if text:
                    self.send(text)
            self.drain()
        finally:
            if self.listener:
                self.listener.close()
        return 0

    def send(self, text: str) -> None:
        """Dispatch one line as a message from the person at the terminal."""
        dispatched = self.engine.receive(Message(where=self.where, text=text, user_id=self.user, user_name=self.user))
        if dispatched is not None and dispatched.job_id:
            self._jobs.append(dispatched.job_id)

    def drain(self, timeout: float = constants.CONSOLE_DRAIN_TIMEOUT_S) -> None:
        """Wait for every reply and agent run this session started."""
        queue = self.engine.queue
        waiting = list(self._jobs)
        while waiting:
            if not queue.wait(waiting, timeout):
                self.view.notice("Stopped waiting: some work is still in progress; see /runs later.")
                break
            with self.engine.db.reading() as session:
                conversation_runs = self._active_run_jobs(session)
            waiting = [job for job in conversation_runs if job not in self._jobs]
            self._jobs.extend(waiting)
        if self.listener:
            self.listener.flush()

    def _active_run_jobs(self, session: Any) -> list[str]:
        from bot.db.repositories import Conversations

        conversation = Conversations(session).find(self.where)
        if conversation is None:
            return []
        runs = Runs(session)
        return [job for run in runs.active(conversation.id) if (job := runs.row(run.id).job_id)]

    def _prompt_lines(self) -> Iterable[str]:
        if not self.interactive:
            yield from sys.stdin
            return
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        assert isinstance(self.view, TtyView)
        session: PromptSession[str] = PromptSession(
            bottom_toolbar=self.view.toolbar, refresh_interval=constants.STATUS_EDIT_INTERVAL_S
        )
        self.view.app = session.app
        self.view.notice(f"{self.engine.manifest.name} - thread '{self.where.thread}'. Type help, or Ctrl-D to quit.")
        with patch_stdout(raw=True):
            while True:
                try:
                    yield session.prompt(f"{self.user}> ")
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    return


def remote_port(engine: Engine) -> RemoteConsolePort | None:
    """Return the port a worker uses to reach console chats (over Redis), or None without Redis."""
    settings = engine.settings
    if not settings.redis_url:
        return None
    return RemoteConsolePort(settings.redis_url, settings.data_dir / "console-files")
