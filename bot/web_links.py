"""Signed links to the web view: scoped to one conversation, made for one person, expiring.

    status_of ─► run_url(engine, run) ─► "<BOT_PUBLIC_URL>/runs/<id>?t=<token>" in the status message
    adapters.web ─► WebLinks.check(token) ─► LinkGrant(conversation, user) or LinkRefused (403)

A token is an itsdangerous `URLSafeTimedSerializer` payload `{"c": conversation id, "u": user id}`
signed with HMAC-SHA256 under `BOT_WEB_SECRET`, or under a key generated once and kept in
`$BOT_DATA_DIR/web-secret` (mode 600), so every process sharing the data dir (or the variable)
signs and checks the same links. The user is the one the link was made for (the run's
requester): what the page does, it does as that person.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.db.repositories import Messages
from bot.errors import UserFacingError

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.engine import Engine
    from bot.types import AgentRun

#: The variable holding the signing key; needed when web processes do not share the data dir.
SECRET_ENV = "BOT_WEB_SECRET"
#: The web view's public base URL (https://bot.example.com); unset: status messages carry no link.
PUBLIC_URL_ENV = "BOT_PUBLIC_URL"
#: The key generated when BOT_WEB_SECRET is unset, under the data dir.
SECRET_FILE = "web-secret"
#: 32 random bytes: the block of SHA-256, the longest key HMAC-SHA256 uses without hashing it first.
SECRET_BYTES = 32
#: Separates these tokens from any other itsdangerous payload signed with the same key.
SALT = "threadwork.web-link.v1"
#: Between payload, time and signature: not itsdangerous's ".", so a token never takes the
#: shape of a Discord token (`bot.redaction`), which would redact the link out of a status message.
SEPARATOR = "~"


class LinkRefused(UserFacingError):
    """A web link that is missing, tampered with, expired or made for another conversation."""


@dataclass(frozen=True)
class LinkGrant:
    """What a valid link opens: one conversation, as the person it was made for."""

    conversation_id: int
    user_id: str


class WebLinks:
    """Makes and checks the tokens of web links."""

    def __init__(self, secret: bytes, ttl_hours: float) -> None:
        self._secret = secret
        self.ttl_s = ttl_hours * 3600

    def token(self, conversation_id: int, user_id: str, *, issued_at: int | None = None) -> str:
        """Return a token opening the conversation for the user; `issued_at` (Unix seconds) for tests."""
        return self._serializer(issued_at).dumps({"c": conversation_id, "u": user_id})

    def check(self, token: str | None) -> LinkGrant:
        """Return what the token opens; raise `LinkRefused` when it is missing, altered or expired."""
        from itsdangerous import BadSignature

        if not token:
            raise LinkRefused("This page needs the link from the thread.")
        try:
            payload = self._serializer().loads(token, max_age=self.ttl_s)
        except BadSignature:  # SignatureExpired included
            raise LinkRefused("This link is not valid or has expired: ask the thread for a new one.") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("c"), int):
            raise LinkRefused("This link is not valid.")
        return LinkGrant(payload["c"], str(payload.get("u") or ""))

    def _serializer(self, issued_at: int | None = None):
        from itsdangerous import TimestampSigner, URLSafeTimedSerializer

        signer = TimestampSigner
        if issued_at is not None:
            signer = type("IssuedAt", (TimestampSigner,), {"get_timestamp": lambda self: issued_at})
        return URLSafeTimedSerializer(self._secret, salt=SALT, signer=signer,
                                      signer_kwargs={"digest_method": hashlib.sha256, "sep": SEPARATOR})


def links_for(settings: Settings, ttl_hours: float) -> WebLinks:
    """Return the link maker of this deployment: BOT_WEB_SECRET, else the data dir's kept key."""
    return WebLinks(_secret(settings.get(SECRET_ENV), settings.data_dir), ttl_hours)


@functools.lru_cache(maxsize=8)
def _secret(from_env: str | None, data_dir: Path) -> bytes:
    """Return the signing key: the variable's, else the one kept in the data dir (made once, mode 600)."""
    if from_env:
        return from_env.encode()
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".{SECRET_FILE}.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(SECRET_BYTES))
        try:
            os.link(draft, path)  # atomic: two processes starting at once keep the first key
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip().encode()


def public_url(settings: Settings) -> str:
    """Return the web view's public base URL without a trailing slash, or "" when unset."""
    return (settings.get(PUBLIC_URL_ENV) or "").rstrip("/")


def run_url(engine: Engine, run: AgentRun) -> str:
    """Return the signed link to the run's live page, made for its requester; "" without BOT_PUBLIC_URL."""
    base = public_url(engine.settings)
    if not base:
        return ""
    requester = ""
    if run.request_message_id is not None:
        with engine.db.reading() as session:
            requester = Messages(session).get(run.request_message_id)[2]
    token = links_for(engine.settings, engine.manifest.web.link_ttl_hours).token(run.conversation_id, requester)
    return f"{base}/runs/{run.id}?t={token}"


def conversation_url(engine: Engine, conversation_id: int, user_id: str) -> str:
    """Return the signed link to a conversation's page for the user; "" without BOT_PUBLIC_URL."""
    base = public_url(engine.settings)
    if not base:
        return ""
    token = links_for(engine.settings, engine.manifest.web.link_ttl_hours).token(conversation_id, user_id)
    return f"{base}/c/{conversation_id}?t={token}"
