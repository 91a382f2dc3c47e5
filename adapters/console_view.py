"""How the console shows the bot: plain lines for pipes and scripts, a transcript with a live
toolbar on a terminal, and the terminal input that keeps a pasted line cheap.

Piped, each message is printed when it is posted and each time it reaches a new stage (a run
goes queued, running, done; an answer is final); the edits in between (a streaming answer's
words, a run's ticking clock) are skipped unless every edit is asked for, so a script's
transcript is the same every time.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any, Protocol, TextIO

from bot.types import Reply, RunState

#: A pasted line is echoed in the transcript up to here; the rest is counted, not shown
#: (ten lines of an 80-column terminal: enough to recognise what was sent).
ECHO_LIMIT = 800
#: Lines of one live message in the toolbar; the full text lands in the transcript when done.
TOOLBAR_LINES_PER_MESSAGE = 8
#: Rows the toolbar leaves for the prompt and the transcript above it.
TOOLBAR_SPARE_ROWS = 4
#: Consecutive characters in one terminal read that are a paste, not typing: a person's
#: keystrokes arrive one per read, a paste without bracketed-paste mode up to 1,024 per read.
PASTE_BURST_KEYS = 16


class View(Protocol):
    """Where the console shows the bot's messages."""

    def show(self, message_id: str, reply: Reply, *, edited: bool) -> None: ...
    def show_file(self, file_id: str, name: str, size: int, path: Path) -> None: ...
    def notice(self, text: str) -> None: ...


class PlainView:
    """Line-by-line output for pipes and scripts: posts, and edits that change a message's stage."""

    def __init__(self, out: TextIO, *, every_edit: bool = False) -> None:
        self._out = out
        self._every_edit = every_edit
        self._stages: dict[str, tuple[RunState | None, bool]] = {}
        self._lock = threading.Lock()

    def show(self, message_id: str, reply: Reply, *, edited: bool) -> None:
        stage = (reply.status.state if reply.status is not None else None, reply.partial)
        with self._lock:
            unchanged = self._stages.get(message_id) == stage
            self._stages[message_id] = stage
        if unchanged and reply.partial and not self._every_edit:
            return
        label = f"bot[{message_id}]{' edited' if edited else ''}: "
        self._write(label + reply.text.replace("\n", "\n" + " " * len(label)))

    def show_file(self, file_id: str, name: str, size: int, path: Path) -> None:
        self._write(f"bot[{file_id}] file: {name} ({size:,} bytes) saved to {path}")

    def notice(self, text: str) -> None:
        self._write(f"! {text}")

    def echo(self, user: str, text: str) -> None:
        """Piped input is the script itself: it is not repeated."""

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

    def echo(self, user: str, text: str) -> None:
        """Show what the person sent as a transcript line, a long paste cut to its start."""
        from prompt_toolkit.formatted_text import FormattedText

        shown = " ⏎ ".join(text[:ECHO_LIMIT].splitlines())
        cut = [("italic", f" … {len(text):,} characters in all, sent whole")] if len(text) > ECHO_LIMIT else []
        self._print(FormattedText([("bold", f"{user}> "), ("", shown), *cut]))

    def toolbar(self) -> Any:
        """Return the live messages, each cut to a few lines, all of them fitting the screen."""
        from prompt_toolkit.formatted_text import ANSI

        with self._lock:
            live = list(self._live.values())
        if not live:
            return ""
        room = max(TOOLBAR_LINES_PER_MESSAGE, self._rows() - TOOLBAR_SPARE_ROWS)
        lines: list[str] = []
        for shown, reply in enumerate(live):
            block = self._ansi(reply).splitlines()
            if len(block) > TOOLBAR_LINES_PER_MESSAGE:
                block = [*block[: TOOLBAR_LINES_PER_MESSAGE - 1], "…"]
            if len(lines) + len(block) > room - 1 and shown < len(live) - 1:
                lines.append(f"… and {len(live) - shown} more message(s) in progress")
                break
            lines.extend(block)
        return ANSI("\n".join(lines[:room]))

    def _ansi(self, reply: Reply) -> str:
        from rich.console import Console
        from rich.markdown import Markdown

        # A status message is laid out line by line; markdown would join its lines.
        text = reply.text.replace("\n", "  \n") if reply.status is not None else reply.text
        buffer = io.StringIO()
        # One column short of the terminal: a line that fills it exactly wraps in some terminals.
        Console(file=buffer, force_terminal=True, width=self._columns() - 1).print(Markdown(text))
        return buffer.getvalue().rstrip("\n")

    def _columns(self) -> int:
        return self.app.output.get_size().columns if self.app is not None else self._width

    def _rows(self) -> int:
        return self.app.output.get_size().rows if self.app is not None else 24

    @staticmethod
    def _print(text: Any) -> None:
        from prompt_toolkit import print_formatted_text
        from prompt_toolkit.formatted_text import ANSI

        print_formatted_text(ANSI(text) if isinstance(text, str) else text)


def terminal_input() -> Any:
    """Return the terminal's prompt_toolkit input, with a burst of typed characters read as one paste.

    A terminal without bracketed paste (or a program typing into it) delivers a paste as
    keystrokes; prompt_toolkit handles each with a full key-binding lookup and an undo
    snapshot of the whole line, which made a 100,000-character paste cost minutes of CPU and
    gigabytes (one snapshot per key). Read as a paste, it is one edit per read.
    """
    import sys

    from prompt_toolkit.input import create_input

    if sys.platform == "win32":  # the Windows console delivers a paste as one event itself
        return create_input()
    from prompt_toolkit.input.vt100 import Vt100Input

    class PasteBurstInput(Vt100Input):
        def read_keys(self) -> list[Any]:
            return merge_bursts(super().read_keys())

    return PasteBurstInput(sys.stdin)


def merge_bursts(keys: list[Any]) -> list[Any]:
    """Return the key presses with each run of `PASTE_BURST_KEYS` or more characters made one paste."""
    from prompt_toolkit.key_binding import KeyPress
    from prompt_toolkit.keys import Keys

    merged: list[Any] = []
    run: list[Any] = []

    def end_run() -> None:
        if len(run) >= PASTE_BURST_KEYS:
            merged.append(KeyPress(Keys.BracketedPaste, "".join(press.data for press in run)))
        else:
            merged.extend(run)
        run.clear()

    for press in keys:
        if not isinstance(press.key, Keys) and len(press.key) == 1 and press.key.isprintable():
            run.append(press)
        else:
            end_run()
            merged.append(press)
    end_run()
    return merged
