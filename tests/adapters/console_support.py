"""A real pseudo-terminal for console tests: keys go in, and what a person would read comes out.

`Terminal` spawns `python -m bot chat` (or any command) on a pty with pexpect and keeps a
`Screen` of what it draws, answering the program's cursor-position requests from it as a real
terminal does (prompt_toolkit shows its toolbar only once it knows where the cursor is).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pexpect
import wcwidth

from tests.conftest import REPO

#: A control sequence: CSI (cursor moves, erases, colours, modes), OSC (titles), or a short escape.
SEQUENCE = re.compile(r"\x1b(?:\[([0-9;?<=>]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78DEHMc])")
#: What may still become a sequence when the rest of it arrives in the next read.
UNFINISHED = re.compile(r"\x1b(?:\[[0-9;?<=>]*|\][^\x07\x1b]*|[()])?\Z")
CTRL_C, CTRL_D = "\x03", "\x04"


class Screen:
    """A VT100-style screen, enough for prompt_toolkit and rich: what a person would read.

    prompt_toolkit redraws only the cells that changed, with cursor moves in between, so the
    output stream alone is not the text shown; this keeps the cells, and the lines that
    scrolled off the top.
    """

    def __init__(self, rows: int, columns: int) -> None:
        self.rows, self.columns = rows, columns
        self.cells = [[" "] * columns for _ in range(rows)]
        self.scrolled: list[str] = []
        self.y = self.x = 0
        self.saved = (0, 0)
        self.autowrap = True
        self.replies: list[str] = []  # what the terminal answers (cursor position reports)
        self._pending = ""

    def text(self) -> str:
        """Return the lines that scrolled off and the screen's lines, trailing blanks dropped."""
        shown = ["".join(row).rstrip() for row in self.cells]
        return "\n".join([*self.scrolled, *shown]).rstrip("\n")

    def feed(self, data: str) -> None:
        data, self._pending = self._pending + data, ""
        at = 0
        while at < len(data):
            char = data[at]
            if char == "\x1b":
                match = SEQUENCE.match(data, at)
                if match is None:
                    if UNFINISHED.match(data, at):
                        self._pending = data[at:]
                        return
                    at += 1
                    continue
                self._escape(match)
                at = match.end()
                continue
            if char == "\r":
                self.x = 0
            elif char == "\n":
                self._line_feed()
            elif char == "\b":
                self.x = max(0, min(self.x, self.columns - 1) - 1)
            elif char >= " ":
                self._put(char)
            at += 1

    def _put(self, char: str) -> None:
        width = wcwidth.wcwidth(char)
        if width <= 0:  # combining marks and variation selectors join the cell before
            if self.x > 0:
                self.cells[self.y][min(self.x, self.columns) - 1] += char
            return
        if self.x + width > self.columns:  # the pending wrap of a full line
            if not self.autowrap:
                self.x = self.columns - width
            else:
                self.x = 0
                self._line_feed()
        self.cells[self.y][self.x] = char
        if width == 2:
            self.cells[self.y][self.x + 1] = ""
        self.x += width

    def _line_feed(self) -> None:
        if self.y == self.rows - 1:
            self.scrolled.append("".join(self.cells.pop(0)).rstrip())
            self.cells.append([" "] * self.columns)
        else:
            self.y += 1

    def _escape(self, match: re.Match[str]) -> None:
        params, final = match.group(1), match.group(2)
        if final is None:
            sequence = match.group(0)
            if sequence == "\x1b7":
                self.saved = (self.y, self.x)
            elif sequence == "\x1b8":
                self.y, self.x = self.saved
            return
        private = params.startswith("?")
        numbers = [int(n) if n.isdigit() else 0 for n in params.lstrip("?<=>").split(";")]
        n = numbers[0] or 1
        if private:
            if 7 in numbers and final in "hl":
                self.autowrap = final == "h"
        elif final == "A":
            self.y = max(0, self.y - n)
        elif final == "B":
            self.y = min(self.rows - 1, self.y + n)
        elif final == "C":
            self.x = min(self.columns - 1, self.x + n)
        elif final == "D":
            self.x = max(0, min(self.x, self.columns - 1) - n)
        elif final == "G":
            self.x = min(self.columns - 1, n - 1)
        elif final in "Hf":
            row, column = (numbers + [0])[:2]
            self.y, self.x = min(self.rows, max(row, 1)) - 1, min(self.columns, max(column, 1)) - 1
        elif final == "J":
            self._erase_line(numbers[0])
            below = range(self.y + 1, self.rows) if numbers[0] == 0 else range(self.rows)
            for y in below if numbers[0] != 1 else range(self.y):
                self.cells[y] = [" "] * self.columns
        elif final == "K":
            self._erase_line(numbers[0])
        elif final == "n" and numbers[0] == 6:
            self.replies.append(f"\x1b[{self.y + 1};{min(self.x, self.columns - 1) + 1}R")

    def _erase_line(self, mode: int) -> None:
        row, x = self.cells[self.y], min(self.x, self.columns)
        span = range(x, self.columns) if mode == 0 else range(0, x + 1) if mode == 1 else range(self.columns)
        for column in span:
            if column < self.columns:
                row[column] = " "


