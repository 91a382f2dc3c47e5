"""What Discord users see before anything is sent: split messages, status embeds, the invite URL."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from adapters.discord_format import split_markdown, status_embed, thread_name
from adapters.discord_manifest import render_manifest
from adapters.discord_port import apply_url_overrides
from bot.config import Manifest, Settings
from bot.errors import ConfigError
from bot.types import RunState, RunStatus
from tests.support.engines import make_settings, run_bot

FENCE_SEAM = re.compile(r"``````[^\n]*\n")  # a fence the splitter closed, then reopened


def assert_well_split(text: str, parts: list[str], limit: int) -> None:
    assert all(len(part) <= limit for part in parts)
    assert all(len(re.findall(r"^```", part, re.M)) % 2 == 0 for part in parts)
    assert FENCE_SEAM.sub("", "".join(parts)) == text


def test_a_short_text_is_one_message() -> None:
    assert split_markdown("Done: **3** files changed.") == ["Done: **3** files changed."]


def test_cuts_fall_at_paragraph_ends_when_they_can() -> None:
    paragraphs = [f"Paragraph {i}. " + "The retry loop backs off. " * 12 + "\n\n" for i in range(12)]
    text = "".join(paragraphs)
    parts = split_markdown(text, 1_000)
    assert_well_split(text, parts, 1_000)
    assert all(part.endswith("\n\n") for part in parts[:-1])


def test_a_code_block_that_fits_is_never_cut() -> None:
    block = "```js\n" + "const retries = 3;\n" * 20 + "```\n"
    text = "Intro.\n\n" + "x" * 500 + "\n\n" + block + "\nOutro.\n"
    parts = split_markdown(text, 700)
    assert_well_split(text, parts, 700)
    assert any(block in part for part in parts)


def test_a_code_block_longer_than_a_message_is_closed_and_reopened_with_its_language() -> None:
    text = "Here is the log:\n\n```text\n" + "".join(f"12:00:{i:02d} request {i} ok\n" for i in range(200)) + "```\nEnd.\n"
    parts = split_markdown(text, 1_000)
    assert_well_split(text, parts, 1_000)
    assert len(parts) >= 5
    assert all(part.startswith("```text\n") for part in parts[1:])
    assert all(part.rstrip("\n").endswith("```") for part in parts[:-1])


def test_a_single_huge_line_is_cut_at_spaces() -> None:
    text = "word " * 1_000
    parts = split_markdown(text, 2_000)
    assert_well_split(text, parts, 2_000)
    assert all(part.endswith(" ") for part in parts)


def test_thread_names_are_the_first_line_within_100_characters() -> None:
    assert thread_name("  fix the   login bug\nsee the logs") == "fix the login bug"
    assert len(thread_name("x" * 300)) == 100 and thread_name("x" * 300).endswith("…")
    assert thread_name("   ") == "Threadwork"


def test_a_status_with_a_very_long_checklist_stays_within_embed_limits() -> None:
    checklist = [(f"Edit src/module_{i}.py: " + "y" * 200, i % 2 == 0) for i in range(100)]
    status = RunStatus(9, RunState.RUNNING, "opencode", "alice", 30, checklist=checklist, hidden_items=4,
                       latest_text="z" * 5_000, note="n" * 3_000)
    embed = status_embed(status)
    steps = next(field.value for field in embed.fields if field.name == "Steps")
    assert len(embed) <= 6_000 and len(steps) <= 1_024 and len(embed.description or "") <= 4_096
    assert steps.startswith("… and ") and "earlier step(s)" in steps.splitlines()[0]
    assert "module_99" in steps  # the newest steps are the ones kept


# -- the Discord section of the manifest --------------------------------------------------------

#: The manifest's permissions as Discord's bit flags (Discord API docs, Permissions).
MANIFEST_PERMISSIONS = ((1 << 10) | (1 << 11) | (1 << 38) | (1 << 35) | (1 << 16) | (1 << 14) | (1 << 15)
                        | (1 << 31))


def settings(tmp_path: Path, **env: str) -> Settings:
    return make_settings(tmp_path, **env)


def manifest_yml(tmp_path: Path) -> Manifest:
    from bot.config import load_manifest

    return load_manifest(settings(tmp_path).manifest_path)


def test_the_invite_url_uses_the_client_id_the_scopes_and_the_permissions(tmp_path: Path) -> None:
    out = render_manifest(manifest_yml(tmp_path), settings(tmp_path, DISCORD_CLIENT_ID="1234567890123"))
    assert out.splitlines()[-1] == ("https://discord.com/oauth2/authorize?client_id=1234567890123"
                                    f"&scope=bot+applications.commands&permissions={MANIFEST_PERMISSIONS}")
    assert "MESSAGE CONTENT INTENT" in out and "guilds, guild_messages, dm_messages, message_content" in out


def test_without_a_client_id_the_application_id_is_read_from_the_token(tmp_path: Path) -> None:
    token = base64.b64encode(b"987654321098765432").decode().rstrip("=") + ".GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"
    out = render_manifest(manifest_yml(tmp_path), settings(tmp_path, DISCORD_TOKEN=token))
    assert "client_id=987654321098765432&" in out and token not in out


def test_without_a_client_id_or_a_token_it_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DISCORD_CLIENT_ID"):
        render_manifest(manifest_yml(tmp_path), settings(tmp_path))


def test_an_unknown_permission_name_is_named_in_the_error(tmp_path: Path) -> None:
    manifest = Manifest.model_validate({"platforms": {"discord": {"permissions": ["send_messages", "send_mesages"]}}})
    with pytest.raises(ConfigError, match="platforms.discord.permissions: unknown permission 'send_mesages'"):
        render_manifest(manifest, settings(tmp_path, DISCORD_CLIENT_ID="1"))


def test_bot_manifest_discord_prints_the_invite_url(tmp_path: Path) -> None:
    result = run_bot(["manifest", "discord"], tmp_path, DISCORD_CLIENT_ID="1234567890123")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("https://discord.com/oauth2/authorize?client_id=1234567890123")
    missing = run_bot(["manifest", "discord"], tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: set DISCORD_CLIENT_ID")


def test_the_url_overrides_point_discord_py_at_another_server(tmp_path: Path) -> None:
    import discord.gateway
    import discord.http

    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        apply_url_overrides(settings(tmp_path, DISCORD_API_URL="http://127.0.0.1:9/",
                                     DISCORD_GATEWAY_URL="ws://127.0.0.1:9/"))
        assert discord.http.Route.BASE == "http://127.0.0.1:9/api/v10"  # the API version is added when missing
        assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:9/"
        assert discord.http.Route("GET", "/users/@me").url == "http://127.0.0.1:9/api/v10/users/@me"
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway
