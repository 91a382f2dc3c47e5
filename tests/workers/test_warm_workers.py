"""Warm opencode across real RQ worker processes on a real redis-server, and a hung server.

Each `python -m bot worker` starts its own `opencode serve` in the background; the scripted
model on 127.0.0.1 sees every request, so a test can tell whether a follow-up carried the
conversation's history.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from redis import Redis
from rq.job import Job
from sqlalchemy import text

from bot.db.repositories import Conversations, Runs
from bot.types import Message, RunState, ThreadRef
from plugins.agents.opencode import OFFLINE_ENV, agent_config
from plugins.agents.opencode_server import (
    OpencodeServer,
    ServerSpec,
    directory_header,
    running_servers,
    serving_pid,
)
from plugins.agents.opencode_sessions import bring_session, session_seq
from tests.fakes.openai_fixtures import OPENCODE_BIN
from tests.fakes.openai_server import Turn
from tests.support.engines import REPO, EngineBuilder, run_bot
from tests.support.engines import WHERE as IN_PROCESS
from tests.workers.agent_support import processes_with, requires_opencode, wait_until, warm_settings

pytestmark = requires_opencode

WHERE = ThreadRef("console", "local", "warm-workers")
#: Seconds a worker's server gets to become ready on 2 busy cores (~5-9 s measured).
SERVER_READY_S = 90
#: Seconds one agent run through a worker gets.
RUN_S = 180


def start_worker(settings, name: str) -> subprocess.Popen[str]:
    """Start `python -m bot worker`; its log goes to `worker-<name>.log` beside the manifest (read on failure)."""
    env = {**os.environ, **{k: v for k, v in settings.env.items() if v}, "PYTHONPATH": str(REPO)}
    with open(Path(settings.manifest_path).parent / f"worker-{name}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "bot", "worker", "--name", name], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def worker_log(settings) -> str:
    """Return every worker's log of this test, for an assertion's message."""
    logs = sorted(Path(settings.manifest_path).parent.glob("worker-*.log"))
    return "\n".join(f"--- {path.name}\n{path.read_text()[-4000:]}" for path in logs)


def server_state(tmp_path: Path, worker: subprocess.Popen[str]) -> Path:
    return tmp_path / "data" / "agent-state" / f"server-{worker.pid}"


def server_processes(state: Path) -> list[int]:
    """Return the pids of every process running in a server's state dir (the server and its wrapper)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == state:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for_server(tmp_path: Path, worker: subprocess.Popen[str]) -> Path:
    state = server_state(tmp_path, worker)
    log = state / "serve.log"
    wait_until(lambda: log.is_file() and "listening on" in log.read_text(), SERVER_READY_S,
               "the worker's opencode server to listen")
    return state


def stop_worker(worker: subprocess.Popen[str]) -> int:
    """SIGTERM the worker as a process manager would (its own pid only); return its exit status."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            return worker.wait(10)
    return worker.returncode


def ask_and_wait(engine, text_: str, n: int):
    engine.dispatch(Message(where=WHERE, text=text_, user_id="U1", user_name="ana"))

    def ended():
        with engine.db.reading() as session:
            conversation = Conversations(session).find(WHERE)
            runs = Runs(session).in_conversation(conversation.id) if conversation else []  # newest first
        oldest_first = runs[::-1]
        done = len(runs) >= n and oldest_first[n - 1].state in (RunState.DONE, RunState.FAILED, RunState.CANCELLED)
        return oldest_first[n - 1] if done else None

    return wait_until(ended, RUN_S, f"run {n} to end")


def replies(engine) -> list[str]:
    with engine.db.reading() as session:
        return list(session.execute(text("select text from messages where role = 'assistant' order by id")).scalars())


def wait_for_reply(engine, answer: str) -> None:
    """Wait until the thread shows the agent's answer (posted just after the run is marked done)."""
    wait_until(lambda: answer in replies(engine), 30, f"the reply {answer!r} in the thread")


def cold_fallbacks(engine, run_id: int) -> list[str]:
    with engine.db.reading() as session:
        return [e.text for e in Runs(session).events(run_id) if e.name == "cold-fallback"]


