"""pytest fixtures and helpers for running the real opencode binary against the fake model.

Use from a test module or a conftest::

    from tests.fakes.openai_fixtures import openai_server, opencode_env  # noqa: F401
    # or, in a conftest.py:  pytest_plugins = ["tests.fakes.openai_fixtures"]

``openai_server`` is a started :class:`FakeOpenAIServer` with an empty script (add turns with
``openai_server.script(Turn.write(...), Turn.text("done"))``); it is stopped after the test.

``opencode_env`` is a factory: ``env, workspace = opencode_env()`` gives an environment with its
own HOME/XDG dirs under ``tmp_path``, offline switches, and ``OPENCODE_CONFIG`` pointing at a
config generated for the fake server; pass ``permission=`` to override the permission block.
:func:`run_opencode` runs ``opencode run --format json`` and parses the event lines.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from tests.fakes.openai_server import FakeOpenAIServer

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The pinned binary (package.json pins opencode-ai 1.18.33; `npm i` in the repo root).
OPENCODE_BIN = REPO_ROOT / "node_modules" / ".bin" / "opencode"
OPENCODE_VERSION = "1.18.33"
#: Cold `opencode run` takes 3-6 s to its first event on 2 cores; leave a wide margin.
OPENCODE_RUN_TIMEOUT_S = 120

XDG_VARS = ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")


def opencode_available() -> bool:
    return OPENCODE_BIN.exists() and os.access(OPENCODE_BIN, os.X_OK)


requires_opencode = pytest.mark.skipif(
    not opencode_available(),
    reason=f"opencode binary missing at {OPENCODE_BIN} (run `npm i` in {REPO_ROOT}: "
           f"package.json pins opencode-ai@{OPENCODE_VERSION})")


def make_opencode_env(root: Path, server: FakeOpenAIServer, *,
                      permission: dict[str, Any] | None = None,
                      config_extra: dict[str, Any] | None = None,
                      base_env: dict[str, str] | None = None) -> tuple[dict[str, str], Path]:
    """Build an isolated environment for opencode under ``root``; returns (env, workspace)."""
    root = Path(root)
    workspace = root / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    env = dict(base_env if base_env is not None else os.environ)
    # Keep PATH etc., drop anything that would redirect opencode elsewhere.
    for k in list(env):
        if k.startswith("OPENCODE_") or k.startswith("XDG_"):
            del env[k]
    home = root / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    for var in XDG_VARS:
        d = root / var.lower()
        d.mkdir(exist_ok=True)
        env[var] = str(d)
    config = root / "opencode.json"
    server.write_opencode_config(config, permission=permission, **(config_extra or {}))
    env.update(OPENCODE_DISABLE_MODELS_FETCH="1", OPENCODE_DISABLE_PROJECT_CONFIG="1",
               OPENCODE_CONFIG=str(config))
    return env, workspace


@dataclass
class OpencodeRun:
    returncode: int
    events: list[dict[str, Any]]
    stdout: str
    stderr: str
    non_json: list[str] = field(default_factory=list)

    @property
    def session_id(self) -> str | None:
        for e in self.events:
            if e.get("sessionID"):
                return e["sessionID"]
        return None

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]

    @property
    def types(self) -> list[str]:
        return [e.get("type", "?") for e in self.events]


def parse_events(stdout: str) -> tuple[list[dict[str, Any]], list[str]]:
    events, other = [], []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(obj, dict):
            events.append(obj)
        else:
            other.append(line)
    return events, other


def run_opencode(env: dict[str, str], workspace: Path, prompt: str | None = None, *,
                 args: Sequence[str] = (), timeout: float = OPENCODE_RUN_TIMEOUT_S) -> OpencodeRun:
    """``opencode run --format json --dir WORKSPACE [args]`` with the prompt on stdin.

    (A single prompt argument with spaces reaches the model wrapped in quotes; stdin does not.)
    """
    cmd = [str(OPENCODE_BIN), "run", "--format", "json", "--dir", str(workspace), *args]
    p = subprocess.run(cmd, input=(prompt or "").encode(), env=env, cwd=str(workspace),
                       capture_output=True, timeout=timeout)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    events, other = parse_events(out)
    return OpencodeRun(p.returncode, events, out, err, other)


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def opencode_env(tmp_path: Path, openai_server: FakeOpenAIServer
                 ) -> Callable[..., tuple[dict[str, str], Path]]:
    def factory(**kw: Any) -> tuple[dict[str, str], Path]:
        return make_opencode_env(tmp_path / "oc", openai_server, **kw)
    return factory
