"""Slack's text formats: markdown to mrkdwn, Slack's markup back to plain text, status blocks.

Everything here is pure (no network): the Slack adapter calls it on every post and edit, and
on every incoming message. Limits are `bot.constants` (Slack's own numbers, with sources).
"""

from __future__ import annotations

import re
from typing import Any

from bot import constants
from bot.progress import LIVE_VIEW_LABEL, STATE_ICONS, format_elapsed
from bot.types import Choice, RunState, RunStatus

#: The Cancel button on a run's status message; its value is the run id.
CANCEL_ACTION_ID = "threadwork_cancel"
#: The "Open live view" link button; Slack still sends its click, which the adapter only acks.
LIVE_VIEW_ACTION_ID = "threadwork_live_view"
#: Buttons of a message with choices (an approval request): `threadwork_choice_<n>`, valued
#: with the chat line a press stands for (`bot.types.Choice`).
CHOICE_ACTION_PREFIX = "threadwork_choice_"
#: A checklist line shows at most this much of a step's title, so twelve steps fit a section.
CHECKLIST_LABEL_CHARS = 200
#: The agent's latest words on the status message are cut here (as `render_status` does).
LATEST_TEXT_CHARS = 300

#: A checklist step's mark by outcome: done, failed, still going (Slack's own emoji names).
CHECK_MARKS = {True: ":white_check_mark:", False: ":x:", None: ":hourglass_flowing_sand:"}

# -- markdown -> mrkdwn ------------------------------------------------------------------------