def test_a_follow_up_continues_the_session_on_whichever_worker_takes_it(tmp_path: Path, model, redis_url: str,
                                                                         make_engine: EngineBuilder) -> None:
    model.script(Turn.bash("echo one > one.txt"), Turn.text("Wrote one.txt."),
                 Turn.text("FIRST FOLLOW-UP on the same worker."),
                 Turn.text("SECOND FOLLOW-UP on the other worker."))
    settings = warm_settings(tmp_path, model, REDIS_URL=redis_url)
    first = start_worker(settings, "warm-a")
    second = None
    engine, _ = make_engine(settings)  # jobs go to Redis, for the worker processes
    try:
        state_a = wait_for_server(tmp_path, first)
        run1 = ask_and_wait(engine, "/agent write one.txt", 1)
        assert run1.state == RunState.DONE, run1.error
        run2 = ask_and_wait(engine, "/agent what is in the folder?", 2)
        assert run2.state == RunState.DONE, run2.error
        assert cold_fallbacks(engine, run1.id) == [] and cold_fallbacks(engine, run2.id) == [], worker_log(settings)
        assert run2.session_id == run1.session_id and session_seq(state_a, run1.session_id) >= 0
        wait_for_reply(engine, "FIRST FOLLOW-UP on the same worker.")

        # The first worker stops (SIGTERM): its server goes with it, nothing of it is left.
        assert server_processes(state_a)
        assert stop_worker(first) == 0
        assert server_processes(state_a) == []

        second = start_worker(settings, "warm-b")
        wait_for_server(tmp_path, second)
        run3 = ask_and_wait(engine, "/agent and now?", 3)
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
    assert run3.state == RunState.DONE, run3.error
    assert run3.session_id == run1.session_id
    assert cold_fallbacks(engine, run3.id) == []  # carried over to the second worker's server, not cold
    assert session_seq(server_state(tmp_path, second), run1.session_id) >= 0
    # The model got the whole conversation in the follow-up the second worker ran.
    history = json.dumps(model.scripted_requests[-1]["messages"])
    for said in ("write one.txt", "echo one", "Wrote one.txt.", "what is in the folder?",
                 "FIRST FOLLOW-UP on the same worker.", "and now?"):
        assert said in history, said
    wait_for_reply(engine, "SECOND FOLLOW-UP on the other worker.")
    assert server_processes(server_state(tmp_path, second)) == []


def test_follow_ups_go_back_to_the_worker_whose_server_holds_the_session(tmp_path: Path, model, redis_url: str,
                                                                        make_engine: EngineBuilder) -> None:
    """With two warm workers, every run of a conversation goes to the worker that ran its first:
    its server has the session, so nothing is carried over and the other server never sees it."""
    model.script(Turn.text("First answer."), Turn.text("Second answer."), Turn.text("Third answer."))
    settings = warm_settings(tmp_path, model, REDIS_URL=redis_url)
    workers = [start_worker(settings, "warm-a"), start_worker(settings, "warm-b")]
    engine, _ = make_engine(settings)
    try:
        states = [wait_for_server(tmp_path, worker) for worker in workers]
        ended = [ask_and_wait(engine, f"/agent step {n}", n) for n in (1, 2, 3)]
        assert [run.state for run in ended] == [RunState.DONE] * 3, worker_log(settings)
        wait_for_reply(engine, "Third answer.")
    finally:
        codes = [stop_worker(worker) for worker in workers]
    assert codes == [0, 0]
    assert {run.session_id for run in ended} == {ended[0].session_id}
    assert all(cold_fallbacks(engine, run.id) == [] for run in ended)
    with Redis.from_url(redis_url) as redis:
        taken_by = {Job.fetch(f"run-{run.id}", connection=redis).worker_name for run in ended}
    assert len(taken_by) == 1, taken_by
    holder = ["warm-a", "warm-b"].index(taken_by.pop())
    assert session_seq(states[holder], ended[0].session_id) >= 0
    assert session_seq(states[1 - holder], ended[0].session_id) == -1  # never carried over


