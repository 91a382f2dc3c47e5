"""The console, as the platform registry sees it: no credentials, started by `python -m bot chat`.

`run` does not serve it (no `serve`); a worker posts into a console thread through
`adapters.console.remote_port`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from bot.hookspecs import hookimpl
from bot.platforms import Platform


class ConsoleSettings(BaseModel):
    """`platforms.console` in manifest.yml."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True


CONSOLE = Platform(name="console", settings=ConsoleSettings, port="adapters.console.remote_port")


@hookimpl(trylast=True)
def register_platforms() -> list[Platform]:
    """Return the console's descriptor."""
    return [CONSOLE]
