"""Configuration errors: one clear line naming the key, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_manifest
from bot.errors import ConfigError
from tests.support.engines import REPO, run_bot


def test_the_shipped_manifest_is_valid() -> None:
    manifest = load_manifest(REPO / "manifest.yml")
    assert manifest.name == "Threadwork"
    assert manifest.agent.timeout_seconds == 900


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("agent:\n  timeout_seconds: soon\n", "manifest.yml: agent.timeout_seconds: Input should be a valid integer"),
        ("agnet:\n  name: x\n", "manifest.yml: agnet: unknown key"),
        ("name: [unclosed\n", "manifest.yml: line 2, column 1: invalid YAML"),
        ("- just\n- a list\n", "manifest.yml: the top level must be a mapping"),
        ("permissions:\n  agent: yes-please\n", "manifest.yml: permissions.agent: Input should be a valid list"),
    ],
)
def test_a_bad_manifest_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "manifest.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    assert str(caught.value).startswith(expected)


def test_a_malformed_manifest_gives_one_error_line_on_the_terminal(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.yml"
    bad.write_text("llm:\n  max_tokens: -5\n")
    result = run_bot(["chat"], tmp_path, input="help\n", BOT_MANIFEST=str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: manifest.yml: llm.max_tokens: Input should be greater than or equal to 1"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://bot:hunter2secret@127.0.0.1:1/threadwork",
         "error: cannot open the database postgresql+psycopg://bot:***@127.0.0.1:1/threadwork: "),
        ("not a url at all", "error: DATABASE_URL is not a database URL"),
        ("mysql+nosuchdriver://x@127.0.0.1/db", "error: DATABASE_URL names a driver that is not installed"),
    ],
)
def test_a_broken_database_url_gives_one_error_line(tmp_path: Path, url: str, expected: str) -> None:
    result = run_bot(["chat"], tmp_path, input="help\n", DATABASE_URL=url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected)
    assert "hunter2secret" not in result.stderr


def test_doctor_reports_each_check_and_how_to_fix_it(tmp_path: Path) -> None:
    result = run_bot(["doctor"], tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok   manifest")
    assert any(line.startswith("ok   database") for line in lines)
    assert any(line.startswith("FAIL queue     cannot reach Redis") for line in lines)
    assert any("fix: start redis-server or fix REDIS_URL" in line for line in lines)
    assert any(line.startswith("warn llm") for line in lines)
    assert result.stderr.strip().splitlines() == ["error: 1 check failed: queue"]
    assert result.returncode == 2


def test_run_with_no_credentials_says_how_to_enable_an_adapter(tmp_path: Path) -> None:
    result = run_bot(["run"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: no platform adapter can start: none is enabled with its credentials"
    assert "error: slack: set SLACK_BOT_TOKEN, SLACK_APP_TOKEN" in lines and "error: discord: set DISCORD_TOKEN" in lines
    assert all(line.startswith("error: ") for line in lines) and "python -m bot chat" in lines[-1]


def test_a_manifest_with_two_problems_names_both_and_migrate_refuses_it(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.yml"
    bad.write_text("llm:\n  max_tokens: -5\nagent:\n  modle: anthropic/claude-sonnet-4-6\n")
    for command in (["chat"], ["migrate"], ["run"]):
        result = run_bot(command, tmp_path, input="help\n", BOT_MANIFEST=str(bad))
        assert result.returncode == 2, command
        assert result.stderr.strip().splitlines() == [
            "error: manifest.yml: llm.max_tokens: Input should be greater than or equal to 1",
            "error: manifest.yml: agent.modle: unknown key",
        ], command
    assert not (tmp_path / "data" / "threadwork.db").exists()  # migrate changed nothing
    doctor = run_bot(["doctor"], tmp_path, BOT_MANIFEST=str(bad))
    assert doctor.stdout.count("FAIL manifest") == 2 and doctor.returncode == 2
