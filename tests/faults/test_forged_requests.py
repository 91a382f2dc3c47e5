"""Fault suite, item 3: forged or stale signed requests get 401 and do nothing.

Slack's HTTP mode, with the real Bolt app: while a run of the toy agent is running, a Cancel
click and a slash command arrive signed with the wrong secret, signed five minutes ago, and not
signed at all. Each gets 401; the run keeps running and no thread is started. The same click,
signed properly, cancels it. (Forged and stale events: tests/adapters/test_slack.py,
test_http_mode_refuses_forged_and_stale_requests_and_answers_signed_ones; tampered and expired
web view links: tests/adapters/test_web.py.)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

from adapters.slack import SlackAdapter
from adapters.slack_format import CANCEL_ACTION_ID
from bot.engine import Engine
from bot.queue import InProcessQueue
from bot.types import RunState
from tests.adapters.test_slack import CHANNEL
from tests.fakes.slack_fixtures import bolt_web_client
from tests.fakes.slack_server import API_APP_ID, DEFAULT_USER_ID, TEAM_ID, FakeSlackServer, sign_request
from tests.support.engines import EngineBuilder, rows
from tests.workers.agent_support import wait_until

SECRET = "http-mode-signing-secret"
TOY = {"plugins": {"modules": ["tests.workers.toy_agent_plugin"]}, "agent": {"name": "toy"}}


def post_form(url: str, fields: dict[str, str], headers: dict[str, str]) -> int:
    body = urllib.parse.urlencode(fields)
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def signed(fields: dict[str, str], secret: str = SECRET, age_s: int = 0) -> dict[str, str]:
    return sign_request(secret, urllib.parse.urlencode(fields), int(time.time()) - age_s)


def test_forged_and_stale_clicks_and_commands_get_401_and_do_nothing(make_engine: EngineBuilder) -> None:
    engine, _ = make_engine(queue=InProcessQueue(), manifest=TOY)
    with FakeSlackServer() as slack:
        adapter = SlackAdapter(engine, bolt_web_client(slack), signing_secret=SECRET)
        engine.attach_port(adapter.port)
        url = f"http://127.0.0.1:{adapter.listen('127.0.0.1', 0)}/slack/events"
        try:
            command = {"command": "/agent", "text": "sleep 30", "user_id": DEFAULT_USER_ID, "channel_id": CHANNEL,
                       "team_id": TEAM_ID, "api_app_id": API_APP_ID, "response_url": "", "trigger_id": "1.2.3"}
            assert post_form(url, command, signed(command)) == 200
            wait_until(lambda: _state(engine) == RunState.RUNNING, 30, "the run to start")
            status = next(m for m in slack.bot_messages(CHANNEL) if m.blocks)
            click = {"payload": json.dumps({
                "type": "block_actions", "api_app_id": API_APP_ID, "team": {"id": TEAM_ID},
                "user": {"id": DEFAULT_USER_ID}, "channel": {"id": CHANNEL},
                "container": {"type": "message", "message_ts": status.ts, "channel_id": CHANNEL},
                "message": {"ts": status.ts, "thread_ts": status.thread_ts},
                "actions": [{"type": "button", "action_id": CANCEL_ACTION_ID, "block_id": "actions", "value": "1"}],
            })}
            threads_before = len([m for m in slack.bot_messages(CHANNEL) if m.thread_ts is None])
            for fields in (click, command):
                assert post_form(url, fields, signed(fields, secret="not-the-secret")) == 401
                assert post_form(url, fields, signed(fields, age_s=301)) == 401
                assert post_form(url, fields, {}) == 401
            time.sleep(0.5)  # a cancel or a new thread would have happened by now
            assert _state(engine) == RunState.RUNNING
            assert len([m for m in slack.bot_messages(CHANNEL) if m.thread_ts is None]) == threads_before

            assert post_form(url, click, signed(click)) == 200
            wait_until(lambda: _state(engine) == RunState.CANCELLED, 15, "the signed click to cancel the run")
        finally:
            adapter.close()
            engine.queue.wait(timeout=30)


def _state(engine: Engine) -> RunState | None:
    found = rows(engine, "select state from agent_runs order by id limit 1")
    return RunState(found[0][0]) if found else None
