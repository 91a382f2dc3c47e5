"""Claude through the official anthropic SDK: clients from the environment, failures in plain words.

Shared by the LLM routing stage and direct answers; not a plugin itself (it has no hooks).
The API key and base URL come from the engine's settings (the environment read at start):
`ANTHROPIC_BASE_URL` points the SDK at a proxy or a test server. Retries are the SDK's: it
retries 408, 409, 429 and 5xx (529 overloaded included) with exponential backoff, honouring
`retry-after`; the callers choose how many and the timeout.

The SDK is imported when the first client is built, not with this module: it is the bot's
heaviest import, and most starts (`chat` before a question, `route`, `doctor`, a bot with no
API key) never need it. tests/core/test_startup.py keeps it so.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from bot import metrics
from bot.types import EngineAPI

if TYPE_CHECKING:
    import anthropic

_clients: dict[tuple[str, str | None, float, int], anthropic.Anthropic] = {}
_clients_lock = threading.Lock()


def client_for(engine: EngineAPI, *, timeout: float, max_retries: int) -> anthropic.Anthropic | None:
    """Return an SDK client for the engine's environment, or None when no API key is set."""
    key = engine.settings.get("ANTHROPIC_API_KEY")
    if not key:
        return None
    base_url = engine.settings.get("ANTHROPIC_BASE_URL")
    cache_key = (key, base_url, timeout, max_retries)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            import anthropic

            # An explicit key keeps the SDK from reading other credentials (profiles, tokens).
            client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)
            _clients[cache_key] = client
        return client


def count_call(purpose: str, model: str, response: Any = None) -> None:
    """Count one API call in the bot's metrics: with its response, its tokens; without, a failure."""
    usage = getattr(response, "usage", None)
    metrics.model_call(purpose, model, ok=response is not None, tokens_in=getattr(usage, "input_tokens", 0) or 0,
                       tokens_out=getattr(usage, "output_tokens", 0) or 0)


def failure_reason(exc: BaseException) -> str:
    """Return a few plain words for why a call to the API failed ("overloaded", "timed out")."""
    import anthropic

    if isinstance(exc, anthropic.APITimeoutError):
        return "it timed out"
    if isinstance(exc, anthropic.APIConnectionError):
        return "the connection failed"
    if isinstance(exc, anthropic.APIStatusError):
        kind = _error_type(exc.body)
        if exc.status_code == 529 or kind == "overloaded_error":
            return "overloaded"
        if exc.status_code == 429 or kind == "rate_limit_error":
            return "rate limited"
        if exc.status_code >= 500 or kind == "api_error":
            return f"server error {exc.status_code}" if exc.status_code >= 500 else "server error"
        return f"error {exc.status_code}"
    return type(exc).__name__


def refused_key(exc: BaseException) -> bool:
    """Return whether the API refused the bot's credentials (retrying will not help)."""
    import anthropic

    return isinstance(exc, (anthropic.AuthenticationError, anthropic.PermissionDeniedError))


def rejected_request(exc: BaseException) -> bool:
    """Return whether the API rejected the request itself (a bad model name, a too large prompt)."""
    import anthropic

    return isinstance(exc, anthropic.APIStatusError) and exc.status_code in (400, 404, 413, 422)


def _error_type(body: Any) -> str:
    """Return the error's type from an API error body ({"type": "error", "error": {"type": ...}})."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("type", ""))
    return ""
