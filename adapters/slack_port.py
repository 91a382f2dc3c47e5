"""Slack's `ChatPort`: posts, edits and files through the Web API alone, from any process.

The adapter (`adapters.slack`) attaches one to the engine while it serves; a worker anywhere
builds its own with `web_api_port`, which needs only `SLACK_BOT_TOKEN` (no Bolt, no Socket
Mode connection). Slack's 429 becomes `bot.errors.RateLimited`, so `LiveMessage` waits out
`Retry-After` for that message alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from adapters.slack_format import choice_blocks, fit, from_slack, status_blocks, to_mrkdwn
from bot import constants, metrics
from bot.engine import Engine
from bot.errors import HistoryRefused, RateLimited
from bot.file_links import FileLinks
from bot.types import Attachment, Choice, Reply, ThreadMessage, ThreadRef

__all__ = ["PLATFORM", "SlackPort", "api_url", "web_api_port", "web_client"]

PLATFORM = "slack"

#: Slack's Web API, unless SLACK_API_URL points the client elsewhere (slack_sdk's default).
DEFAULT_API_URL = "https://slack.com/api/"
#: Seconds a Web API request may take before it counts as failed (slack_sdk defaults to 30).
WEB_API_TIMEOUT_S = 30
#: Slack message subtypes that are a person speaking; edits, joins and bot posts are not.
SPOKEN_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
#: Messages per conversations.replies page (Slack's reference: no more than 200 recommended).
REPLIES_PAGE = 200
#: Pages read of one thread at most: a thread longer than this is read from its start, and only
#: the newest messages read are kept (what was said last before the bot came matters most).
REPLIES_MAX_PAGES = 5
#: Errors that asking again will not fix: the app lacks a scope or may not see the channel.
HISTORY_REFUSED_ERRORS = frozenset({"missing_scope", "not_in_channel", "channel_not_found", "thread_not_found",
                                    "access_denied", "not_allowed_token_type", "no_permission"})


def api_url(settings: Any) -> str:
    """Return the Web API base URL: SLACK_API_URL (with its trailing slash) or Slack's."""
    url = settings.get("SLACK_API_URL") or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"


def web_client(settings: Any) -> WebClient:
    """Return a Web API client with the bot token, at SLACK_API_URL; it retries no 429 by itself."""
    return WebClient(token=settings.get("SLACK_BOT_TOKEN"), base_url=api_url(settings), timeout=WEB_API_TIMEOUT_S)


@contextmanager
def rate_limits() -> Iterator[None]:
    """Turn Slack's 429 into `RateLimited`, so the caller (LiveMessage) waits without blocking others."""
    try:
        yield
    except SlackApiError as exc:
        if exc.response is not None and exc.response.status_code == 429:
            metrics.rate_limited("slack", str(exc.response.api_url).rsplit("/", 1)[-1])
            raise RateLimited(_retry_after(exc.response), "Slack rate limit") from None
        raise


def _retry_after(response: SlackResponse) -> float:
    headers = {key.lower(): value for key, value in (response.headers or {}).items()}
    value = headers.get("retry-after")
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return max(float(value), 0.0) if value is not None else 1.0
    except ValueError:
        return 1.0


def error_code(exc: SlackApiError) -> str:
    return str((exc.response or {}).get("error", "")) if exc.response is not None else ""


