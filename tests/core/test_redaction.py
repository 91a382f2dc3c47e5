"""The redactor hides credential shapes the bot does not hold itself (one an agent prints)."""

from __future__ import annotations

import pytest

from bot.redaction import REDACTED, Redactor
from tests.support.engines import message

# Secrets of the shapes the bot knows, none of them configured in the bot.
FOREIGN_SECRETS = {
    "slack bot token": "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack user token": "xoxp-1234567890-0987654321-AbCdEfGhIjKl",
    "slack app token": "xapp-1-A0123456789-1234567890123-abcdef0123456789",
    "anthropic key": "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcdEFGH",
    "discord bot token": "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.AbCdEfGhIjKlMnOpQrStUvWxYz01234567",
    "postgres url with password": "postgresql+psycopg://app:hunter2hunter2@db.internal:5432/app",
    "redis url with password": "redis://default:s3cr3tpassw0rd@cache:6379/0",
    "pem private key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7s9Xr\nabcDEF==\n-----END RSA PRIVATE KEY-----",
}


@pytest.mark.parametrize("kind", sorted(FOREIGN_SECRETS))
def test_a_secret_the_bot_does_not_hold_is_redacted_from_text(kind: str) -> None:
    secret = FOREIGN_SECRETS[kind]
    redacted = Redactor()(f"the agent found this in the repo: {secret} (line 3)")
    assert secret not in redacted and REDACTED in redacted
    assert redacted.startswith("the agent found this in the repo: ")


def test_nested_json_is_redacted_in_every_string_and_key() -> None:
    token = FOREIGN_SECRETS["slack bot token"]
    event = {"type": "tool_use", "part": {"state": {"input": {"command": f"echo {token}"},
                                                     "output": [f"{token}\n", 3, None]}}, token: True}
    clean = Redactor().json(event)
    assert token not in repr(clean)
    assert clean["part"]["state"]["output"][1:] == [3, None] and clean["type"] == "tool_use"


def test_the_bots_own_secrets_are_replaced_whatever_their_shape() -> None:
    assert Redactor(["plain-words-secret"])("x plain-words-secret y") == f"x {REDACTED} y"
    assert Redactor(["plain-words-secret"]).bytes(b"\xff\xfe binary") == b"\xff\xfe binary"


def test_a_token_pasted_into_the_chat_is_stored_redacted(engine) -> None:
    token = FOREIGN_SECRETS["anthropic key"]
    engine.dispatch(message(f"/history here is my key {token}"))
    history = engine.history(1)
    assert history and all(token not in entry.text for entry in history)
    assert any("[redacted]" in entry.text for entry in history)