_FENCE = re.compile(r"```[^\n`]*\n?(.*?)```", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
#: Slack's own markup that passes through untouched: mentions, channels, specials, links.
_SLACK_TOKEN = re.compile(r"<(?:[@#!][^<>\s]+|(?:https?|mailto):[^<>\s]+)>")
_IMAGE = re.compile(r"!\[([^\]\n]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+", re.MULTILINE)
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_QUOTE = re.compile(r"^&gt;[ \t]?", re.MULTILINE)
_BOLD_MARK = "\x00"


def escape(text: str) -> str:
    """Return text with Slack's three control characters escaped (&, <, >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Return markdown rewritten as Slack mrkdwn: bold, italics, links, headings, lists, code."""
    parts: list[str] = []
    last = 0
    for fence in _FENCE.finditer(markdown):
        parts.append(_prose(markdown[last:fence.start()]))
        parts.append("```\n" + escape(fence.group(1).rstrip("\n")) + "\n```")
        last = fence.end()
    parts.append(_prose(markdown[last:]))
    return "".join(parts)


def _prose(text: str) -> str:
    """Convert text outside fenced code; inline code, links and Slack's own markup are kept aside."""
    kept: list[str] = []

    def keep(value: str) -> str:
        kept.append(value)
        return f"\x01{len(kept) - 1}\x02"

    text = _INLINE_CODE.sub(lambda m: keep(escape(m.group(0))), text)
    text = _SLACK_TOKEN.sub(lambda m: keep(m.group(0)), text)
    text = _IMAGE.sub(lambda m: keep(f"<{escape(m.group(2))}|{escape(m.group(1)) or 'image'}>"), text)
    text = _LINK.sub(lambda m: keep(f"<{escape(m.group(2))}|{escape(m.group(1))}>"), text)
    text = escape(text)
    text = _QUOTE.sub("> ", text)
    text = _HEADING.sub(lambda m: _BOLD_MARK + m.group(1).replace("**", "").replace("__", "") + _BOLD_MARK, text)
    text = _BULLET.sub(lambda m: m.group(1) + "• ", text)
    text = _BOLD.sub(lambda m: _BOLD_MARK + m.group(2) + _BOLD_MARK, text)
    text = _ITALIC.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = text.replace(_BOLD_MARK, "*")
    return re.sub(r"\x01(\d+)\x02", lambda m: kept[int(m.group(1))], text)


def fit(text: str, limit: int) -> str:
    """Return text cut to at most `limit` characters, marked with an ellipsis, code fences closed."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 5].rstrip()
    if cut.count("```") % 2:
        cut += "\n```"
    return cut[: limit - 1] + "…"


# -- Slack markup -> plain text ------------------------------------------------------------------

_INCOMING_LINK = re.compile(r"<((?:https?|mailto):[^<>|\s]+)(?:\|([^<>]*))?>")
def from_slack(text: str, bot_user_id: str | None = None) -> str:
    """Return a message's text as plain text: the bot's own mention dropped, links and entities undone."""
    if bot_user_id:
        text = re.sub(rf"[ \t]*<@{re.escape(bot_user_id)}(?:\|[^<>]*)?>[,:]?[ \t]*", " ", text)

    def link(match: re.Match[str]) -> str:
        url, label = match.group(1), match.group(2)
        url = url.removeprefix("mailto:") if label and url == f"mailto:{label}" else url
        return url if not label or label in (url, url.split("://", 1)[-1]) else f"{label} ({url})"

    text = _INCOMING_LINK.sub(link, text)
    # Channel mentions keep Slack's own form (<#C0123|name>): its id is what `/share` posts to.
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.strip()


# -- the status message as Block Kit -------------------------------------------------------------


def status_blocks(status: RunStatus) -> list[dict[str, Any]]:
    """Return a run's status as blocks: state and figures, checklist, latest words, cost, Cancel."""
    state = status.state.value
    if status.state == RunState.QUEUED and status.queue_position:
        state += f" · #{status.queue_position} in line"
    head = f"{STATE_ICONS[status.state]} *Agent run {status.run_id}* · *{state}*"
    fields = [f"*Agent*\n{escape(status.agent)}"]
    if status.state != RunState.QUEUED:
        fields.append(f"*Elapsed*\n{format_elapsed(status.elapsed_s)}")
    if status.requested_by:
        fields.append(f"*Asked by*\n{escape(status.requested_by)}")
    if status.checklist or status.hidden_items:
        done = sum(1 for _, ok in status.checklist if ok) + status.hidden_items
        fields.append(f"*Steps*\n{done} of {len(status.checklist) + status.hidden_items} done")
    blocks: list[dict[str, Any]] = [{
        "type": "section", "block_id": "status_head", "text": _mrkdwn(head),
        "fields": [_mrkdwn(fit(field, constants.SLACK_FIELD_LIMIT)) for field in fields],
    }]
    lines = []
    if status.hidden_items:
        lines.append(f"_… and {status.hidden_items} earlier step(s)_")
    for label, ok in status.checklist:
        lines.append(f"{CHECK_MARKS[ok]} {to_mrkdwn(fit(' '.join(label.split()), CHECKLIST_LABEL_CHARS))}")
    if lines:
        blocks.append({"type": "section", "block_id": "status_steps",
                       "text": _mrkdwn(fit("\n".join(lines), constants.SLACK_SECTION_LIMIT))})
    if status.latest_text.strip():
        latest = fit(" ".join(status.latest_text.split()), LATEST_TEXT_CHARS)
        blocks.append({"type": "section", "block_id": "status_latest", "text": _mrkdwn("> " + to_mrkdwn(latest))})
    if status.note:
        blocks.append({"type": "section", "block_id": "status_note",
                       "text": _mrkdwn(fit(to_mrkdwn(status.note), constants.SLACK_SECTION_LIMIT))})
    if status.tokens_in or status.tokens_out:
        usage = f"Tokens {status.tokens_in:,} in / {status.tokens_out:,} out · ${status.cost:.4f}"
        blocks.append({"type": "context", "block_id": "status_usage", "elements": [_mrkdwn(usage)]})
    buttons = [] if status.state.is_final else [_cancel_button(status.run_id)]
    if status.web_url:
        buttons.append({"type": "button", "action_id": LIVE_VIEW_ACTION_ID, "url": status.web_url,
                        "text": {"type": "plain_text", "text": LIVE_VIEW_LABEL}})
    if buttons:
        blocks.append({"type": "actions", "block_id": "status_actions", "elements": buttons})
    return blocks[: constants.SLACK_MAX_BLOCKS]


def choice_blocks(text: str, choices: list[Choice]) -> list[dict[str, Any]]:
    """Return a message with buttons as blocks: its text, then one button per choice."""
    buttons = []
    for number, choice in enumerate(choices):
        button = {"type": "button", "action_id": f"{CHOICE_ACTION_PREFIX}{number}", "value": choice.line,
                  "text": {"type": "plain_text", "text": choice.label}}
        if choice.style in ("primary", "danger"):
            button["style"] = choice.style
        buttons.append(button)
    return [{"type": "section", "block_id": "choice_text",
             "text": _mrkdwn(fit(to_mrkdwn(text), constants.SLACK_SECTION_LIMIT))},
            {"type": "actions", "block_id": "choice_actions", "elements": buttons}]


def _cancel_button(run_id: int) -> dict[str, Any]:
    return {
        "type": "button", "action_id": CANCEL_ACTION_ID, "value": str(run_id), "style": "danger",
        "text": {"type": "plain_text", "text": "Cancel run"},
        "confirm": {
            "title": {"type": "plain_text", "text": "Cancel this run?"},
            "text": _mrkdwn(f"The agent stops working on run {run_id} now."),
            "confirm": {"type": "plain_text", "text": "Cancel run"},
            "deny": {"type": "plain_text", "text": "Keep running"},
            "style": "danger",
        },
    }


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}
