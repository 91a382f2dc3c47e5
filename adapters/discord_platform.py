"""Discord, as the platform registry sees it: its manifest section, variables, and what serves it.

Importing this module imports no discord.py: the adapter, the worker port and the invite
printer are named by dotted path and loaded when used.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bot.hookspecs import hookimpl
from bot.platforms import Platform


class DiscordSettings(BaseModel):
    """`platforms.discord` in manifest.yml."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: Gateway intents, named as in discord.py's `Intents`; message_content is privileged
    #: (switched on in the developer portal) and lets the bot read thread replies that do not
    #: mention it.
    intents: list[str] = Field(default_factory=lambda: ["guilds", "guild_messages", "dm_messages", "message_content",
                                                         "guild_reactions", "dm_reactions"])
    #: Bot permissions the invite URL asks for, named as in discord.py's `Permissions`.
    permissions: list[str] = Field(default_factory=lambda: [
        "view_channel", "send_messages", "send_messages_in_threads", "create_public_threads",
        "read_message_history", "embed_links", "attach_files", "use_application_commands",
    ])
    #: OAuth2 scopes of the invite: the bot user and its slash commands.
    scopes: list[str] = Field(default_factory=lambda: ["bot", "applications.commands"])


DISCORD = Platform(
    name="discord",
    settings=DiscordSettings,
    required_env=("DISCORD_TOKEN",),
    secret_env=("DISCORD_TOKEN",),
    env_prefix="DISCORD_",
    serve="adapters.discord.serve",
    port="adapters.discord_port.rest_port",
    manifest="adapters.discord_manifest.render_manifest",
    setup_hint="create a Discord application and export DISCORD_TOKEN",
)


@hookimpl(trylast=True)
def register_platforms() -> list[Platform]:
    """Return Discord's descriptor."""
    return [DISCORD]
