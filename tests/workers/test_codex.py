"""Agent runs with the real Codex CLI (pinned @openai/codex), pointed at the scripted Responses API on 127.0.0.1."""

from __future__ import annotations

import os
import re
import time
import tomllib
from pathlib import Path

import pytest

from bot.config import Manifest, Settings
from bot.db.repositories import Runs
from bot.engine import Engine
from bot.types import EventKind, Message, RunState, ThreadRef
from plugins.agents import codex
from plugins.agents.codex_events import parse_line
from tests.fakes.openai_server import FakeOpenAIServer, Turn
from tests.fakes.responses_api import function_calls, message_texts
from tests.support.engines import REPO, EngineBuilder
from tests.support.ports import RecordingPort
from tests.workers.agent_support import ask, processes_with, requires_opencode, wait_until

CODEX_BIN = REPO / "node_modules" / ".bin" / "codex"
requires_codex = pytest.mark.skipif(
    not (CODEX_BIN.exists() and os.access(CODEX_BIN, os.X_OK)),
    reason=f"the pinned codex binary is missing at {CODEX_BIN}: run `npm install` in the checkout "
           "(package.json pins @openai/codex 0.169.0)")
#: A Codex thread id (a UUID), as `thread.started` names it.
THREAD_ID = re.compile(r"^[0-9a-f-]{36}$")
#: Seconds a whole short run may take: ~0.5 s measured, far more on 2 busy cores.
RUN_TIMEOUT_S = 120


@pytest.fixture
def model():
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


def codex_engine(make_engine: EngineBuilder, tmp_path: Path, model: FakeOpenAIServer,
                 manifest: dict | None = None, **env: str) -> tuple[Engine, RecordingPort]:
    """An engine whose Codex user config (CODEX_HOME) uses the scripted model; Codex the default agent."""
    user_home = tmp_path / "user-codex"
    model.write_codex_config(user_home)
    return make_engine(manifest=manifest or {"agent": {"name": "codex"}}, CODEX_HOME=str(user_home), **env)


def run_of(engine: Engine, run_id: int):
    with engine.db.reading() as session:
        return Runs(session).get(run_id)


def events_of(engine: Engine, run_id: int):
    with engine.db.reading() as session:
        return Runs(session).events(run_id)


# ---------------------------------------------------------------------------------------------
# Without the binary: the event parser, the config laid over the user's, the choice of agent
# ---------------------------------------------------------------------------------------------


def test_codex_event_lines_become_the_runs_typed_events() -> None:
    started, session = parse_line('{"type":"thread.started","thread_id":"01a21d09-d0a1-7160-979d-014854c0a87e"}')
    assert session == "01a21d09-d0a1-7160-979d-014854c0a87e" and started.kind == EventKind.STEP
    command, _ = parse_line('{"type":"item.completed","item":{"id":"item_1","type":"command_execution",'
                            '"command":"/bin/bash -lc \\"python3 hello.py > out.txt\\"","aggregated_output":"",'
                            '"exit_code":2,"status":"failed"}}')
    assert (command.kind, command.text, command.status) == (EventKind.TOOL, "ran `python3 hello.py > out.txt` (exit 2)", "error")
    patch, _ = parse_line('{"type":"item.completed","item":{"type":"file_change","status":"completed",'
                          '"changes":[{"path":"/w/a.py","kind":"add"},{"path":"/w/b.py","kind":"update"}]}}')
    assert (patch.kind, patch.text, patch.status) == (EventKind.TOOL, "wrote `a.py`, edited `b.py`", "completed")
    usage, _ = parse_line('{"type":"turn.completed","usage":{"input_tokens":220,"cached_input_tokens":0,'
                          '"output_tokens":11,"reasoning_output_tokens":4}}')
    assert (usage.kind, usage.tokens_in, usage.tokens_out) == (EventKind.TOKENS, 220, 15)
    # A warning item is not an error: Codex goes on after it.
    warning, _ = parse_line('{"type":"item.completed","item":{"type":"error","message":"Model metadata for `m` not found."}}')
    assert warning.kind == EventKind.STEP
    failed, _ = parse_line('{"type":"turn.failed","error":{"message":"stream disconnected"}}')
    assert (failed.kind, failed.text) == (EventKind.ERROR, "stream disconnected")
    assert parse_line("Reading additional input from stdin...") == (None, None)


