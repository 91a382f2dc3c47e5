"""Logging: one setup for every command, redacting secrets from every record.

Records carry the ids of the work they belong to: `bind` sets `conversation_id`, `run_id` or
`job_id` at a boundary (the engine's dispatch of one message, one job, one agent run) and
every record logged inside it, in the same thread, carries them. `scoped` gives a function a
context of its own, so what it binds ends with it. `BOT_LOG_FORMAT=json` writes one JSON
object per line with those ids as fields; the default is one line of text.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import UserFacingError
from bot.redaction import RedactingFilter, Redactor

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The values BOT_LOG_FORMAT takes.
LOG_FORMATS = ("text", "json")
#: The ids `bind` takes, in the order a JSON line lists them.
ID_FIELDS = ("conversation_id", "run_id", "job_id")

_ids: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("threadwork_log_ids", default={})  # noqa: B039

F = TypeVar("F", bound=Callable[..., Any])


def bind(**ids: Any) -> None:
    """Attach ids (`conversation_id`, `run_id`, `job_id`) to every later record of this context."""
    unknown = set(ids) - set(ID_FIELDS)
    if unknown:
        raise TypeError(f"unknown log id(s): {', '.join(sorted(unknown))}")
    _ids.set({**_ids.get(), **{name: value for name, value in ids.items() if value is not None}})


def current_ids() -> dict[str, Any]:
    """Return the ids bound in this context."""
    return dict(_ids.get())


def scoped(func: F) -> F:
    """Run `func` in a copy of the caller's context: ids it binds end when it returns."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return contextvars.copy_context().run(func, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class IdsFilter(logging.Filter):
    """Copies the context's ids onto each record (as attributes named like the ids)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _ids.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonLinesFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, ids, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        line["pid"] = record.process
        exc_text = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        if exc_text:
            line["traceback"] = exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def log_format(value: str | None = None) -> str:
    """Return BOT_LOG_FORMAT (`text` or `json`); anything else is a user-facing error."""
    chosen = (value if value is not None else os.environ.get("BOT_LOG_FORMAT") or "text").strip().lower()
    if chosen not in LOG_FORMATS:
        raise UserFacingError(f"BOT_LOG_FORMAT={chosen!r} is not a log format: use {' or '.join(LOG_FORMATS)}")
    return chosen


def setup_logging(redactor: Redactor, *, log_file: Path | None = None, level: str | None = None,
                  fmt: str | None = None) -> None:
    """Send logs to stderr (or a file), at BOT_LOG_LEVEL, in BOT_LOG_FORMAT, through the redaction filter."""
    level = (level or os.environ.get("BOT_LOG_LEVEL") or "WARNING").upper()
    chosen = log_format(fmt)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if chosen == "json" else logging.Formatter(FORMAT))
    # Redaction first: the formatter sees only the redacted message and traceback.
    handler.addFilter(RedactingFilter(redactor))
    handler.addFilter(IdsFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if os.environ.get("BOT_TRACE_PLUGINS", "") not in ("", "0"):
        logging.getLogger("bot.plugins").setLevel(logging.INFO)
