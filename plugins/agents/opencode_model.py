"""The opencode agent's model: which endpoint a run will call, and whether it answers.

opencode retries an unreachable model for over a minute before it fails, showing nothing
but a timer; so before a run the agent checks that the endpoint takes connections (a
fraction of a second), and `doctor` sends it one tiny request.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from bot.errors import UserFacingError

#: Where opencode's bundled providers send requests when the config names no baseURL
#: (@ai-sdk/anthropic and @ai-sdk/openai defaults).
DEFAULT_BASE_URLS = {"anthropic": "https://api.anthropic.com/v1", "openai": "https://api.openai.com/v1"}
#: The variable each bundled provider reads its key from when the config gives none.
DEFAULT_KEY_VARS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
#: Seconds to resolve and connect to the model's host: a healthy endpoint on any network
#: accepts a connection well within this; an offline DNS lookup can hang for ~10 s.
CONNECT_TIMEOUT_S = 3
#: Seconds the doctor's one-token request may take (a cold model can be slow to answer).
PING_TIMEOUT_S = 30
#: opencode's config syntax for a value read from the environment: `"apiKey": "{env:MY_KEY}"`.
ENV_REFERENCE = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
#: anthropic-version header of the Messages API.
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class ModelEndpoint:
    """The model a run will use, as opencode's config and the manifest describe it."""

    #: "provider/model", as opencode names it.
    name: str
    #: The wire protocol: Anthropic's Messages API or OpenAI's chat completions.
    api: Literal["anthropic", "openai"] | None
    base_url: str | None
    api_key: str | None = None

    @property
    def model_id(self) -> str:
        return self.name.split("/", 1)[1] if "/" in self.name else self.name


def read_user_config(path: str | None) -> dict[str, Any]:
    """Return the opencode config at `path` (OPENCODE_CONFIG) as a dict, or {} when unset."""
    if not path:
        return {}
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"OPENCODE_CONFIG ({path}) cannot be read as JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UserFacingError(f"OPENCODE_CONFIG ({path}) must hold a JSON object")
    return config


def resolve_endpoint(model: str | None, config: dict[str, Any], env: dict[str, str]) -> ModelEndpoint | None:
    """Return the endpoint of the run's model (the manifest's, else the config's), or None."""
    name = model or config.get("model")
    if not name or not isinstance(name, str):
        return None
    provider_name = name.split("/", 1)[0]
    provider = (config.get("provider") or {}).get(provider_name) or {}
    options = provider.get("options") or {}
    package = str(provider.get("npm") or "")
    if "anthropic" in package or (not package and provider_name == "anthropic"):
        api: Literal["anthropic", "openai"] | None = "anthropic"
    elif "openai" in package or (not package and provider_name == "openai"):
        api = "openai"
    else:
        api = None
    base_url = options.get("baseURL") or (DEFAULT_BASE_URLS.get(provider_name) if not package else None)
    key = _substitute_env(str(options.get("apiKey") or ""), env) or env.get(DEFAULT_KEY_VARS.get(provider_name, ""), "")
    return ModelEndpoint(name, api, str(base_url).rstrip("/") if base_url else None, str(key) or None)


def _substitute_env(value: str, env: dict[str, str]) -> str:
    """Return the value with opencode's `{env:NAME}` references replaced from `env`."""
    return ENV_REFERENCE.sub(lambda match: env.get(match.group(1), ""), value)


def connection_problem(endpoint: ModelEndpoint, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Return why the endpoint's host takes no connection (refused, unknown host...), or None."""
    if not endpoint.base_url:
        return None  # a provider we cannot locate: let opencode try
    parts = urlsplit(endpoint.base_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    problem: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except socket.gaierror:
            problem.append(f"cannot resolve {host}: offline, or a wrong host name")
        except OSError as exc:
            problem.append(f"{exc.strerror or type(exc).__name__}".lower())

    # getaddrinfo ignores socket timeouts, so the whole attempt runs in a thread we stop waiting for.
    attempt = threading.Thread(target=connect, name="model-connect", daemon=True)
    attempt.start()
    attempt.join(timeout)
    if attempt.is_alive():
        return f"no answer from {host} within {timeout:g} s"
    return problem[0] if problem else None


def ping(endpoint: ModelEndpoint, timeout: float = PING_TIMEOUT_S) -> tuple[bool, str]:
    """Send the model one tiny request; return whether it answered and a one-line detail."""
    if endpoint.api is None or not endpoint.base_url:
        return False, f"cannot tell how to call {endpoint.name}'s provider"
    if endpoint.api == "anthropic":
        url = f"{endpoint.base_url}/messages"
        headers = {"x-api-key": endpoint.api_key or "", "anthropic-version": ANTHROPIC_VERSION}
    else:
        url = f"{endpoint.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {endpoint.api_key or ''}"}
    body = {"model": endpoint.model_id, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **headers})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL from the config
            response.read()
    except urllib.error.HTTPError as exc:
        return False, f"{endpoint.name} answered HTTP {exc.code} ({_error_message(exc)})"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"cannot reach {endpoint.base_url}: {reason}"
    return True, f"{endpoint.name} answered in {time.monotonic() - started:.1f} s"


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(exc.read() or b"{}")
    except ValueError:
        return exc.reason or "no detail"
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or exc.reason or "no detail")[:200]
