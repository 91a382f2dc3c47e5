"""Discord's invite: what `python -m bot manifest discord` prints, and the intents and permissions it names.

`platforms.discord` in manifest.yml names gateway intents and bot permissions as discord.py
does; `render_manifest` checks every name, works out the application id (DISCORD_CLIENT_ID,
else the token's first part) and prints the intents, the permissions and the invite URL.
The gateway (`adapters.discord`) builds its intents with `gateway_intents` too.
"""

from __future__ import annotations

import base64
import binascii

import discord

from adapters.discord_platform import DiscordSettings
from bot.config import Manifest, Settings
from bot.errors import ConfigError

#: The invite page of Discord's OAuth2 flow.
INVITE_URL = "https://discord.com/oauth2/authorize?client_id={client_id}&scope={scopes}&permissions={permissions}"
#: Intents Discord only grants when they are switched on for the application.
PRIVILEGED_INTENTS = {"message_content": "MESSAGE CONTENT INTENT", "members": "SERVER MEMBERS INTENT",
                      "presences": "PRESENCE INTENT"}


def gateway_intents(section: DiscordSettings) -> discord.Intents:
    """Return the intents the manifest names; an unknown name is a ConfigError."""
    intents = discord.Intents.none()
    for name in section.intents:
        if name not in discord.Intents.VALID_FLAGS:
            raise ConfigError(f"manifest.yml: platforms.discord.intents: unknown intent {name!r} "
                              f"(known: {', '.join(sorted(discord.Intents.VALID_FLAGS))})")
        setattr(intents, name, True)
    return intents


def bot_permissions(section: DiscordSettings) -> discord.Permissions:
    """Return the permissions the manifest names; an unknown name is a ConfigError."""
    unknown = [name for name in section.permissions if name not in discord.Permissions.VALID_FLAGS]
    if unknown:
        raise ConfigError(f"manifest.yml: platforms.discord.permissions: unknown permission {unknown[0]!r} "
                          "(names as in discord.Permissions, e.g. send_messages_in_threads)")
    return discord.Permissions(**{name: True for name in section.permissions})


def application_id(settings: Settings) -> str:
    """Return the application id: DISCORD_CLIENT_ID, else the user id encoded in DISCORD_TOKEN."""
    explicit = settings.get("DISCORD_CLIENT_ID")
    if explicit:
        if not explicit.strip().isdigit():
            raise ConfigError("DISCORD_CLIENT_ID must be the numeric Application ID (General Information page "
                              "of the developer portal)")
        return explicit.strip()
    token = settings.get("DISCORD_TOKEN")
    if not token:
        raise ConfigError("set DISCORD_CLIENT_ID (the Application ID on the General Information page of the "
                          "developer portal) or DISCORD_TOKEN to print the invite URL")
    first = token.strip().split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        decoded = ""
    if not decoded.isdigit():
        raise ConfigError("DISCORD_TOKEN does not look like a bot token (its first part is not a user id); "
                          "set DISCORD_CLIENT_ID")
    return decoded


def render_manifest(manifest: Manifest, settings: Settings) -> str:
    """Return what `python -m bot manifest discord` prints: intents, permissions, the invite URL."""
    section = manifest.platforms.discord
    gateway_intents(section)
    permissions = bot_permissions(section)
    client_id = application_id(settings)
    privileged = [PRIVILEGED_INTENTS[name] for name in section.intents if name in PRIVILEGED_INTENTS]
    url = INVITE_URL.format(client_id=client_id, scopes="+".join(section.scopes), permissions=permissions.value)
    lines = [
        f"{manifest.name} on Discord (application {client_id})",
        f"Gateway intents: {', '.join(section.intents) or '(none)'}",
    ]
    if privileged:
        lines.append(f"  switch on {', '.join(privileged)} under 'Privileged Gateway Intents' on the Bot page")
    lines += [
        f"Bot permissions ({permissions.value}): {', '.join(section.permissions) or '(none)'}",
        f"Scopes: {' '.join(section.scopes)}",
        "Invite URL (open it, choose the server, authorize):",
        url,
    ]
    return "\n".join(lines)
