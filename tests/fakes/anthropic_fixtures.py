"""pytest fixtures for the fake Anthropic Messages API (:mod:`tests.fakes.anthropic_server`).

Use from a test module or a conftest::

    from tests.fakes.anthropic_fixtures import anthropic_server, anthropic_env  # noqa: F401
    # or, in a conftest.py:  pytest_plugins = ["tests.fakes.anthropic_fixtures"]

``anthropic_server`` is a started :class:`FakeAnthropicServer` with an empty script (so every
request gets the echo default until the test scripts answers); it is stopped after the test.
``anthropic_server.client(max_retries=0)`` gives a real ``anthropic.Anthropic`` pointed at it.

``anthropic_env`` additionally sets ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_API_KEY`` (and clears
the other ``ANTHROPIC_*`` variables that would change auth or headers) for code that builds its
own ``Anthropic()`` from the environment; it yields the same server.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.fakes.anthropic_server import FakeAnthropicServer

#: Variables that would make ``Anthropic()`` pick other credentials, headers or a config dir.
_CLEARED_ENV = ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_CONFIG_DIR",
                "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_IDENTITY_TOKEN",
                "ANTHROPIC_IDENTITY_TOKEN_FILE", "ANTHROPIC_FEDERATION_RULE_ID",
                "ANTHROPIC_ORGANIZATION_ID")


@pytest.fixture
def anthropic_server() -> Iterator[FakeAnthropicServer]:
    server = FakeAnthropicServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def anthropic_env(anthropic_server: FakeAnthropicServer,
                  monkeypatch: pytest.MonkeyPatch) -> FakeAnthropicServer:
    for name in _CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in anthropic_server.env().items():
        monkeypatch.setenv(name, value)
    return anthropic_server
