"""Greetings and thanks, answered at once without a model."""

from __future__ import annotations

import re

from bot.hookspecs import hookimpl
from bot.types import Command, CommandContext

GREETING = re.compile(r"^\s*(hi|hello|hey|good (morning|afternoon|evening))\b[\s!.,]*(\w+[\s!.]*)?$", re.IGNORECASE)
THANKS = re.compile(r"^\s*(thanks|thank you|thx|ty|cheers)\b[\w\s!.,]{0,30}$", re.IGNORECASE)


def greet(context: CommandContext) -> str:
    name = context.message.user_name or "there"
    return f"Hi {name}! Ask me a question, or ask me to change some code. Type `help` for the commands."


def thank(context: CommandContext) -> str:
    return "You're welcome!"


@hookimpl
def register_commands() -> list[Command]:
    return [
        Command("hello", "say hello", greet, pattern=GREETING),
        Command("thanks", "say thanks", thank, pattern=THANKS),
    ]