def test_the_users_config_is_kept_and_the_bots_policy_laid_over_it() -> None:
    user = {"model": "m", "model_provider": "local", "approval_policy": "on-request",
            "sandbox_workspace_write": {"writable_roots": ["/home/me"], "network_access": True},
            "profile": "wild", "profiles": {"wild": {"model": "big", "sandbox_mode": "danger-full-access"}},
            "model_providers": {"local": {"name": "Local \"box\"", "base_url": "http://127.0.0.1:9/v1",
                                          "http_headers": {"X-Team": "é"}, "stream_max_retries": 2}},
            "mcp_servers": {"docs": {"command": "docs-mcp", "args": ["--port", "0"], "env": {"A": "1"}}}}
    written = tomllib.loads(codex.to_toml(codex.laid_over(user)))
    assert written["approval_policy"] == "never" and written["sandbox_mode"] == "workspace-write"
    assert written["sandbox_workspace_write"] == {"writable_roots": [], "network_access": False,
                                                  "exclude_slash_tmp": True, "exclude_tmpdir_env_var": True}
    assert written["profiles"] == {"wild": {"model": "big"}}  # a profile cannot loosen the sandbox
    assert written["model_providers"] == user["model_providers"] and written["mcp_servers"] == user["mcp_servers"]
    endpoint, key_var = codex.model_endpoint(user)
    assert endpoint.name == "local/big" and endpoint.base_url == "http://127.0.0.1:9/v1" and key_var is None


def test_agent_with_codex_is_refused_when_not_choosable(make_engine: EngineBuilder) -> None:
    engine, view = make_engine()  # the repo's manifest: agent.choosable is empty
    ask(engine, "/agent --with codex fix the tests")
    assert view.last(view.order[-1]) == ("`/agent --with codex` is not allowed here: the agents you may pick "
                                         "(agent.choosable in manifest.yml) are none.")
    ask(engine, "/agent --with nosuch fix the tests")
    with engine.db.reading() as session:
        assert Runs(session).in_conversation(1) == []  # nothing started, nothing queued
    engine2, view2 = make_engine(manifest={"agent": {"choosable": ["nosuch"]}})
    ask(engine2, "/agent --with nosuch fix it", user="U2")
    assert view2.last(view2.order[-1]) == "`/agent --with nosuch` cannot run: no agent named `nosuch` is installed."


def test_with_no_model_in_the_codex_config_the_run_fails_at_once(make_engine: EngineBuilder, tmp_path: Path) -> None:
    (tmp_path / "empty-codex").mkdir()
    engine, view = make_engine(manifest={"agent": {"name": "codex"}}, CODEX_HOME=str(tmp_path / "empty-codex"),
                               CODEX_BIN="/bin/true")
    ask(engine, "/agent write hello.py")
    engine.queue.wait(timeout=60)
    run = run_of(engine, 1)
    assert run.agent == "codex" and run.state == RunState.FAILED
    assert "No model is configured for the Codex agent" in view.last(view.order[0])


# ---------------------------------------------------------------------------------------------
# The real binary
# ---------------------------------------------------------------------------------------------


