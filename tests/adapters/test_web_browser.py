"""The web view in a real headless Chromium, following real opencode runs against the scripted model.

Each test takes the link from the status message as the thread shows it (the RecordingPort),
opens it in Chromium and watches what a person would: the state changing live, the steps with
their output, the diff, a file's preview, the Cancel button. Screenshots land in docs/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.db.repositories import Runs
from bot.types import RunState
from tests.adapters.web_support import chromium, public_url_env, requires_chromium, status_link, web_view
from tests.fakes.openai_server import FakeOpenAIServer, Turn
from tests.support.engines import REPO, EngineBuilder
from tests.workers.agent_support import agent_settings, ask, processes_with, requires_opencode, wait_until

pytestmark = [requires_chromium, requires_opencode, pytest.mark.browser]

#: Where the screenshots the README shows are kept.
DOCS = REPO / "docs"
#: Seconds a page may take to show what the run did (opencode's cold start is 3-5 s here).
RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def model():
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


def test_the_status_link_opens_a_page_that_goes_live_to_done_with_steps_diff_and_preview(
        tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    model.script(
        Turn.write("hello.py", "print('hello from the agent')\n", usage=(900, 12)),
        Turn.bash("python3 hello.py", usage=(950, 9), delay=1.5),
        Turn.text("I wrote hello.py and ran it; it prints a greeting.", usage=(1000, 14), delay=1.5),
    )
    port, env = public_url_env()
    engine, thread = make_engine(agent_settings(tmp_path, model, **env))
    with web_view(engine, port), chromium() as browser:
        ask(engine, "/agent write hello.py that prints a greeting and run it")
        link = wait_until(lambda: status_link(thread), 30, "the status message's live view link")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        response = page.goto(link)
        assert response.status == 200
        assert page.inner_text("#state") in ("queued", "running")  # opened before the run ended
        page.wait_for_selector("#state.done", timeout=RUN_TIMEOUT_MS)  # live, no reload
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        steps = page.inner_text("#steps")
        assert "wrote hello.py" in steps and "ran python3 hello.py" in steps
        page.click("#steps li:nth-child(2) summary")  # a command's output is folded until asked for
        assert "hello from the agent" in page.inner_text("#steps li:nth-child(2) .output")
        assert "I wrote hello.py and ran it" in page.inner_text("#words")
        assert "1,000 in" not in page.inner_text("#tokens") and "in /" in page.inner_text("#tokens")
        page.wait_for_selector("#diff .gi", timeout=10_000)  # highlighted: added lines styled
        assert "+print('hello from the agent')" in page.inner_text("#diff")
        assert "print('hello from the agent')" in page.inner_text(".resource .preview")
        assert page.locator("#cancel").count() == 0
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "web-run.png"), full_page=True)

        page.click("header .meta a")  # to the conversation
        page.wait_for_selector("#conversation")
        assert "/agent write hello.py" in page.inner_text("#messages")
        assert "Run 1" in page.inner_text("#runs")
        page.fill("input[name=q]", "hello")
        page.click("#browser button")
        page.wait_for_selector("#browser .resource")
        assert "hello.py" in page.inner_text("#browser")
        page.fill("input[name=q]", "")
        page.click("#browser button")
        page.screenshot(path=str(DOCS / "web-conversation.png"), full_page=True)


def test_cancel_on_the_page_stops_a_long_run_and_the_page_shows_it_cancelled(
        tmp_path: Path, model, make_engine: EngineBuilder) -> None:
    marker = f"sleep 30{int(time.time()) % 10}"
    model.script(Turn.bash(marker, timeout_ms=600_000), Turn.text("never reached"))
    port, env = public_url_env()
    engine, thread = make_engine(agent_settings(tmp_path, model, **env))
    with web_view(engine, port), chromium() as browser:
        ask(engine, f"/agent run {marker}")
        link = wait_until(lambda: status_link(thread), 30, "the status message's live view link")
        page = browser.new_page()
        page.goto(link)
        page.wait_for_selector("#state.running", timeout=RUN_TIMEOUT_MS)
        wait_until(lambda: processes_with(marker, starting=True), 60, "the agent's sleep to start")
        page.on("dialog", lambda dialog: dialog.accept())
        page.click("#cancel button")
        page.wait_for_selector("#state.cancelled", timeout=30_000)
        assert "Stopping the run" in page.inner_text("#flash")
        wait_until(lambda: not processes_with(marker), 10, "every process of the run to be gone")
    engine.queue.wait(timeout=30)
    with engine.db.reading() as session:
        run = Runs(session).get(1)
    assert run.state == RunState.CANCELLED and run.cancelled_by == "ana (live view)"
    assert "Cancelled by ana (live view)." in thread.last(thread.order[0])


def test_a_tampered_or_expired_link_gets_403_and_shows_nothing(tmp_path: Path, model,
                                                              make_engine: EngineBuilder) -> None:
    model.script(Turn.text("nothing to do"))
    port, env = public_url_env()
    engine, thread = make_engine(agent_settings(tmp_path, model, **env))
    with web_view(engine, port) as base, chromium() as browser:
        ask(engine, "/agent say something secret-ish")
        link = wait_until(lambda: status_link(thread), 30, "the status message's live view link")
        page = browser.new_page()
        token = link.split("t=", 1)[1]
        tampered = link.replace(token, token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb"))
        from bot.web_links import links_for

        old = int(time.time()) - int(engine.manifest.web.link_ttl_hours * 3600) - 60
        expired = f"{base}/runs/1?t={links_for(engine.settings, 168).token(1, 'U1', issued_at=old)}"
        for url in (tampered, expired, f"{base}/runs/1", f"{base}/c/1?t={token[:-3]}xyz"):
            response = page.goto(url)
            assert response.status == 403, url
            assert "say something" not in page.content() and "Agent run" not in page.content()
        assert page.goto(link).status == 200
