"""The web view over plain HTTP on 127.0.0.1: links, headers, redaction, the stream, cancel rights.

Runs here are stored directly (no agent): what is under test is what the pages and the event
stream make of stored runs and published entries. tests/adapters/test_web_browser.py follows
real opencode runs in Chromium.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot import runs as run_lifecycle
from bot.db.repositories import Conversations, Resources, Runs
from bot.progress import render_status
from bot.run_events import RunBroadcast, RunFeed, event_entry, feed_for
from bot.types import EventKind, RunEvent, RunState
from bot.web_links import conversation_url, links_for
from tests.adapters.web_support import get, public_url_env, sse_events, web_view
from tests.support.engines import EngineBuilder, bot_env, message
from tests.support.servers import wait_for_port

SECRET = "xoxb-1111-2222-secretsecret"


def stored_run(engine, text: str = "/agent list the files", user: str = "U1"):
    """Store a request and its queued run with two events and a diff; return the run."""
    dispatched = engine.persist_and_route(message(text, user=user))
    with engine.db.session() as session:
        run, _ = Runs(session).create(dispatched.conversation.id, "opencode", text, requested_by="ana",
                                      request_message_id=dispatched.message_id)
        runs = Runs(session)
        runs.add_event(run.id, 1, RunEvent(EventKind.TOOL, name="bash", text="ran `ls`", status="completed",
                                           raw={"part": {"state": {"output": f"a.txt\n{SECRET}\n"}}}))
        runs.add_event(run.id, 2, RunEvent(EventKind.TEXT, text=f"I found <script>alert(1)</script> and {SECRET}"))
        Resources(session, engine.settings.data_dir / "blobs").add(
            dispatched.conversation.id, f"run-{run.id}.diff", b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n",
            kind="diff", run_id=run.id)
    return run


def test_the_status_message_carries_the_link_in_text_slack_blocks_and_discord_embeds(make_engine: EngineBuilder) -> None:
    port, env = public_url_env()
    engine, _ = make_engine(**env)
    run = stored_run(engine)
    status = run_lifecycle.status_of(engine, run.id)
    assert status.web_url.startswith(f"http://127.0.0.1:{port}/runs/{run.id}?t=")
    assert f"Open live view: {status.web_url}" in render_status(status)
    from adapters.discord_format import status_embed
    from adapters.slack_format import status_blocks

    buttons = [e for b in status_blocks(status) if b["type"] == "actions" for e in b["elements"]]
    assert [b.get("url") for b in buttons] == [None, status.web_url]  # Cancel, then the link
    assert status_embed(status).url == status.web_url
    engine_without, _ = make_engine()
    assert run_lifecycle.status_of(engine_without, run.id).web_url == ""


def test_pages_are_private_redacted_and_escaped(make_engine: EngineBuilder) -> None:
    port, env = public_url_env()
    engine, _ = make_engine(**env, SLACK_BOT_TOKEN=SECRET)
    run = stored_run(engine)
    link = run_lifecycle.status_of(engine, run.id).web_url
    with web_view(engine, port):
        status, headers, body = get(link)
        assert status == 200
        assert headers["cache-control"] == "no-store"
        assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in \
            headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
        assert SECRET not in body and "[redacted]" in body
        assert "<script>alert(1)</script>" not in body and "&lt;script&gt;" in body
        assert '<script src="/static/web.js"></script>' in body and "<script>" not in body.replace(
            '<script src="/static/web.js">', "")
        assert 'class="gi"' in body  # the diff, highlighted
        conversation = link.replace(f"/runs/{run.id}", f"/c/{run.conversation_id}")
        status, headers, body = get(conversation + "&q=diff")
        assert status == 200 and f"run-{run.id}.diff" in body and headers["cache-control"] == "no-store"
        status, _, _ = get(link.replace(f"/runs/{run.id}", f"/c/{run.conversation_id + 1}"))
        assert status == 404


def test_missing_tampered_expired_or_foreign_links_get_403_and_nothing_else(make_engine: EngineBuilder) -> None:
    port, env = public_url_env()
    engine, _ = make_engine(**env)
    run = stored_run(engine)
    links = links_for(engine.settings, engine.manifest.web.link_ttl_hours)
    base = f"http://127.0.0.1:{port}"
    good = links.token(run.conversation_id, "U1")
    expired = links.token(run.conversation_id, "U1", issued_at=int(time.time()) - 169 * 3600)
    other_key = links_for(engine.settings.__class__.from_env({**engine.settings.env, "BOT_WEB_SECRET": "another"}), 168)
    with web_view(engine, port):
        for url in (f"{base}/runs/{run.id}", f"{base}/runs/{run.id}?t={good[:-2]}xx", f"{base}/runs/{run.id}?t={expired}",
                    f"{base}/runs/{run.id}?t={other_key.token(run.conversation_id, 'U1')}",
                    f"{base}/runs/{run.id}/events?t={expired}", f"{base}/r/1?t={good[:-1]}",
                    f"{base}/c/{run.conversation_id}?t={expired}"):
            status, _, body = get(url)
            assert status == 403, url
            assert "list the files" not in body and "ls" not in body.split("<body>")[-1].replace("class", "")
        assert get(f"{base}/runs/{run.id}?t={good}")[0] == 200


def test_a_reconnecting_page_resumes_from_last_event_id_and_misses_nothing(make_engine: EngineBuilder) -> None:
    port, env = public_url_env()
    engine, _ = make_engine(**env)
    run = stored_run(engine)
    with engine.db.session() as session:
        Runs(session).transition(run.id, RunState.RUNNING, allowed_from=(RunState.QUEUED,))
    feed = feed_for(engine.settings)  # in-process, as `bot chat` with web.enabled serves it
    link = run_lifecycle.status_of(engine, run.id).web_url
    events_url = link.replace(f"/runs/{run.id}?", f"/runs/{run.id}/events?")
    ids = [feed.publish(run.id, event_entry(seq, RunEvent(EventKind.TOOL, name="bash", text=f"step {seq}",
                                                          status="completed"))) for seq in (3, 4, 5)]
    with web_view(engine, port):
        first = sse_events(events_url, 3)
        assert [e["id"] for e in first] == ids and "step 3" in first[0]["data"]["html"]
        # The page went away after the first step; it comes back naming it, and gets the rest.
        resumed = sse_events(events_url, 2, headers={"Last-Event-ID": ids[0]})
        assert [e["data"]["seq"] for e in resumed] == [4, 5]
        broadcast = RunBroadcast(feed, run.id)
        status = run_lifecycle.status_of(engine, run.id)
        status.state = RunState.DONE
        broadcast.finish(status)
        last = sse_events(events_url, 1, headers={"Last-Event-ID": ids[-1]})
        assert last[0]["event"] == "status" and last[0]["data"]["state"] == "done" and last[0]["data"]["final"]


def test_a_run_cancelled_while_queued_ends_the_stream_from_the_table(make_engine: EngineBuilder) -> None:
    port, env = public_url_env()
    engine, _ = make_engine(**env)
    run = stored_run(engine)
    link = run_lifecycle.status_of(engine, run.id).web_url
    with web_view(engine, port):
        run_lifecycle.cancel(engine, run, "bo")  # publishes nothing: the follower asks the table
        started = time.monotonic()
        events = sse_events(link.replace(f"/runs/{run.id}?", f"/runs/{run.id}/events?"), 1)
        assert events[0]["data"]["state"] == "cancelled" and time.monotonic() - started < 10


def test_cancel_is_refused_to_a_link_whose_person_may_not_cancel(make_engine: EngineBuilder) -> None:
    port, env = public_url_env()
    engine, _ = make_engine(manifest={"permissions": {"cancel": ["U9"]}}, **env)
    run = stored_run(engine)
    links = links_for(engine.settings, engine.manifest.web.link_ttl_hours)
    from adapters.web_pages import Pages

    pages = Pages(engine)
    assert pages.cancel(pages.grant(links.token(run.conversation_id, "U2")), run.id) == "denied"
    assert run_lifecycle.status_of(engine, run.id).state == RunState.QUEUED
    assert pages.cancel(pages.grant(links.token(run.conversation_id, "U1")), run.id) == "queued"  # the requester
    assert run_lifecycle.cancelled_by(engine, run.id) == "ana (live view)"


@pytest.mark.redis
def test_any_bot_web_process_serves_a_run_from_the_database_and_redis(tmp_path: Path, redis_url: str,
                                                                     make_engine: EngineBuilder) -> None:
    from bot.queue import InProcessQueue

    port, env = public_url_env()
    engine, _ = make_engine(queue=InProcessQueue(), REDIS_URL=redis_url, **env)
    run = stored_run(engine)
    with engine.db.session() as session:
        Runs(session).transition(run.id, RunState.RUNNING, allowed_from=(RunState.QUEUED,))
    link = run_lifecycle.status_of(engine, run.id).web_url
    web = subprocess.Popen([sys.executable, "-m", "bot", "web", "--port", str(port)], cwd=Path(__file__).parents[2],
                           env=bot_env(tmp_path, REDIS_URL=redis_url, BOT_MANIFEST=str(engine.settings.manifest_path)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        status, _, body = get(link)
        assert status == 200 and "ran <code>ls</code>" in body
        after = body.split('data-after="', 1)[1].split('"', 1)[0]
        feed = RunFeed(redis_url)  # this process plays the worker
        stream_id = feed.publish(run.id, event_entry(3, RunEvent(EventKind.TOOL, name="write", text="wrote `a.py`",
                                                                 status="completed")))
        events = sse_events(link.replace(f"/runs/{run.id}?", f"/runs/{run.id}/events?") + f"&after={after}", 1)
        assert events[0]["id"] == stream_id and "a.py" in events[0]["data"]["html"]
    finally:
        web.terminate()
        web.wait(10)


def test_the_conversation_page_shows_its_parent_and_its_forks(make_engine: EngineBuilder) -> None:
    from bot.types import ThreadRef

    port, env = public_url_env()
    engine, _ = make_engine(**env)
    run = stored_run(engine)
    with engine.db.session() as session:
        conversations = Conversations(session)
        parent = conversations.get(run.conversation_id)
        fork = conversations.create_fork(parent.id, ThreadRef("test", "C1", "T-fork"), "try the cursor idea")
    link = run_lifecycle.status_of(engine, run.id).web_url
    with web_view(engine, port):
        status, _, body = get(link.replace(f"/runs/{run.id}", f"/c/{run.conversation_id}"))
        assert status == 200 and "Forks: " in body and "try the cursor idea" in body and "thread T-fork" in body
        fork_link = conversation_url(engine, fork.id, "U1")
        status, _, body = get(fork_link)
        assert status == 200 and "Forked from" in body