class Terminal:
    """One program on a pseudo-terminal of `rows` x `columns`."""

    def __init__(self, argv: list[str], env: dict[str, str], *, cwd: Path = REPO, rows: int = 30,
                 columns: int = 100) -> None:
        self.raw = ""
        self.screen = Screen(rows, columns)
        self.child = pexpect.spawn(argv[0], argv[1:], env={**env, "TERM": "xterm-256color"}, cwd=str(cwd),
                                   dimensions=(rows, columns), encoding="utf-8", codec_errors="replace")

    @classmethod
    def chat(cls, env: dict[str, str], *args: str, python: str = sys.executable, cwd: Path = REPO) -> Terminal:
        """Start `python -m bot chat ARGS` as a person would at a terminal."""
        return cls([python, "-m", "bot", "chat", *args], env, cwd=cwd)

    @property
    def text(self) -> str:
        """Everything the program shows or has scrolled off the screen, as text."""
        return self.screen.text()

    def visible(self) -> str:
        """Return what the screen shows now (after reading what the program has written)."""
        self._read(0.1)
        return "\n".join("".join(row).rstrip() for row in self.screen.cells)

    def expect(self, pattern: str, timeout: float = 60, *, count: int = 1, unwrapped: bool = False) -> re.Match[str]:
        """Wait until the text shows the regex `pattern` (`count` times); return the last match.

        `unwrapped` matches against the lines joined, for a text longer than a line.
        """
        found = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            matches = list(found.finditer(self.text.replace("\n", "") if unwrapped else self.text))
            if len(matches) >= count:
                return matches[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {pattern!r}; the terminal shows:\n"
                                     + self.text[-3000:])
            self._read(min(0.5, max(0.01, deadline - time.monotonic())))

    def type(self, text: str, chunk: int = 4096) -> None:
        """Type `text` as keys (a long text goes in chunks, as a terminal delivers a paste)."""
        for start in range(0, len(text), chunk):
            self.child.send(text[start:start + chunk])
            self._read(0)  # keep the program's output flowing, or it blocks writing to us

    def line(self, text: str) -> None:
        """Type a line and press Enter."""
        self.type(text)
        self.child.send("\r")

    def key(self, key: str) -> None:
        self.child.send(key)

    def exit_status(self, timeout: float = 60) -> int | None:
        """Wait for the program to end (reading its last output); return its exit status."""
        deadline = time.monotonic() + timeout
        while self.child.isalive():
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout}s; the terminal shows:\n" + self.text[-3000:])
            self._read(0.2)
        self.child.close()
        return self.child.exitstatus if self.child.signalstatus is None else -self.child.signalstatus

    def peak_rss_mb(self) -> float:
        """Return the program's peak resident memory so far (VmHWM), in MB."""
        status = Path(f"/proc/{self.child.pid}/status").read_text()
        kilobytes = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
        return kilobytes / 1024

    def cpu_seconds(self) -> float:
        """Return the program's CPU time so far (user + system)."""
        fields = Path(f"/proc/{self.child.pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)

    def _read(self, timeout: float) -> None:
        try:
            while True:
                chunk = self.child.read_nonblocking(65536, timeout=timeout)
                self.raw += chunk
                self.screen.feed(chunk)
                for reply in self.screen.replies:
                    self.child.send(reply)
                self.screen.replies.clear()
                timeout = 0
        except (pexpect.TIMEOUT, pexpect.EOF):
            return
