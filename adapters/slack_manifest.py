"""The Slack app manifest: what `python -m bot manifest slack` prints, and the scopes it needs.

`manifest.yml` carries the app under `platforms.slack.app` in Slack's own manifest format;
`render_manifest` lays it over `DEFAULT_APP` (so a key left out keeps a working default),
fills in the name and the mode (Socket Mode, or HTTP with request URLs), and prints YAML,
which Slack's "Create New App → From a manifest" accepts as it is.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from bot.config import Manifest, Settings

#: Where Bolt's HTTP handler listens (`slack_bolt.adapter.wsgi.SlackRequestHandler`'s default).
EVENTS_PATH = "/slack/events"
#: Shown in HTTP mode until SLACK_PUBLIC_URL says where Slack can reach the bot.
PUBLIC_URL_PLACEHOLDER = "https://YOUR-PUBLIC-HOST"

#: The bot token scope each Web API method the adapter calls needs (Slack's method reference).
#: `auth.test` needs none; `apps.connections.open` uses the app-level token (connections:write).
METHOD_SCOPES: dict[str, str | None] = {
    "auth.test": None,
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
    "users.info": "users:read",
    # A thread's earlier messages; groups:history, im:history and mpim:history cover the others.
    "conversations.replies": "channels:history",
    # Catch-up after downtime (adapters/slack_catch_up.py), likewise for the other kinds of channel.
    "conversations.history": "channels:history",
}
#: `files_upload_v2` is three requests: two Web API methods and a POST to the upload URL.
UPLOAD_V2_METHODS = ("files.getUploadURLExternal", "files.completeUploadExternal")
#: The scope each subscribed bot event needs (Slack's Events API reference).
EVENT_SCOPES = {
    "app_mention": "app_mentions:read",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "message.im": "im:history",
    "reaction_added": "reactions:read",
}
#: Slash commands need the `commands` scope.
COMMANDS_SCOPE = "commands"

SLASH_COMMANDS = [
    {"command": "/agent", "description": "Send the coding agent to work on a task", "usage_hint": "<task>",
     "should_escape": False},
    {"command": "/ask", "description": "Ask a question, answered in chat (never starts the agent)",
     "usage_hint": "<question>", "should_escape": False},
    {"command": "/threadwork", "description": "Talk to the bot: a chat command or a request",
     "usage_hint": "help | threads | runs | files | <request>", "should_escape": False},
]

#: The app Threadwork needs; `platforms.slack.app` in manifest.yml is laid over it.
DEFAULT_APP: dict[str, Any] = {
    "display_information": {
        "name": "Threadwork",
        "description": "A team's coding agent, in the chat thread.",
        "background_color": "#1d3b53",
    },
    "features": {
        "app_home": {"home_tab_enabled": False, "messages_tab_enabled": True,
                     "messages_tab_read_only_enabled": False},
        "bot_user": {"display_name": "Threadwork", "always_online": True},
        "slash_commands": SLASH_COMMANDS,
    },
    "oauth_config": {
        "scopes": {"bot": ["app_mentions:read", "channels:history", "groups:history", "im:history",
                           "chat:write", "commands", "files:write", "users:read", "reactions:read"]},
    },
    "settings": {
        "event_subscriptions": {"bot_events": list(EVENT_SCOPES)},
        "interactivity": {"is_enabled": True},
        "org_deploy_enabled": False,
        "socket_mode_enabled": True,
        "token_rotation_enabled": False,
    },
}


def app_manifest(manifest: Manifest, settings: Settings) -> dict[str, Any]:
    """Return the Slack app manifest as a mapping, for the manifest's mode."""
    slack = manifest.platforms.slack
    app = _merged(DEFAULT_APP, slack.app)
    display = app.setdefault("display_information", {})
    if "name" not in slack.app.get("display_information", {}):
        display["name"] = manifest.name
    if manifest.description and "description" not in slack.app.get("display_information", {}):
        display["description"] = manifest.description
    features, app_settings = app.setdefault("features", {}), app.setdefault("settings", {})
    app_settings["socket_mode_enabled"] = slack.mode == "socket"
    if slack.mode == "http":
        url = (settings.get("SLACK_PUBLIC_URL") or PUBLIC_URL_PLACEHOLDER).rstrip("/") + EVENTS_PATH
        app_settings.setdefault("event_subscriptions", {}).setdefault("request_url", url)
        app_settings.setdefault("interactivity", {"is_enabled": True}).setdefault("request_url", url)
        for command in features.get("slash_commands", []):
            command.setdefault("url", url)
    return app


def render_manifest(manifest: Manifest, settings: Settings) -> str:
    """Return the Slack app manifest as YAML, ready for "Create New App → From a manifest"."""
    return yaml.safe_dump(app_manifest(manifest, settings), sort_keys=False, allow_unicode=True)


def bot_scopes(app: dict[str, Any]) -> set[str]:
    """Return the bot token scopes an app manifest asks for."""
    return set(app.get("oauth_config", {}).get("scopes", {}).get("bot", []))


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` laid over it: mappings merged key by key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
