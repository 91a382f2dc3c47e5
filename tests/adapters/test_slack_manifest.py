"""The Slack app manifest a user creates the app from, and the scopes the code really needs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from adapters.slack import SLASH_COMMANDS
from adapters.slack_manifest import (
    COMMANDS_SCOPE,
    EVENT_SCOPES,
    METHOD_SCOPES,
    UPLOAD_V2_METHODS,
    app_manifest,
    bot_scopes,
)
from bot.config import Manifest, load_manifest
from tests.support.engines import REPO, make_settings, run_bot

#: Bolt calls this itself at start (the token check); everything else the adapter calls is in code.
BOLT_METHODS = {"auth.test"}


def web_api_methods_called() -> set[str]:
    """Return every Web API method adapters/slack*.py calls, read from the source."""
    methods = set(BOLT_METHODS)
    for path in sorted((REPO / "adapters").glob("slack*.py")):
        for name in re.findall(r"\bclient\.([a-z]+_[A-Za-z0-9_]+)\(", path.read_text(encoding="utf-8")):
            if name == "files_upload_v2":
                methods.update(UPLOAD_V2_METHODS)
            else:
                methods.add(name.replace("_", "."))
    return methods


def test_manifest_slack_prints_an_app_manifest_slack_accepts(tmp_path: Path) -> None:
    result = run_bot(["manifest", "slack"], tmp_path)
    assert result.returncode == 0, result.stderr
    app = yaml.safe_load(result.stdout)

    assert set(app) == {"display_information", "features", "oauth_config", "settings"}
    assert app["display_information"]["name"] == "Threadwork"
    assert app["features"]["bot_user"]["display_name"] == "Threadwork"
    assert [c["command"] for c in app["features"]["slash_commands"]] == ["/agent", "/ask", "/threadwork"]
    assert set(app["settings"]["event_subscriptions"]["bot_events"]) == set(EVENT_SCOPES)
    assert app["settings"]["interactivity"]["is_enabled"] is True
    assert app["settings"]["socket_mode_enabled"] is True
    assert "request_url" not in app["settings"]["event_subscriptions"]  # Socket Mode needs no public URL


def test_every_web_api_method_the_code_calls_is_covered_by_a_scope() -> None:
    app = app_manifest(load_manifest(REPO / "manifest.yml"), make_settings(Path("/nonexistent")))
    scopes = bot_scopes(app)
    called = web_api_methods_called()

    assert {"chat.postMessage", "chat.update", "files.getUploadURLExternal", "users.info"} <= called
    unknown = called - set(METHOD_SCOPES)
    assert not unknown, f"add these methods and their scopes to METHOD_SCOPES: {sorted(unknown)}"
    missing = {method: METHOD_SCOPES[method] for method in called if METHOD_SCOPES[method] not in scopes | {None}}
    assert not missing, f"manifest.yml lacks the scopes these calls need: {missing}"
    for event in app["settings"]["event_subscriptions"]["bot_events"]:
        assert EVENT_SCOPES[event] in scopes, event
    assert COMMANDS_SCOPE in scopes
    assert "files:write" in scopes and "files.upload" not in called  # the retired upload method


def test_the_manifest_lists_exactly_the_slash_commands_the_adapter_handles() -> None:
    app = app_manifest(load_manifest(REPO / "manifest.yml"), make_settings(Path("/nonexistent")))
    assert {c["command"] for c in app["features"]["slash_commands"]} == set(SLASH_COMMANDS)


def test_http_mode_gets_request_urls_and_no_socket_mode(tmp_path: Path) -> None:
    manifest = load_manifest(REPO / "manifest.yml")
    manifest.platforms.slack.mode = "http"
    app = app_manifest(manifest, make_settings(tmp_path, SLACK_PUBLIC_URL="https://bot.example.com/"))

    url = "https://bot.example.com/slack/events"
    assert app["settings"]["socket_mode_enabled"] is False
    assert app["settings"]["event_subscriptions"]["request_url"] == url
    assert app["settings"]["interactivity"]["request_url"] == url
    assert {c["url"] for c in app["features"]["slash_commands"]} == {url}


def test_without_a_manifest_file_the_defaults_make_a_complete_app(tmp_path: Path) -> None:
    app = app_manifest(Manifest(name="Helper"), make_settings(tmp_path))
    assert app["display_information"]["name"] == "Helper"
    assert bot_scopes(app) >= {scope for scope in METHOD_SCOPES.values() if scope} | set(EVENT_SCOPES.values())


def test_an_edited_app_section_overrides_only_what_it_names(tmp_path: Path) -> None:
    manifest = Manifest.model_validate({"platforms": {"slack": {"app": {
        "display_information": {"name": "Build Buddy"}, "features": {"bot_user": {"always_online": False}}}}}})
    app = app_manifest(manifest, make_settings(tmp_path))
    assert app["display_information"]["name"] == "Build Buddy"
    assert app["features"]["bot_user"] == {"display_name": "Threadwork", "always_online": False}
    assert "chat:write" in bot_scopes(app)
