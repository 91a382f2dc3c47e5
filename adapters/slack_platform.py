"""Slack, as the platform registry sees it: its manifest section, variables, and what serves it.

Importing this module imports no Slack SDK: the adapter, the worker port and the manifest
printer are named by dotted path and loaded when used.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.hookspecs import hookimpl
from bot.platforms import Platform


class SlackSettings(BaseModel):
    """`platforms.slack` in manifest.yml."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: "socket" needs SLACK_APP_TOKEN and no public URL; "http" needs SLACK_SIGNING_SECRET.
    mode: Literal["socket", "http"] = "socket"
    #: HTTP mode: where the bot listens for Slack's signed requests (/slack/events, /healthz).
    http_host: str = "0.0.0.0"
    #: Bolt's conventional port for HTTP mode; 1-65535 are the TCP ports.
    http_port: int = Field(default=3000, ge=1, le=65535)
    #: The Slack app manifest (Slack's format), laid over the adapter's defaults and printed by
    #: `python -m bot manifest slack`.
    app: dict[str, Any] = Field(default_factory=dict)


def required_env(section: SlackSettings) -> tuple[str, ...]:
    """Return the variables Slack needs in the section's mode: the bot token and the mode's own."""
    return ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN" if section.mode == "socket" else "SLACK_SIGNING_SECRET")


SLACK = Platform(
    name="slack",
    settings=SlackSettings,
    required_env=required_env,
    secret_env=("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"),
    env_prefix="SLACK_",
    serve="adapters.slack.serve",
    port="adapters.slack_port.web_api_port",
    manifest="adapters.slack_manifest.render_manifest",
    setup_hint="create the app from `python -m bot manifest slack` and export the tokens",
    summary=lambda section: f"{section.mode} mode",
)


@hookimpl(trylast=True)
def register_platforms() -> list[Platform]:
    """Return Slack's descriptor."""
    return [SLACK]
