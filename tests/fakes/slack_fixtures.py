"""pytest fixtures for the fake Slack (:mod:`tests.fakes.slack_server`).

Use from a test module or a conftest::

    from tests.fakes.slack_fixtures import slack_server, slack_client, socket_mode  # noqa: F401
    # or, in a conftest.py:  pytest_plugins = ["tests.fakes.slack_fixtures"]

``slack_server``  a started :class:`FakeSlackServer`, rate limits off (turn them on with
                  ``slack_server.set_rate_limits(True)``); stopped after the test.
``slack_client``  a real ``slack_sdk.WebClient`` with the bot token, pointed at it.
``socket_mode``   a factory: ``handler = socket_mode(app)`` connects a real Bolt ``App`` through
                  the built-in ``SocketModeHandler`` and waits until the server has the
                  connection; every handler is closed after the test (before the server stops).

A Bolt app for the fake: ``App(client=bolt_web_client(server))`` - give the token to the
WebClient, not to ``App(token=...)``: when ``client`` is passed, Bolt ignores ``token`` and uses
``client.token``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient

from tests.fakes.slack_server import FakeSlackServer

#: Seconds to wait for the websocket to reach the server after ``handler.connect()``.
CONNECT_TIMEOUT_S = 5.0


def bolt_web_client(server: FakeSlackServer, **kw: Any) -> WebClient:
    """A real WebClient with the bot token and ``base_url`` = the fake's ``/api/``."""
    kw.setdefault("timeout", 10)
    return WebClient(token=server.bot_token, base_url=server.api_url, **kw)


def connect_socket_mode(app: App, server: FakeSlackServer, **kw: Any) -> SocketModeHandler:
    """Connect ``app`` to the fake over Socket Mode (built-in client) and wait for ``hello``.

    The handler calls ``apps.connections.open`` through ``app.client`` (so through its
    ``base_url``) with the ``xapp-`` token and dials the ``ws://`` URL it gets back.
    """
    handler = SocketModeHandler(app, app_token=server.app_token, **kw)
    before = server.connection_count
    handler.connect()
    server.wait_for_connection(before + 1, CONNECT_TIMEOUT_S)
    return handler


def close_socket_mode(handler: SocketModeHandler) -> None:
    """``handler.close()`` without its up-to-1 s wait.

    The built-in client's message processor blocks in ``message_queue.get(timeout=1)`` and
    ``close()`` joins it; marking the client closed and waking the queue first lets it exit at
    once (this leans on slack_sdk's ``SocketModeClient.closed``/``message_queue``).
    """
    handler.client.closed = True
    handler.client.message_queue.put(None)
    handler.close()


@pytest.fixture
def slack_server() -> Iterator[FakeSlackServer]:
    server = FakeSlackServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slack_client(slack_server: FakeSlackServer) -> WebClient:
    return bolt_web_client(slack_server)


@pytest.fixture
def socket_mode(slack_server: FakeSlackServer) -> Iterator[Callable[..., SocketModeHandler]]:
    handlers: list[SocketModeHandler] = []

    def connect(app: App, **kw: Any) -> SocketModeHandler:
        handler = connect_socket_mode(app, slack_server, **kw)
        handlers.append(handler)
        return handler

    yield connect
    for handler in handlers:
        close_socket_mode(handler)
