"""Engines of the built-in plugins' room, wired to a local Anthropic Messages API on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest

from bot.engine import Engine
from plugins.answer import claude
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.support.engines import EngineBuilder, EngineFactory
from tests.support.ports import RecordingPort


@pytest.fixture
def make_engine(make_engine: EngineBuilder, anthropic_server: FakeAnthropicServer,
                monkeypatch: pytest.MonkeyPatch) -> EngineFactory:
    """The root `make_engine` (tests/conftest.py), its environment pointing at the fake Messages API.

    `key=False` leaves ANTHROPIC_API_KEY unset; `manifest={...}` overrides manifest sections;
    `env={...}` adds or replaces environment variables.
    Streamed answers are edited every 50 ms instead of every second, to keep the tests short.
    """
    monkeypatch.setattr(claude, "EDIT_INTERVAL_S", 0.05)

    def factory(*, key: bool = True, manifest: dict[str, dict[str, Any]] | None = None,
                env: dict[str, str] | None = None) -> tuple[Engine, RecordingPort]:
        return make_engine(manifest=manifest, **{**(anthropic_server.env() if key else {}), **(env or {})})

    return factory
