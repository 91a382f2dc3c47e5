"""`bot.__all__` is the plugin surface: every name exists, and the built-in plugins keep to it."""

from __future__ import annotations

import ast
import subprocess
import sys

import bot
from tests.support.engines import REPO

#: Core modules a plugin may import besides `bot` itself: the contract's own modules, the
#: helpers plugins share with the core (rendering, memory budgets, whether a process lives), and the repositories
#: (until the engine offers every read they need); a steerable agent's inbox and approval
#: requests (`bot.signals`, `bot.approvals`).
ALLOWED_CORE_MODULES = {"bot", "bot.hookspecs", "bot.types", "bot.errors", "bot.constants", "bot.memory",
                        "bot.progress", "bot.redaction", "bot.config", "bot.db.repositories", "bot.db.resources", "bot.runs",
                        "bot.budgets", "bot.platforms", "bot.signals", "bot.approvals", "bot.processes"}


def test_every_exported_name_exists_and_is_public() -> None:
    assert bot.__all__ == sorted(bot.__all__)
    import importlib

    for name in bot.__all__:
        home = importlib.import_module(bot._EXPORTS[name])
        assert getattr(bot, name) is getattr(home, name), name
        assert home.__name__.startswith("bot.") and not name.startswith("_")
    assert set(dir(bot)) >= set(bot.__all__)


def test_importing_bot_stays_cheap() -> None:
    code = "import sys, bot; print(sorted(m for m in sys.modules if m.startswith(('bot.', 'sqlalchemy', 'pydantic'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert loaded.strip() == "[]"


def test_built_in_plugins_import_only_the_plugin_surface_of_the_core() -> None:
    offenders = {}
    for path in sorted((REPO / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("bot"):
                if node.module not in ALLOWED_CORE_MODULES:
                    offenders.setdefault(str(path.relative_to(REPO)), []).append(node.module)
    assert offenders == {}