@requires_codex
def test_a_codex_run_writes_a_file_runs_a_command_and_the_thread_sees_it(tmp_path: Path, model,
                                                                         make_engine: EngineBuilder) -> None:
    escape = f"/tmp/threadwork-codex-escape-{os.getpid()}"
    model.script(
        Turn.exec_command("printf 'print(\"hello from codex\")\\n' > hello.py", usage=(900, 12)),
        Turn.exec_command("python3 hello.py > out.txt", usage=(950, 9)),
        # Refused by the sandbox: Codex 0.169.0's `exec --json` shows no item for it at all.
        Turn.exec_command(f"echo escaped > {escape}", usage=(10, 1)),
        Turn.exec_command("test -f missing.txt", usage=(20, 2)),
        Turn.text("I wrote hello.py and ran it.", usage=(1000, 14)),
    )
    engine, view = codex_engine(make_engine, tmp_path, model)
    ask(engine, "/agent write hello.py that prints a greeting and run it")
    engine.queue.wait(timeout=RUN_TIMEOUT_S)
    workspace = tmp_path / "data" / "workspaces" / "1"
    assert (workspace / "out.txt").read_text() == "hello from codex\n"  # the command really ran, in the workspace
    assert not Path(escape).exists()  # the sandbox keeps writes out of /tmp
    run = run_of(engine, 1)
    assert (run.agent, run.state) == ("codex", RunState.DONE)
    assert THREAD_ID.match(run.session_id) and run.tokens_in == 2880 and run.tokens_out == 38
    status = view.last(view.order[0])
    assert "done" in status and "✓ ran `printf 'print(\"hello from codex\")\\n' > hello.py`" in status
    assert "✓ ran `python3 hello.py > out.txt`" in status and "✗ ran `test -f missing.txt` (exit 1)" in status
    refused = model.scripted_requests[3]["input"][-1]["output"]
    assert "Read-only file system" in refused  # the model is told the write outside was refused
    assert [f.filename for f in view.files][:2] == ["hello.py", "out.txt"]  # uploaded into the thread
    assert view.last(view.order[-1]) == "I wrote hello.py and ran it."
    # Codex got the task as the prompt, and its command's result came back to the model.
    first, second = model.scripted_requests[:2]
    assert "write hello.py that prints a greeting" in message_texts(first, "user")[-1]
    assert str(workspace) in " ".join(message_texts(first, "user"))  # its <cwd> is the workspace
    config = tomllib.loads((tmp_path / "data" / "agent-state" / "1" / "codex-home" / "config.toml").read_text())
    assert config["model"] == "m" and config["approval_policy"] == "never"


@requires_codex
def test_a_follow_up_resumes_the_same_codex_thread(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.exec_command("echo first > notes.md"), Turn.text("Wrote notes.md."),
                 Turn.text("You asked me to write notes.md earlier."))
    engine, view = codex_engine(make_engine, tmp_path, model)
    ask(engine, "/agent write notes.md")
    engine.queue.wait(timeout=RUN_TIMEOUT_S)
    ask(engine, "/agent what did you do before?")
    engine.queue.wait(timeout=RUN_TIMEOUT_S)
    second, first = (run_of(engine, 2), run_of(engine, 1))
    assert (first.state, second.state) == (RunState.DONE, RunState.DONE)
    assert THREAD_ID.match(first.session_id) and second.session_id == first.session_id
    follow_up = model.scripted_requests[-1]
    prompts = message_texts(follow_up, "user")
    assert any("write notes.md" in text for text in prompts) and "what did you do before?" in prompts[-1]
    assert [call["name"] for call in function_calls(follow_up)] == ["exec_command"]
    assert "Wrote notes.md." in message_texts(follow_up, "assistant")
    assert view.last(view.order[-1]) == "You asked me to write notes.md earlier."


@requires_codex
def test_cancel_ends_codex_and_its_command_within_five_seconds(tmp_path: Path, model,
                                                               make_engine: EngineBuilder) -> None:
    marker = f"sleep 30{int(time.time()) % 10}"
    model.script(Turn.exec_command(marker), Turn.text("never reached"))
    engine, view = codex_engine(make_engine, tmp_path, model)
    ask(engine, f"/agent run {marker}")
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    started = time.monotonic()
    ask(engine, "/cancel")  # the requester herself: who else may cancel is the permissions' business
    wait_until(lambda: not processes_with(marker), 5, "every process of the run to be gone")
    assert time.monotonic() - started < 5
    engine.queue.wait(timeout=30)
    assert run_of(engine, 1).state == RunState.CANCELLED
    assert "Cancelled by ana." in view.last(view.order[0])
    assert not processes_with(str(tmp_path / "data" / "workspaces"))  # no codex left either


@requires_codex
@pytest.mark.parametrize("failure, shown", [
    (Turn.http_error(500, "scripted failure"), "Failed: "),
    (Turn.in_stream_error("the model broke"), "Failed: stream disconnected before completion: the model broke"),
])
def test_a_failed_model_call_is_reported_in_the_thread(tmp_path: Path, model, make_engine: EngineBuilder,
                                                       failure: Turn, shown: str) -> None:
    model.script(failure)
    engine, view = codex_engine(make_engine, tmp_path, model)
    started = time.monotonic()
    ask(engine, "/agent say hello")
    engine.queue.wait(timeout=RUN_TIMEOUT_S)
    assert time.monotonic() - started < 30  # reported at once, not after minutes of retries
    run = run_of(engine, 1)
    assert run.state == RunState.FAILED and run.error
    status = view.last(view.order[0])
    assert "failed" in status and shown in status
    assert any(f.filename == "run-1-log.md" for f in view.files)
    assert any(event.kind == EventKind.ERROR for event in events_of(engine, 1))


