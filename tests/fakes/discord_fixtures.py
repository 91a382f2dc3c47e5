"""Pytest fixtures for the fake Discord, and a helper running a discord.py client in a thread.

Register them from a conftest with ``pytest_plugins = ["tests.fakes.discord_fixtures"]`` or
import the fixture into a test module::

    from tests.fakes.discord_fixtures import ClientThread, discord_server  # noqa: F401

    def test_reply(discord_server):
        client = discord.Client(intents=intents, guild_ready_timeout=0.05)  # on_ready 2 s sooner
        with ClientThread(client, discord_server.token) as running:
            discord_server.send_message_create(discord_server.channel_id, "ping")
            discord_server.wait_for(lambda: len(discord_server.messages_in(discord_server.channel_id)) == 2)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import discord
import pytest

from tests.fakes.discord_server import FakeDiscordServer, point_discord_py_at

T = TypeVar("T")


@pytest.fixture
def discord_server() -> Iterator[FakeDiscordServer]:
    """A running :class:`FakeDiscordServer` with discord.py pointed at it (undone afterwards).

    ``discord_server.env`` holds ``DISCORD_API_URL`` / ``DISCORD_GATEWAY_URL`` for the product.
    """
    with FakeDiscordServer() as server:
        undo = point_discord_py_at(server)
        try:
            yield server
        finally:
            undo()


class ClientThread:
    """Runs ``client.start(token)`` on its own event loop in a daemon thread.

    Entering waits until the client is ready (``on_ready``) or re-raises why it stopped
    (``LoginFailure``, ``PrivilegedIntentsRequired``...); leaving closes the client and the
    loop. ``run(coro)`` runs a coroutine on the client's loop from the test thread.
    """

    def __init__(self, client: discord.Client, token: str, *, ready_timeout: float = 10.0) -> None:
        self.client = client
        self.token = token
        self.ready_timeout = ready_timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="discord-client", daemon=True)
        self._started: Any = None

    def __enter__(self) -> ClientThread:
        self._thread.start()
        self._started = asyncio.run_coroutine_threadsafe(self.client.start(self.token), self.loop)
        deadline = time.monotonic() + self.ready_timeout
        while not self.client.is_ready():
            if self._started.done():
                error = self._started.exception()
                self.run(self.client.close())  # Client.start() leaves its HTTP session open on failure
                self._stop_loop()
                raise error or RuntimeError("client.start() returned before the client was ready")
            if time.monotonic() > deadline:
                self.__exit__()
                raise TimeoutError("the discord client did not become ready")
            time.sleep(0.01)
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the client's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc_info: object) -> None:
        if not self.client.is_closed():
            self.run(self.client.close())
        if self._started is not None:
            try:
                self._started.result(timeout=10)
            except Exception:  # the client's own shutdown error is not the test's business here
                pass
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            self.run(cancel_rest())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        self.loop.close()
