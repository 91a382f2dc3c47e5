"""The benchmark's plugin: an `echo` command, registered like any third-party plugin.

It mirrors the Errbot plugin in `bench/errbot_plugins/benchplug.py`, so both bots answer the
same command and the same pattern-matched chat line ("hello ...", the built-in greeting).
"""

from __future__ import annotations

from bot.hookspecs import hookimpl
from bot.types import Command, CommandContext


def echo(context: CommandContext) -> str:
    return context.argument


@hookimpl
def register_commands() -> list[Command]:
    return [Command("echo", "repeat the text", echo, usage="/echo <text>")]
