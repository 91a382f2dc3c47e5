"""The house's shape: the core imports no platform SDK, adapter, plugin or worker module."""

from __future__ import annotations

import ast

from tests.support.engines import REPO

#: Top-level packages the core must not import: they depend on it, never the reverse.
FORBIDDEN = {"adapters", "plugins", "workers", "slack_bolt", "slack_sdk", "discord", "anthropic"}


def imported_packages(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_core_imports_no_adapter_plugin_worker_or_platform_sdk() -> None:
    offenders = {}
    for path in sorted((REPO / "bot").rglob("*.py")):
        bad = imported_packages(path.read_text()) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_everything_the_core_names_by_dotted_path_exists() -> None:
    from bot import cli, engine, platforms, plugins
    from bot.queue import resolve

    for dotted in (cli.CONSOLE_CHAT, cli.RUN_WORKER, cli.REAPER, cli.ROUTE_LINES, engine.HANDLE_MESSAGE_JOB):
        assert callable(resolve(dotted)), dotted
    import importlib

    for module in (*plugins.DEFAULT_PLUGINS, *platforms.BUILTIN_PLATFORMS):
        importlib.import_module(module)