def test_a_hung_server_is_restarted_and_the_run_completes_by_the_fallback(tmp_path: Path, model,
                                                                         make_engine: EngineBuilder) -> None:
    marker = f"sleep 30.{os.getpid()}"  # unique: other tests' sleeps run on this machine too
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("Finished after the hang."))
    engine, view = make_engine(warm_settings(tmp_path, model))
    engine.agents["opencode"].warm_up()  # as the console bot does at start
    (server,) = running_servers()
    wait_until(lambda: server.alive() and server.healthy(), SERVER_READY_S, "the server to be ready")
    engine.dispatch(Message(where=IN_PROCESS, text="/agent sleep a while", user_id="U1", user_name="ana"))
    wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
    hung_pid = serving_pid(server.pid)
    os.kill(hung_pid, signal.SIGSTOP)  # alive, but answers nothing
    engine.queue.wait(timeout=RUN_S)
    with engine.db.reading() as session:
        run = Runs(session).in_conversation(Conversations(session).find(IN_PROCESS).id)[0]
    assert run.state == RunState.DONE, run.error
    assert "Finished after the hang." in view.last(view.order[-1])
    assert cold_fallbacks(engine, run.id)
    # The watchdog replaced the hung server; the hung one and its command are gone.
    wait_until(lambda: server.restarts >= 1 and server.alive() and server.healthy(), SERVER_READY_S, "a new server")
    assert server.pid != hung_pid
    wait_until(lambda: not Path(f"/proc/{hung_pid}").exists(), 10, "the hung server to be gone")
    assert not processes_with(marker)


def test_the_console_bot_starts_its_server_and_leaves_none_behind(tmp_path: Path, model) -> None:
    model.script(Turn.text("Answered on the warm server."))
    settings = warm_settings(tmp_path, model)
    chat = run_bot(["chat"], tmp_path, input="/agent say something\n", timeout=240,
                   BOT_MANIFEST=str(settings.manifest_path), OPENCODE_CONFIG=settings.get("OPENCODE_CONFIG"))
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.rstrip().endswith("Answered on the warm server.")
    (state,) = (tmp_path / "data" / "agent-state").glob("server-*")  # the chat process's own server
    assert (state / "serve.log").read_text().count("listening on") == 1
    assert server_processes(state) == []  # stopped when the console bot exited


def test_a_server_holding_an_old_copy_of_a_session_gets_the_newest(tmp_path: Path, model) -> None:
    """A conversation goes A -> B -> A: A's own copy is stale by then and is replaced by B's."""
    states = tmp_path / "agent-state"
    config = tmp_path / "opencode.json"
    model.write_opencode_config(config)

    def server(name: str) -> OpencodeServer:
        (states / name).mkdir(parents=True)
        return OpencodeServer(ServerSpec(binary=OPENCODE_BIN, config=agent_config(config, False),
                                         env=tuple(sorted(OFFLINE_ENV.items())), state_dir=states / name))

    first, second = server("server-1"), server("server-2")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    headers = directory_header(workspace)

    def prompt(on: OpencodeServer, session_id: str, words: str, reply: str) -> None:
        model.script(Turn.text(reply))
        with on.client() as api:
            assert bring_session(api, headers, session_id, workspace, on.spec.state_dir, states)
            api.post(f"/session/{session_id}/prompt_async", headers=headers,
                     json={"parts": [{"type": "text", "text": words}]}).raise_for_status()
            wait_until(lambda: reply in json.dumps(api.get(f"/session/{session_id}/message", headers=headers).json()),
                       RUN_S, f"the answer {reply!r}")

    try:
        first.ensure(SERVER_READY_S)
        second.ensure(SERVER_READY_S)
        with first.client() as api:
            session_id = api.post("/session", headers=headers, json={"title": "t"}).json()["id"]
        prompt(first, session_id, "ONE", "reply one")
        prompt(second, session_id, "TWO", "reply two")
        assert session_seq(first.spec.state_dir, session_id) < session_seq(second.spec.state_dir, session_id)
        prompt(first, session_id, "THREE", "reply three")
    finally:
        first.stop()
        second.stop()
    history = json.dumps(model.scripted_requests[-1]["messages"])
    for said in ("ONE", "reply one", "TWO", "reply two", "THREE"):
        assert said in history, said
