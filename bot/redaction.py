"""The redaction step every outgoing text, stored text, log line and file passes through.

Besides secrets, a text loses what no database can store: lone surrogates (invalid UTF-8
that a JSON payload can still carry: `"\\ud800"`) become U+FFFD and NUL characters, which
PostgreSQL refuses in text, are dropped. Files keep their bytes (`Redactor.bytes`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"

#: Shapes of credentials worth hiding even when they are not this bot's own.
_TOKEN_SHAPES = re.compile(
    r"(xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack bot/user tokens
    r"|xapp-[A-Za-z0-9-]{10,}"  # Slack app-level tokens
    r"|sk-ant-[A-Za-z0-9_-]{10,}"  # Anthropic keys
    r"|[MN][A-Za-z\d_-]{23,25}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}"  # Discord bot tokens
    r"|(?:postgres(?:ql)?|redis|rediss)(?:\+\w+)?://[^\s:@/]+:[^\s@/]+@"  # URLs with passwords
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z))"  # PEM private keys
)
#: What no database stores in text: NUL (PostgreSQL) and lone surrogates (not encodable as UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Redactor:
    """Replaces known secret values and credential-shaped strings with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """Return `text` with every secret replaced, and storable (see the module's docstring)."""
        if _UNSTORABLE.search(text):
            text = _UNSTORABLE.sub(lambda match: "" if match.group() == "\x00" else "\ufffd", text)
        return self._secrets_hidden(text)

    def _secrets_hidden(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _TOKEN_SHAPES.sub(REDACTED, text)

    def json(self, value: Any) -> Any:
        """Return a JSON-like value (dicts, lists, strings) with every string in it redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(key)): self.json(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(item) for item in value]
        return value

    def bytes(self, data: bytes) -> bytes:
        """Return `data` with secrets replaced, when it is UTF-8 text; binary passes unchanged."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
        redacted = self._secrets_hidden(text)
        return data if redacted == text else redacted.encode("utf-8")


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message and any traceback text."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self._redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
