"""The console bot on a real pseudo-terminal, as a person at a terminal uses it.

Timeouts here only guard against a hang; what is asserted is what the person sees, the
run's stored state, the agent's processes, and the bot's memory.
"""

from __future__ import annotations

import getpass
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapters.console_support import CTRL_C, CTRL_D, Terminal
from tests.conftest import REPO, bot_env
from tests.fakes.openai_server import FakeOpenAIServer, Turn
from tests.workers.agent_support import agent_settings, processes_with, requires_opencode, wait_until

#: What the README's first command installs: the package and what it needs at run time.
CHECKOUT_PARTS = ("pyproject.toml", "README.md", "manifest.yml", "bot", "adapters", "plugins", "workers")
#: A pasted line must not grow the bot past this (it reached 5 GB when prompt_toolkit kept an
#: undo copy of the whole line per pasted character).
PASTE_PEAK_RSS_MB = 500
USER = getpass.getuser()
PROMPT = re.escape(f"{USER}>")


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """Terminals a test opens; any still running at the end is killed."""
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


@pytest.fixture
def model() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


def test_the_readmes_first_command_works_in_a_fresh_venv(tmp_path: Path, terminals: list[Terminal]) -> None:
    # The README: python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m bot chat
    # run in a copy of the checkout, so the build leaves nothing in the shared one.
    checkout = tmp_path / "threadwork"
    checkout.mkdir()
    for part in CHECKOUT_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, checkout / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, checkout / part)
    subprocess.run([sys.executable, "-m", "venv", ".venv"], cwd=checkout, check=True, timeout=120)
    install = subprocess.run([".venv/bin/pip", "install", "-q", "-e", "."], cwd=checkout, capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr

    env = bot_env(tmp_path)
    del env["PYTHONPATH"]  # only what the venv installed
    env["BOT_MANIFEST"] = str(checkout / "manifest.yml")
    terminal = Terminal.chat(env, python=str(checkout / ".venv" / "bin" / "python"), cwd=checkout)
    terminals.append(terminal)
    terminal.expect(PROMPT)
    terminal.line("help")
    terminal.expect(r"/history \[count\]")
    terminal.line("hello")
    terminal.expect(f"Hi {USER}!")
    terminal.key(CTRL_D)
    assert terminal.exit_status() == 0
    assert "Traceback" not in terminal.text


def test_help_a_reply_and_a_pasted_100k_line_on_a_terminal(tmp_path: Path, terminals: list[Terminal]) -> None:
    terminal = Terminal.chat(bot_env(tmp_path))
    terminals.append(terminal)
    terminal.expect("Type help")
    terminal.expect(PROMPT)
    terminal.line("help")
    terminal.expect(r"/cancel \[run\]")
    terminal.line("hello")
    terminal.expect(f"Hi {USER}!")

    pasted = "0123456789" * 10_000
    terminal.line(pasted)  # typed into the pty as fast as it takes it, no bracketed-paste markers
    # The transcript shows the start of the line and says it went whole; the bot answers it.
    terminal.expect(rf"{PROMPT} (0123456789){{80}} … 100,000 characters in all, sent whole", timeout=300, unwrapped=True)
    terminal.expect("no language model is configured", timeout=300)
    assert terminal.peak_rss_mb() < PASTE_PEAK_RSS_MB
    terminal.key(CTRL_D)
    assert terminal.exit_status() == 0
    stored = sqlite3.connect(tmp_path / "data" / "threadwork.db").execute(
        "select text from messages where role = 'user' order by id").fetchall()
    assert [text for (text,) in stored] == ["help", "hello", pasted]


@requires_opencode
def test_ctrl_c_cancels_the_run_in_progress_and_otherwise_clears_the_line(
        tmp_path: Path, model: FakeOpenAIServer, terminals: list[Terminal]) -> None:
    marker = f"sleep 31{int(time.time()) % 10}"  # unique enough to find in /proc
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("never reached"))
    terminal = start_agent_chat(tmp_path, model, terminals)
    terminal.line(f"/agent run {marker}")
    terminal.expect(r"Agent run 1 · running")  # live in the toolbar
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")

    terminal.key(CTRL_C)
    terminal.expect(r"Agent run 1 · cancelled", timeout=60)  # in the transcript, the toolbar empty
    terminal.expect(rf"Cancelled by {USER}\.")
    wait_until(lambda: not processes_with(marker), 10, "every process of the run to be gone")
    assert run_state(tmp_path) == ("cancelled", USER)
    wait_until(lambda: "· running" not in terminal.visible(), 10, "the toolbar to let go of the ended run")

    terminal.type("a draft I changed my mind about")
    terminal.key(CTRL_C)  # no run in progress: the line is cleared, the chat goes on
    terminal.line("hello")
    terminal.expect(f"Hi {USER}!")
    terminal.key(CTRL_D)
    assert terminal.exit_status() == 0
    assert "Traceback" not in terminal.text


@requires_opencode
def test_ctrl_d_during_a_run_waits_saying_so_and_ctrl_c_then_cancels_it_and_exits(
        tmp_path: Path, model: FakeOpenAIServer, terminals: list[Terminal]) -> None:
    marker = f"sleep 32{int(time.time()) % 10}"
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("never reached"))
    terminal = start_agent_chat(tmp_path, model, terminals)
    terminal.line(f"/agent run {marker}")
    terminal.expect(r"Agent run 1 · running")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")

    terminal.key(CTRL_D)
    terminal.expect(r"waiting for run 1 · Ctrl-C cancels it", timeout=10)
    assert terminal.child.isalive()
    terminal.key(CTRL_C)
    terminal.expect(rf"Cancelled by {USER}\.")
    terminal.expect(r"Interrupted: cancelled run 1\.")
    # Before, the second Ctrl-C took ~32 s and left the run "running": 25 s guards against both.
    assert terminal.exit_status(timeout=25) == 130
    assert run_state(tmp_path) == ("cancelled", USER)
    assert not processes_with(marker)


def start_agent_chat(tmp_path: Path, model: FakeOpenAIServer, terminals: list[Terminal]) -> Terminal:
    """Start `bot chat` on a terminal, its agent pointed at the scripted model."""
    settings = agent_settings(tmp_path, model)
    env = bot_env(tmp_path, BOT_MANIFEST=str(settings.manifest_path), OPENCODE_CONFIG=settings.get("OPENCODE_CONFIG"))
    terminal = Terminal.chat(env)
    terminals.append(terminal)
    terminal.expect(PROMPT)
    return terminal


def run_state(tmp_path: Path) -> tuple[str, str]:
    """Return run 1's stored state and who cancelled it."""
    db = sqlite3.connect(tmp_path / "data" / "threadwork.db")
    try:
        return db.execute("select state, cancelled_by from agent_runs where id = 1").fetchone()
    finally:
        db.close()