class SlackPort:
    """The engine's `ChatPort` for Slack: mrkdwn posts and edits in threads, files into threads."""

    platform = PLATFORM

    def __init__(self, client: WebClient) -> None:
        self.client = client
        self.links = FileLinks()

    def post(self, where: ThreadRef, reply: Reply) -> str:
        with rate_limits():
            response = self.client.chat_postMessage(channel=where.channel, thread_ts=where.thread or None,
                                                    unfurl_links=False, **_content(reply, constants.SLACK_TEXT_LIMIT))
        return str(response["ts"])

    def post_choices(self, where: ThreadRef, reply: Reply, choices: list[Choice]) -> str:
        """Post the reply with a button per choice (Block Kit `actions`); a press is a block_actions payload."""
        text = fit(to_mrkdwn(reply.text), constants.SLACK_TEXT_LIMIT)
        with rate_limits():
            response = self.client.chat_postMessage(channel=where.channel, thread_ts=where.thread or None,
                                                    unfurl_links=False, text=text,
                                                    blocks=choice_blocks(reply.text, choices))
        return str(response["ts"])

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        with rate_limits():
            try:
                self.client.chat_update(channel=where.channel, ts=message_id,
                                        **_content(reply, constants.SLACK_TEXT_LIMIT))
            except SlackApiError as exc:
                if error_code(exc) != "msg_too_long":
                    raise
                # Slack refuses long edits well below its 40k cap: show the safe part.
                self.client.chat_update(channel=where.channel, ts=message_id,
                                        **_content(reply, constants.SLACK_EDIT_SAFE_LIMIT))

    def open_thread(self, where: ThreadRef, text: str) -> ThreadRef:
        """Post `text` as a new top-level message in the channel; return the thread it starts (its ts)."""
        channel = ThreadRef(PLATFORM, where.channel, "")
        return ThreadRef(PLATFORM, where.channel, self.post(channel, Reply(text)))

    def upload_limit(self, where: ThreadRef) -> int:
        """Return the largest file Slack takes in one upload."""
        return constants.SLACK_FILE_LIMIT

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        with rate_limits():
            response = self.client.files_upload_v2(
                channel=where.channel, thread_ts=where.thread or None, content=attachment.data,
                filename=attachment.filename, title=attachment.title or attachment.filename,
                initial_comment=to_mrkdwn(attachment.comment) if attachment.comment else None)
        file = response["file"]
        self.links.remember(str(file["id"]), file.get("permalink") or file.get("url_private"))
        return str(file["id"])

    def file_link(self, file_id: str) -> str | None:
        """Return the permalink of a file this port uploaded lately."""
        return self.links.get(file_id)

    def thread_history(self, where: ThreadRef, *, before: str | None, limit: int) -> list[ThreadMessage]:
        """Return the thread's messages before `before` (a ts), oldest first: conversations.replies, paginated."""
        if not where.thread or before == where.thread:
            return []  # the message that brought the bot started the thread: nothing came before it
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(REPLIES_MAX_PAGES):
            try:
                with rate_limits():
                    response = self.client.conversations_replies(
                        channel=where.channel, ts=where.thread, limit=REPLIES_PAGE, cursor=cursor,
                        **({"latest": before, "inclusive": False} if before else {}))
            except SlackApiError as exc:
                if error_code(exc) in HISTORY_REFUSED_ERRORS:
                    raise HistoryRefused(f"conversations.replies: {error_code(exc)}") from None
                raise
            found.extend(response.get("messages") or [])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                break
        earlier = [item for item in found if item.get("ts") and (before is None or _older(item["ts"], before))]
        earlier = earlier[-limit:]
        people = {item["user"] for item in earlier if item.get("user") and not _by_a_bot(item)}
        names = {user: self._name(user) for user in sorted(people)}
        return [ThreadMessage(external_id=str(item["ts"]), user_id=str(item.get("user") or item.get("bot_id") or ""),
                              text=from_slack(item.get("text") or ""), user_name=names.get(item.get("user"), ""),
                              sent_at=datetime.fromtimestamp(float(item["ts"]), timezone.utc), is_bot=_by_a_bot(item))
                for item in earlier]

    def _name(self, user_id: str) -> str:
        """Return a person's display name (users.info), or "" when Slack won't say."""
        try:
            with rate_limits():
                user = self.client.users_info(user=user_id)["user"]
        except (SlackApiError, RateLimited):
            return ""
        profile = user.get("profile") or {}
        return profile.get("display_name") or profile.get("real_name") or user.get("real_name") or user.get("name") or ""


def _by_a_bot(item: dict[str, Any]) -> bool:
    """Return whether a message from the Web API is an app's or a bot's (this one's too), or no one's words."""
    return bool(item.get("bot_id")) or item.get("subtype") not in SPOKEN_SUBTYPES


def _older(ts: str, than: str) -> bool:
    """Return whether one Slack ts is earlier than another (compared exactly, not as floats)."""
    def key(value: str) -> tuple[int, int]:
        seconds, _, fraction = value.partition(".")
        return int(seconds), int(fraction.ljust(6, "0")[:6] or 0)

    return key(ts) < key(than)


def _content(reply: Reply, limit: int) -> dict[str, Any]:
    """Return the text and blocks of a post or edit; blocks are always sent, so an edit replaces them."""
    if reply.status is None:  # an empty text (an answer about to stream in) shows that something comes
        return {"text": fit(to_mrkdwn(reply.text), limit) or "…", "blocks": []}
    return {"text": fit(to_mrkdwn(reply.text), constants.STATUS_TEXT_LIMIT), "blocks": status_blocks(reply.status)}


def web_api_port(engine: Engine) -> SlackPort | None:
    """Return a port that posts and edits through the Web API alone (for workers), or None without a token."""
    if not engine.settings.get("SLACK_BOT_TOKEN"):
        return None
    return SlackPort(web_client(engine.settings))
