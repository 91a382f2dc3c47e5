"""The agent's model out of the box: doctor checks it, and a run never waits on a dead endpoint."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from bot.types import RunState
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.support.engines import REPO, EngineBuilder, run_bot
from tests.workers.agent_support import agent_settings, ask, processes_with, requires_opencode


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manifest_with(tmp_path: Path, agent_lines: str) -> Path:
    path = tmp_path / "manifest.yml"
    text = (REPO / "manifest.yml").read_text()
    path.write_text(text.replace("  model: null             # provider/model", agent_lines + "  # provider/model", 1))
    return path


def doctor_lines(result) -> dict[str, str]:
    """Return the doctor's lines keyed by check name ("model", "agent"...), fix lines appended."""
    lines: dict[str, str] = {}
    last = ""
    for line in result.stdout.splitlines():
        if line.startswith(" "):
            lines[last] += "\n" + line.strip()
        else:
            last = line[5:].split()[0]
            lines[last] = line
    return lines


@pytest.fixture
def model():
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


def test_doctor_calls_an_openai_compatible_model_once_and_says_it_answered(tmp_path: Path, model) -> None:
    config = tmp_path / "opencode.json"
    model.write_opencode_config(config)
    result = run_bot(["doctor"], tmp_path, OPENCODE_CONFIG=str(config))
    lines = doctor_lines(result)
    assert lines["model"].startswith("ok   model     local/") and "answered in" in lines["model"], result.stdout
    assert lines["agent"].startswith("ok   agent") and "1.18.33" in lines["agent"]
    assert [body["max_tokens"] for body in model.requests] == [1]  # one tiny request
    assert result.returncode == 0, result.stderr

    offline = doctor_lines(run_bot(["doctor", "--offline"], tmp_path, OPENCODE_CONFIG=str(config)))
    assert offline["model"].startswith("warn model") and "not called (--offline)" in offline["model"]
    assert len(model.requests) == 1


def test_doctor_checks_an_anthropic_model_with_the_key_passed_to_the_agent(tmp_path: Path) -> None:
    server = FakeAnthropicServer(api_key="sk-ant-right-key-0000000000").start()
    try:
        config = tmp_path / "opencode.json"
        config.write_text(json.dumps({"provider": {"anthropic": {"options": {"baseURL": server.base_url + "/v1"}}}}))
        manifest = manifest_with(tmp_path, "  model: anthropic/claude-sonnet-4-6\n  pass_env: [ANTHROPIC_API_KEY]\n")
        manifest.write_text(manifest.read_text().replace("  pass_env: []", "  # pass_env"))
        env = {"OPENCODE_CONFIG": str(config), "BOT_MANIFEST": str(manifest)}
        good = run_bot(["doctor"], tmp_path, ANTHROPIC_API_KEY="sk-ant-right-key-0000000000", **env)
        assert doctor_lines(good)["model"].startswith("ok   model     anthropic/claude-sonnet-4-6 answered in"), good.stdout
        bad = run_bot(["doctor"], tmp_path, ANTHROPIC_API_KEY="sk-ant-wrong-key-0000000000", **env)
        assert "FAIL model     anthropic/claude-sonnet-4-6 answered HTTP 401" in bad.stdout
        assert "sk-ant-wrong" not in bad.stdout + bad.stderr
        assert bad.stderr.strip().splitlines() == ["error: 1 check failed: model"] and bad.returncode == 2
        none = run_bot(["doctor"], tmp_path, **env)  # the key is listed but not exported
        assert "FAIL model     anthropic/claude-sonnet-4-6: no API key reaches the agent" in none.stdout
    finally:
        server.stop()


def test_doctor_fails_when_the_model_cannot_be_reached(tmp_path: Path) -> None:
    config = tmp_path / "opencode.json"
    port = closed_port()
    FakeOpenAIServer(port=port).write_opencode_config(config)
    result = run_bot(["doctor"], tmp_path, OPENCODE_CONFIG=str(config))
    assert f"FAIL model     local/m at http://127.0.0.1:{port}/v1: connection refused" in result.stdout, result.stdout
    assert result.returncode == 2


def test_without_a_model_doctor_warns_and_a_missing_binary_is_only_a_warning(tmp_path: Path) -> None:
    result = run_bot(["doctor"], tmp_path, OPENCODE_BIN="/nonexistent/opencode")
    lines = doctor_lines(result)
    assert lines["model"].startswith("warn model     no model is configured for the coding agent")
    assert lines["agent"].startswith("warn agent     the opencode binary was not found")
    assert "fix: run `npm install`" in lines["agent"]
    assert result.returncode == 0  # the chat works without the agent

    manifest = manifest_with(tmp_path, "  model: local/m\n")
    wanted = run_bot(["doctor", "--offline"], tmp_path, OPENCODE_BIN="/nonexistent/opencode", BOT_MANIFEST=str(manifest))
    assert doctor_lines(wanted)["agent"].startswith("FAIL agent") and wanted.returncode == 2


@requires_opencode
def test_a_run_whose_model_cannot_be_reached_fails_at_once_with_the_reason(tmp_path: Path,
                                                                          make_engine: EngineBuilder) -> None:
    unreachable = FakeOpenAIServer(port=closed_port())  # configured, never started
    engine, view = make_engine(agent_settings(tmp_path, unreachable))
    ask(engine, "/agent write hello.py")
    engine.queue.wait(timeout=60)
    with engine.db.reading() as session:
        from bot.db.repositories import Runs

        run = Runs(session).get(1)
        events = Runs(session).events(1)
    assert run.state == RunState.FAILED
    assert f"cannot be reached at {unreachable.base_url} (connection refused)" in run.error
    assert "cannot be reached" in view.last(view.order[0])
    assert events == []  # opencode never started to retry for a minute
    assert not processes_with(f"opencode run --format json --dir {tmp_path}")
    log = next(f for f in view.files if f.filename == "run-1-log.md")
    assert b"connection refused" in log.data  # the attached log says why, not only what was asked


def test_the_readme_openai_compatible_config_resolves_its_key_from_the_passed_environment() -> None:
    from plugins.agents.opencode_model import resolve_endpoint

    readme = (REPO / "README.md").read_text()
    example = readme.split("```json\n", 1)[1].split("```", 1)[0]  # the first JSON block: the agent's config
    config = json.loads(example)
    endpoint = resolve_endpoint(None, config, {"LOCAL_MODEL_KEY": "k-123"})
    assert endpoint is not None and endpoint.api == "openai" and endpoint.api_key == "k-123"
    assert endpoint.base_url == "http://127.0.0.1:8000/v1" and endpoint.model_id == "qwen3-coder"
    anthropic = resolve_endpoint("anthropic/claude-sonnet-4-6", {}, {"ANTHROPIC_API_KEY": "sk-ant-x"})
    assert anthropic == type(anthropic)("anthropic/claude-sonnet-4-6", "anthropic", "https://api.anthropic.com/v1",
                                        "sk-ant-x")
