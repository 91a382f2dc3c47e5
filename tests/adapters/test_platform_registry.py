"""The platform registry: one descriptor per platform, read by `run`, `doctor`, the worker ports and the manifest.

The toy platform (`tests/adapters/toy_platform.py`, one module) is added the way a Teams or
Matrix plugin would be: listed under `plugins.modules`. Nothing else names it, and the CLI
runs as a user would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot import platforms
from bot.config import Settings, load_manifest
from bot.engine import Engine, set_current
from bot.errors import ConfigError
from bot.queue import InProcessQueue
from bot.types import Reply, ThreadRef
from tests.adapters.toy_platform import ToyPort
from tests.support.engines import REPO, bot_env, run_bot

TOY_MODULE = "tests.adapters.toy_platform"
#: Long enough to count as a secret (`Settings.secret_values` skips values under 6 characters).
TOY_TOKEN = "toy-secret-0123456789"


def toy_manifest(tmp_path: Path, extra: str = "") -> Path:
    """Write a manifest that loads the toy platform as a plugin; return its path."""
    path = tmp_path / "manifest.yml"
    path.write_text(f"plugins:\n  modules: [{TOY_MODULE}]\nplatforms:\n  toy:\n    first_message: help\n{extra}")
    return path


def outbox_lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the toy, end to end --------------------------------------------------------------------------


def test_doctor_checks_the_toys_credentials(tmp_path: Path) -> None:
    manifest = toy_manifest(tmp_path)
    lacking = run_bot(["doctor", "--offline"], tmp_path, BOT_MANIFEST=str(manifest))
    assert "warn toy       missing TOY_TOKEN" in lacking.stdout.splitlines()
    assert "fix: export TOY_TOKEN (any value of 6 characters or more)" in lacking.stdout

    ready = run_bot(["doctor", "--offline"], tmp_path, BOT_MANIFEST=str(manifest), TOY_TOKEN=TOY_TOKEN)
    assert "ok   toy       TOY_TOKEN present" in ready.stdout.splitlines()
    assert TOY_TOKEN not in ready.stdout + ready.stderr


def test_run_names_the_variable_the_toy_lacks(tmp_path: Path) -> None:
    result = run_bot(["run"], tmp_path, BOT_MANIFEST=str(toy_manifest(tmp_path)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: no platform adapter can start: none is enabled with its credentials"
    assert "error: toy: set TOY_TOKEN" in lines and "error: slack: set SLACK_BOT_TOKEN, SLACK_APP_TOKEN" in lines


def test_run_starts_the_toy_which_is_answered_and_its_token_redacted(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.jsonl"
    result = run_bot(["run"], tmp_path, BOT_MANIFEST=str(toy_manifest(tmp_path)), TOY_TOKEN=TOY_TOKEN,
                     TOY_OUTBOX=str(outbox))
    assert "tests.adapters.toy_platform: started" in result.stderr, result.stderr
    assert "discord: not started (set DISCORD_TOKEN)" in result.stderr
    (reply,) = [line for line in outbox_lines(outbox) if line["kind"] == "post"]
    assert reply["thread"] == "t1" and "/agent" in reply["text"]  # the help text, posted by the toy port
    assert "toy: connected with token [redacted]" in result.stderr
    assert TOY_TOKEN not in result.stderr + result.stdout
    # The toy's serve returns once answered: with every adapter stopped, run says so and exits 1.
    assert result.returncode == 1 and "every platform adapter has stopped" in result.stderr


def test_manifest_prints_the_toys_manifest_and_refuses_an_unknown_platform(tmp_path: Path) -> None:
    manifest = toy_manifest(tmp_path)
    result = run_bot(["manifest", "toy"], tmp_path, BOT_MANIFEST=str(manifest))
    assert result.returncode == 0 and result.stdout.strip() == "Threadwork on Toy; first message: help"

    unknown = run_bot(["manifest", "teams"], tmp_path, BOT_MANIFEST=str(manifest))
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "error: no platform 'teams' has a manifest to print; choose one of: discord, slack, toy"


def test_a_worker_engine_builds_the_toys_port_from_its_descriptor(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.jsonl"
    base = {"BOT_DATA_DIR": str(tmp_path / "data"), "BOT_MANIFEST": str(toy_manifest(tmp_path)),
            "TOY_OUTBOX": str(outbox)}
    for env, has_port in (({"TOY_TOKEN": TOY_TOKEN}, True), ({}, False)):
        # A worker's engine: no adapter attached a live port, so the `chat_port` hook builds one.
        engine = Engine.from_settings(Settings.from_env({**base, **env}), queue=InProcessQueue(), load_entrypoints=False)
        set_current(engine)
        try:
            if has_port:
                port = engine.port_for("toy")
                assert isinstance(port, ToyPort)
                port.post(ThreadRef("toy", "lobby", "t1"), Reply("done: the build is green"))
                assert outbox_lines(outbox)[-1]["text"] == "done: the build is green"
            else:
                with pytest.raises(ConfigError, match="no adapter can post to 'toy'"):
                    engine.port_for("toy")
        finally:
            set_current(None)
            engine.close()


# -- the schema and the secrets read the registry -----------------------------------------------------


def test_the_toys_section_is_validated_by_its_own_model_and_unknown_platforms_stay_errors(tmp_path: Path) -> None:
    bad = toy_manifest(tmp_path, "    colour: blue\n  teams:\n    enabled: true\n")
    with pytest.raises(ConfigError) as caught:
        load_manifest(bad)
    assert str(caught.value).splitlines() == ["manifest.yml: platforms.toy.colour: unknown key",
                                              "manifest.yml: platforms.teams: unknown key"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "manifest.yml").write_text("platforms:\n  toy:\n    enabled: true\n")
    with pytest.raises(ConfigError, match="platforms.toy: unknown key"):  # not loaded: not a platform
        load_manifest(plain / "manifest.yml")


def test_a_plugin_module_that_cannot_be_imported_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yml"
    path.write_text("plugins:\n  modules: [no_such_platform_module]\nllm:\n  max_tokens: -5\n")
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("manifest.yml: plugins.modules: cannot import 'no_such_platform_module'")
    assert lines[1] == "manifest.yml: llm.max_tokens: Input should be greater than or equal to 1"


def test_the_toys_secrets_are_redacted_and_never_passed_to_the_agent(tmp_path: Path) -> None:
    load_manifest(toy_manifest(tmp_path))
    assert "TOY_TOKEN" in platforms.secret_env_vars()
    assert TOY_TOKEN in Settings.from_env({"TOY_TOKEN": TOY_TOKEN}).secret_values
    never = platforms.never_passed_to_agent()
    assert {"SLACK_", "DISCORD_", "TOY_", "DATABASE_URL", "REDIS_URL"} <= set(never)
    assert "TOY_TOKEN".startswith(never) and not "OPENAI_API_KEY".startswith(never)


def test_a_plugin_platform_of_a_built_in_name_replaces_the_built_in() -> None:
    registry = platforms.collect(["tests.adapters.toy_slack"], entrypoints=False)
    assert list(registry)[:3] == ["console", "slack", "discord"]
    assert registry["slack"].serve == "tests.adapters.toy_slack.serve"


def test_a_disabled_built_in_platform_module_contributes_nothing() -> None:
    registry = platforms.collect(disabled=["adapters.discord_platform"], entrypoints=False)
    assert list(registry) == ["console", "slack"]


# -- the built-ins ------------------------------------------------------------------------------------


def test_every_built_in_descriptor_names_what_exists() -> None:
    registry = platforms.builtin()
    assert list(registry) == ["console", "slack", "discord"]
    for platform in registry.values():
        for path in (platform.serve, platform.port, platform.manifest):
            if path is not None:
                assert callable(platforms.resolve(path)), path


def test_the_built_in_requirements_follow_the_settings(tmp_path: Path) -> None:
    manifest = load_manifest(REPO / "manifest.yml")
    slack = platforms.registered(manifest)["slack"]
    assert slack.required(manifest.platforms.slack) == ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN")
    manifest.platforms.slack.mode = "http"
    assert slack.required(manifest.platforms.slack) == ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")
    assert [p.name for p in platforms.enabled(manifest)] == ["slack", "discord"]  # the console is `chat`'s


def test_reading_the_registry_imports_no_platform_sdk(tmp_path: Path) -> None:
    code = ("import sys\nfrom bot.config import load_manifest\nfrom pathlib import Path\n"
            f"load_manifest(Path({str(REPO / 'manifest.yml')!r}))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'slack_sdk', 'slack_bolt', 'discord', 'aiohttp'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env=bot_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_register_platforms_hook_returns_each_plugins_descriptors() -> None:
    import pluggy

    from adapters import slack_platform
    from bot import hookspecs
    from tests.adapters import toy_platform

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(slack_platform)
    pm.register(toy_platform)
    assert pm.hook.register_platforms() == [[toy_platform.TOY], [slack_platform.SLACK]]  # the built-in is trylast
