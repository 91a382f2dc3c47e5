"""A plugin that replaces the built-in Slack descriptor (its serve, say), to show a plugin wins over a built-in."""

from __future__ import annotations

import dataclasses

from adapters.slack_platform import SLACK
from bot.hookspecs import hookimpl
from bot.platforms import Platform


def serve(engine: object) -> None:
    """Return at once: this Slack serves nothing."""


@hookimpl
def register_platforms() -> list[Platform]:
    """Return Slack's descriptor with this module's serve."""
    return [dataclasses.replace(SLACK, serve="tests.adapters.toy_slack.serve")]