@requires_codex
def test_codex_sees_none_of_the_bots_secrets(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.exec_command("env > env.txt"), Turn.text("printed the environment"))
    secrets = {"SLACK_BOT_TOKEN": "xoxb-999-888-secretsecret", "DISCORD_TOKEN": "discord-secret-token-value",
               "ANTHROPIC_API_KEY": "sk-ant-api-secret-key", "REDIS_URL": "redis://127.0.0.1:1/9"}
    old = {name: os.environ.get(name) for name in secrets}
    os.environ.update(secrets)
    try:
        engine, _view = codex_engine(make_engine, tmp_path, model, **{k: v for k, v in secrets.items() if k != "REDIS_URL"})
        ask(engine, "/agent print the environment")
        engine.queue.wait(timeout=RUN_TIMEOUT_S)
        engine.close()
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    seen = (tmp_path / "data" / "workspaces" / "1" / "env.txt").read_text()
    for name, value in secrets.items():
        assert name not in seen and value not in seen
    assert "HOME=" + str(tmp_path / "data" / "agent-state" / "1" / "home") in seen


@requires_codex
def test_agent_with_codex_runs_codex_when_choosable(tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(Turn.text("codex was picked"))
    engine, view = codex_engine(make_engine, tmp_path, model, manifest={"agent": {"choosable": ["codex"]}})
    ask(engine, "/agent --with codex say who you are")
    engine.queue.wait(timeout=RUN_TIMEOUT_S)
    run = run_of(engine, 1)
    assert (run.agent, run.state, run.prompt) == ("codex", RunState.DONE, "say who you are")
    assert view.last(view.order[-1]) == "codex was picked"


@requires_codex
@requires_opencode
def test_a_channel_whose_manifest_says_codex_runs_codex_while_another_runs_opencode(
        tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    opencode_config = tmp_path / "opencode.json"
    model.write_opencode_config(opencode_config)
    engine, view = codex_engine(make_engine, tmp_path, model, manifest={"channels": {"test:C1": {"agent": "codex"}}},
                                OPENCODE_CONFIG=str(opencode_config))
    model.script(Turn.text("codex answering in C1"))
    ask(engine, "/agent who are you?")
    engine.queue.wait(timeout=RUN_TIMEOUT_S)
    model.script(Turn.text("opencode answering in C2"))
    engine.dispatch(Message(where=ThreadRef("test", "C2", "T9"), text="/agent who are you?", user_id="U1",
                            user_name="ana"))
    engine.queue.wait(timeout=RUN_TIMEOUT_S)
    codex_run, opencode_run = run_of(engine, 1), run_of(engine, 2)
    assert (codex_run.agent, codex_run.state) == ("codex", RunState.DONE)
    assert (opencode_run.agent, opencode_run.state) == ("opencode", RunState.DONE)
    assert "input" in model.scripted_requests[0] and "messages" in model.scripted_requests[-1]  # Responses, then chat
    answers = [view.last(m) for m in view.order]
    assert "codex answering in C1" in answers and "opencode answering in C2" in answers


@requires_codex
def test_doctor_checks_codex_when_a_channel_uses_it(tmp_path: Path, model) -> None:
    model.write_codex_config(tmp_path / "user-codex")
    manifest = Manifest.model_validate({"channels": {"slack:C9": {"agent": "codex"}}})
    settings = Settings.from_env({"CODEX_HOME": str(tmp_path / "user-codex"), "BOT_DATA_DIR": str(tmp_path)})
    checks = {check.name: check for check in codex.check_health(manifest=manifest, settings=settings, offline=False)}
    assert checks["codex model"].ok is True and model.base_url in checks["codex model"].detail
    assert checks["codex"].ok is True and "0.169.0" in checks["codex"].detail
    assert codex.check_health(manifest=Manifest(), settings=settings, offline=False) == []
