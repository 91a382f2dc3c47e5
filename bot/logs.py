"""Logging: one setup for every command, redacting secrets from every record."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from bot.redaction import RedactingFilter, Redactor

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(redactor: Redactor, *, log_file: Path | None = None, level: str | None = None) -> None:
    """Send logs to stderr (or a file), at BOT_LOG_LEVEL, through the redaction filter."""
    level = (level or os.environ.get("BOT_LOG_LEVEL") or "WARNING").upper()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if os.environ.get("BOT_TRACE_PLUGINS", "") not in ("", "0"):
        logging.getLogger("bot.plugins").setLevel(logging.INFO)
