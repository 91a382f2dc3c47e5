"""The engine's funnel and its hooks, called with their documented semantics."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

from bot.db.repositories import Memories, Messages
from bot.engine import Engine
from bot.hookspecs import hookimpl
from bot.types import Attachment, Message, Reply, Route, RouteDecision, ThreadRef
from tests.support.engines import REPO, EngineBuilder, make_settings, message, run_bot
from tests.support.ports import RecordingPort


def test_a_command_is_answered_in_dispatch_and_both_messages_are_stored(engine: Engine, port: RecordingPort) -> None:
    dispatched = engine.dispatch(message("/help"))
    assert dispatched.decision.route == Route.COMMAND and dispatched.job_id is None
    assert "/history [count]" in port.posts[0]
    history = engine.history(dispatched.conversation.id)
    assert [(e.role, e.route) for e in history] == [("user", "command"), ("assistant", None)]


def test_a_redelivered_message_is_not_handled_twice(engine: Engine, port: RecordingPort) -> None:
    first = engine.dispatch(message("/help", external_id="ev-1"))
    again = engine.dispatch(message("/help", external_id="ev-1"))
    assert again.duplicate and again.message_id == first.message_id
    assert len(port.posts) == 1


def test_a_plain_question_is_enqueued_and_answered_by_the_job(engine: Engine, port: RecordingPort) -> None:
    dispatched = engine.dispatch(message("why is the build slow?"))
    assert dispatched.decision.stage == "fallback" and dispatched.decision.tentative
    assert dispatched.job_id == f"message-{dispatched.message_id}"
    assert engine.queue.wait([dispatched.job_id], 30)
    assert "ANTHROPIC_API_KEY" in port.posts[-1]
    with engine.db.session() as session:
        assert Messages(session).answered(dispatched.message_id)


class AlwaysAgentRouter:
    """A third-party router: everything not explicit goes to the agent."""

    @hookimpl
    def route_message(self, message: Message) -> RouteDecision:
        return RouteDecision(Route.AGENT, "third-party", 0.9, "test plugin says so")


def test_a_third_party_router_overrides_the_default_but_not_explicit_commands(engine: Engine) -> None:
    engine.pm.register(AlwaysAgentRouter(), name="always-agent")
    plain = engine.dispatch(message("please look at the logs"))
    assert (plain.decision.route, plain.decision.stage) == (Route.AGENT, "third-party")
    explicit = engine.dispatch(message("/history"))
    assert explicit.decision.stage == "explicit"


class Classifier:
    """An expensive stage that turns tentative decisions into agent runs."""

    @hookimpl
    def classify_message(self, message: Message, tentative: RouteDecision) -> RouteDecision:
        assert tentative.tentative
        return RouteDecision(Route.DIRECT, "llm", 0.95, "classified")


def test_classify_message_replaces_a_tentative_decision_in_the_job(engine: Engine) -> None:
    engine.pm.register(Classifier(), name="classifier")
    dispatched = engine.dispatch(message("hmm, thoughts on the retry logic?"))
    engine.queue.wait([dispatched.job_id], 30)
    with engine.db.session() as session:
        assert Messages(session).decision(dispatched.message_id).stage == "llm"


class Answerer:
    """A direct-answer plugin that streams two edits and returns the final text."""

    @hookimpl
    def answer_message(self, message: Message, conversation, memories, engine: Engine, reply_to: int) -> str:
        self.memories = memories
        message_id = engine.say(conversation, Reply("thinking…", partial=True))
        engine.edit(conversation, message_id, Reply("The answer is 42."), final=True, reply_to=reply_to)
        return "The answer is 42."


def test_answer_message_streams_edits_and_remember_keeps_the_exchange(engine: Engine, port: RecordingPort) -> None:
    answerer = Answerer()
    engine.pm.register(answerer, name="answerer")
    engine.dispatch(message("hello"))  # some thread history to recall
    dispatched = engine.dispatch(message("what is the answer?"))
    engine.queue.wait([dispatched.job_id], 30)
    assert port.edits[-1][1] == "The answer is 42."
    assert any("hello" in item.text for item in answerer.memories)  # thread history recalled
    history = engine.history(dispatched.conversation.id)
    assert history[-1].text == "The answer is 42."
    with engine.db.session() as session:
        assert Messages(session).answered(dispatched.message_id)
        remembered = Memories(session).for_conversation(dispatched.conversation.id, kind="exchange")
    assert "what is the answer?" in remembered[0].text and "42" in remembered[0].text


def test_recall_brings_back_an_exchange_from_another_thread_of_the_channel(engine: Engine) -> None:
    other = Message(where=ThreadRef("test", "C1", "T0"), text="how do we deploy the billing service?",
                    user_id="U2", user_name="bo")
    first = engine.dispatch(other)
    engine.remember(other, first.conversation, "With `make deploy-billing`.")
    asked = engine.dispatch(message("remind me how to deploy billing"))
    per_plugin = engine.hook.recall(message=message("remind me how to deploy billing"),
                                    conversation=asked.conversation, budget_tokens=500, engine=engine)
    # The context builder answers for thread and memories together; the thread-history plugin
    # only reads the platform's earlier messages into the thread (nothing to read here).
    assert len([items for items in per_plugin if items]) == 1
    items = engine.recall(message("remind me how to deploy billing"), asked.conversation, budget_tokens=500)
    assert any("make deploy-billing" in item.text and item.source == "channel" for item in items)
    assert sum(item.tokens for item in items) <= 500
    tight = engine.recall(message("remind me how to deploy billing"), asked.conversation, budget_tokens=10)
    assert sum(item.tokens for item in tight) <= 10


def test_agents_are_collected_once_and_startup_reaches_a_plugin_registered_late(engine: Engine) -> None:
    assert "opencode" in engine.agents  # the built-in agent, collected at start
    seen = SimpleNamespace(started=None)

    class LatePlugin:
        @hookimpl
        def startup(self, engine):
            seen.started = engine

    engine.pm.register(LatePlugin(), name="late-plugin")
    assert seen.started is engine  # startup is historic: no second call by anyone


def test_a_misspelled_hook_stops_the_start_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "typo_plugin.py").write_text(
        "from bot.hookspecs import hookimpl\n\n\n@hookimpl\ndef route_mesage(message):\n    return None\n")
    manifest = tmp_path / "manifest.yml"
    manifest.write_text((REPO / "manifest.yml").read_text().replace("  modules: []", "  modules: [typo_plugin]", 1))
    import os

    for command in (["chat"], ["doctor"]):
        result = run_bot(command, tmp_path, input="hello\n", BOT_MANIFEST=str(manifest),
                         PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "error: plugin 'typo_plugin' implements 'route_mesage', which is not a Threadwork hook (misspelled?)"), command
        assert "route_message" in lines[0] and result.returncode == 2


def test_report_progress_is_called_for_every_implementation(engine: Engine) -> None:
    from bot.types import AgentRun, EventKind, RunEvent, RunState

    received = []

    class Observer:
        @hookimpl
        def report_progress(self, run, event, engine):
            received.append((run.id, event.kind))

    engine.pm.register(Observer(), name="observer")
    run = AgentRun(id=7, conversation_id=1, agent="x", prompt="p", state=RunState.RUNNING)
    engine.hook.report_progress(run=run, event=RunEvent(EventKind.TEXT, text="hi"), engine=engine)
    assert received == [(7, EventKind.TEXT)]


def test_chat_port_hook_gives_workers_a_port_for_the_console_over_redis(make_engine: EngineBuilder,
                                                                         redis_url: str) -> None:
    from adapters.console import RemoteConsolePort

    built, _ = make_engine(REDIS_URL=redis_url)
    assert isinstance(built.hook.chat_port(platform="console", engine=built), RemoteConsolePort)
    assert isinstance(built.port_for("console"), RemoteConsolePort)
    assert built.hook.chat_port(platform="nowhere", engine=built) is None


def test_secrets_never_reach_the_chat(make_engine: EngineBuilder) -> None:
    token = "xoxb-1111-2222-abcdefghijklmnop"
    built, port = make_engine(SLACK_BOT_TOKEN=token, ANTHROPIC_API_KEY="sk-ant-secret-value-123")
    conversation = built.dispatch(message("/help")).conversation
    built.say(conversation, f"the token is {token} and the key is sk-ant-secret-value-123")
    built.upload(conversation, Attachment("log.txt", f"token={token}\n".encode()))
    assert token not in port.posts[-1] and "sk-ant-secret" not in port.posts[-1]
    assert "[redacted]" in port.posts[-1]
    assert port.files[-1].data == b"token=[redacted]\n"
    assert token not in "".join(e.text for e in built.history(conversation.id))


def test_trace_plugins_logs_every_hook_call(make_engine: EngineBuilder, caplog) -> None:
    built, _ = make_engine(BOT_TRACE_PLUGINS="1")
    with caplog.at_level(logging.INFO, logger="bot.plugins"):
        built.dispatch(message("/help"))
    assert any("hook route_message(" in record.getMessage() for record in caplog.records)
    assert any("hook route_message returned" in record.getMessage() for record in caplog.records)


class PingPlugin:
    """A third-party plugin adding a chat command."""

    @hookimpl
    def register_commands(self):
        from bot.types import Command

        return [Command("ping", "answer pong", lambda context: f"pong {context.argument}".strip(), usage="/ping [text]")]


def test_register_commands_adds_a_plugin_command_to_dispatch_and_help(tmp_path: Path) -> None:
    from bot.config import load_manifest
    from bot.db import Database
    from bot.plugins import make_plugin_manager
    from bot.queue import InProcessQueue

    settings = make_settings(tmp_path)
    manifest = load_manifest(settings.manifest_path)
    pm = make_plugin_manager(manifest, load_entrypoints=False)
    pm.register(PingPlugin(), name="ping-plugin")
    db = Database(settings.database_url)
    db.migrate()
    built = Engine(settings, manifest, db, InProcessQueue(), pm)
    try:
        port = RecordingPort()
        built.attach_port(port)
        names = [c.name for commands in built.hook.register_commands() for c in commands]
        assert "ping" in names and "help" in names
        built.dispatch(message("/ping hello"))
        built.dispatch(message("help"))
        assert port.posts[0] == "pong hello"
        assert "`/ping [text]` - answer pong" in port.posts[1]
    finally:
        built.close()


def test_manifest_modules_load_plugins_and_a_missing_one_is_a_config_error(tmp_path: Path) -> None:
    import pytest

    from bot.config import Manifest
    from bot.errors import ConfigError
    from bot.plugins import make_plugin_manager

    pm = make_plugin_manager(Manifest.model_validate({"plugins": {"modules": ["bench.bench_plugin"]}}),
                             load_entrypoints=False)
    assert pm.get_plugin("bench.bench_plugin") is not None
    with pytest.raises(ConfigError, match="plugins.modules: cannot import 'no_such_plugin_mod'"):
        make_plugin_manager(Manifest.model_validate({"plugins": {"modules": ["no_such_plugin_mod"]}}),
                            load_entrypoints=False)
    blocked = make_plugin_manager(Manifest.model_validate({"plugins": {"disabled": ["plugins.smalltalk"]}}),
                                  load_entrypoints=False)
    assert blocked.get_plugin("plugins.smalltalk") is None


def test_a_forked_work_horse_is_not_blocked_by_a_lock_its_parent_held(engine: Engine) -> None:
    """RQ forks a work-horse while the worker's reaper thread may hold an engine lock (resolving a
    chat port, say); the child must get a fresh one, or it waits forever (the restart soak saw it)."""
    import signal
    import threading

    held, release = threading.Event(), threading.Event()

    def reaper_like() -> None:
        with engine._ports_lock:  # what port_for holds while it asks the chat_port hook
            held.set()
            release.wait(10)

    thread = threading.Thread(target=reaper_like)
    thread.start()
    assert held.wait(5)
    child = os.fork()
    if child == 0:  # the work-horse: resolving a port must not block (SIGALRM ends it if it does)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(5)
        try:
            engine.port_for("test")
        except BaseException:
            os._exit(1)
        os._exit(0)
    release.set()
    thread.join(5)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # not killed by the alarm
