"""How Threadwork looks in Discord: text cut into 2,000-character messages, run status embeds
with a Cancel button, and the notice shown instead of a file that is too big.

Discord renders markdown as it is, so a reply's text is only cut: at paragraph ends, else at
line ends, never inside a code block. A code block longer than one message is closed at the
cut and reopened (with its language) in the next message; those added fences are the only
characters that are not the reply's own.
"""

from __future__ import annotations

import re

import discord

from bot import constants
from bot.progress import LIVE_VIEW_LABEL, STATE_ICONS, format_elapsed
from bot.types import Choice, RunState, RunStatus

#: Discord caps message content at 2,000 characters (Discord API docs, Create Message).
CONTENT_LIMIT = constants.DISCORD_CONTENT_LIMIT
#: The status embed quotes this much of the agent's latest text (as `render_status` does).
STATUS_LATEST_TEXT_CHARS = 300
#: What a thread is called when the message that opens it has no words left.
DEFAULT_THREAD_NAME = "Threadwork"
#: custom_id of a run's Cancel button; the gateway maps clicks back to `/cancel <run_id>`.
CANCEL_ID_TEMPLATE = r"threadwork:cancel:(?P<run_id>[0-9]+)"

STATE_COLOURS = {
    RunState.QUEUED: discord.Colour.light_grey(),
    RunState.RUNNING: discord.Colour.blurple(),
    RunState.DONE: discord.Colour.green(),
    RunState.FAILED: discord.Colour.red(),
    RunState.CANCELLED: discord.Colour.dark_grey(),
}

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,})[^`]*$")


# -- text ----------------------------------------------------------------------------------------


def split_markdown(text: str, limit: int = CONTENT_LIMIT) -> list[str]:
    """Return the text cut into parts of at most `limit` characters, code blocks kept whole.

    Cuts fall at paragraph ends, else at line ends, else (one huge line) at a space. A code
    block longer than `limit` is cut at line ends, each part closing the fence and the next
    reopening it.
    """
    parts: list[str] = []
    current = ""
    for block, opener in _blocks(text):
        if len(current) + len(block) <= limit:
            current += block
            continue
        if len(block) <= limit:
            parts.append(current)  # never empty here: the block alone fits
            current = block
            continue
        # A block longer than a message starts in the room left in this part, if it fits there.
        split = _split_code if opener else _split_lines
        pieces = split(block, opener or "", limit, limit - len(current))
        if len(current) + len(pieces[0]) > limit:
            pieces = split(block, opener or "", limit, limit)
            parts.append(current)
            current = ""
        pieces[0] = current + pieces[0]
        parts.extend(pieces[:-1])
        current = pieces[-1]
    if current:
        parts.append(current)
    # Discord refuses an empty message and trims whitespace: a blank part says nothing.
    return [part for part in parts if part.strip()] or [text[:limit]]


def _blocks(text: str) -> list[tuple[str, str | None]]:
    """Return (block, fence opener) pairs: paragraphs (with their blank lines) and code blocks."""
    blocks: list[tuple[str, str | None]] = []
    current: list[str] = []
    opener: str | None = None
    closer: re.Pattern[str] | None = None
    for line in text.splitlines(keepends=True):
        if opener is None:
            fence = _FENCE_OPEN.match(line.rstrip("\n"))
            if fence:
                if current:
                    blocks.append(("".join(current), None))
                current, opener = [line], line if line.endswith("\n") else line + "\n"
                closer = re.compile(rf"^ {{0,3}}`{{{len(fence[1])},}}\s*$")
                continue
            current.append(line)
            if not line.strip():
                blocks.append(("".join(current), None))
                current = []
        else:
            current.append(line)
            assert closer is not None
            if closer.match(line.rstrip("\n")):
                blocks.append(("".join(current), opener))
                current, opener = [], None
    if current:
        blocks.append(("".join(current), opener))
    return blocks


def _split_lines(block: str, opener: str, limit: int, first_limit: int) -> list[str]:
    """Return a paragraph cut at line ends (spaces for huge lines); the first piece within `first_limit`."""
    pieces: list[str] = []
    current = ""
    for line in block.splitlines(keepends=True):
        for piece in _hard_split(line, limit):
            if len(current) + len(piece) > (limit if pieces else first_limit) and (current or pieces):
                pieces.append(current)
                current = ""
            current += piece
    return [*pieces, current]


def _split_code(block: str, opener: str, limit: int, first_limit: int) -> list[str]:
    """Return a code block cut at line ends, each piece closed and the next reopened."""
    lines = block.splitlines(keepends=True)
    body = lines[1:]
    fence = _FENCE_OPEN.match(opener.rstrip("\n"))
    assert fence is not None
    added_close = fence[1]
    closing = ""
    if body and re.match(rf"^ {{0,3}}`{{{len(added_close)},}}\s*$", body[-1].rstrip("\n")):
        closing = body.pop()
    # Room kept at the end of every part for the fence that closes it (and a newline before it).
    reserve = max(len(added_close) + 1, len(closing))
    budget = limit - len(opener) - reserve
    pieces: list[str] = []
    current = opener
    for line in body:
        for piece in _hard_split(line, budget):
            if len(current) + len(piece) + reserve > (limit if pieces else first_limit) and current != opener:
                pieces.append(current + ("" if current.endswith("\n") else "\n") + added_close)
                current = opener
            current += piece
    return [*pieces, current + closing]


def _hard_split(line: str, limit: int) -> list[str]:
    """Return a line cut into pieces of at most `limit` characters, at spaces where possible."""
    pieces = []
    while len(line) > limit:
        cut = line.rfind(" ", 0, limit) + 1 or limit
        pieces.append(line[:cut])
        line = line[cut:]
    return [*pieces, line] if line else pieces


def thread_name(text: str) -> str:
    """Return a thread name for a request: its first line, within Discord's 100 characters."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = " ".join(first.split())
    if len(first) > constants.DISCORD_THREAD_NAME_LIMIT:
        first = first[: constants.DISCORD_THREAD_NAME_LIMIT - 1].rstrip() + "…"
    return first or DEFAULT_THREAD_NAME


# -- files ---------------------------------------------------------------------------------------


def format_mib(size: int) -> str:
    """Return a byte count in MiB, to one decimal where that matters ("14 MiB", "10.4 MiB")."""
    mib = size / (1024 * 1024)
    return f"{mib:.1f}".removesuffix(".0") + " MiB"


def too_big_notice(filename: str, size: int, limit: int, *, in_server: bool) -> str:
    """Return what the thread shows instead of a file over the upload limit."""
    whose = "this server's" if in_server else "Discord's"
    return f"{filename} is {format_mib(size)}, over {whose} {format_mib(limit)} limit; it is kept in the workspace."


# -- run status ----------------------------------------------------------------------------------


def status_embed(status: RunStatus) -> discord.Embed:
    """Return the run's status as an embed: state in the title, figures and steps as fields."""
    title = f"{STATE_ICONS[status.state]} Agent run {status.run_id} · {status.state.value}"
    embed = discord.Embed(title=title[: constants.DISCORD_EMBED_TITLE_LIMIT], colour=STATE_COLOURS[status.state])
    description = []
    if status.latest_text:
        latest = " ".join(status.latest_text.split())
        cut = latest[:STATUS_LATEST_TEXT_CHARS]
        description.append(f"> {cut}{'…' if len(latest) > len(cut) else ''}")
    if status.note:
        description.append(status.note[:constants.DISCORD_EMBED_FIELD_VALUE_LIMIT])
    if description:
        embed.description = "\n".join(description)
    embed.add_field(name="Agent", value=status.agent[:constants.DISCORD_EMBED_FIELD_VALUE_LIMIT] or "?", inline=True)
    if status.requested_by:
        embed.add_field(name="Asked by", value=status.requested_by[:constants.DISCORD_EMBED_FIELD_VALUE_LIMIT], inline=True)
    if status.state == RunState.QUEUED:
        if status.queue_position:
            embed.add_field(name="Queue", value=f"{_ordinal(status.queue_position)} in line", inline=True)
    else:
        embed.add_field(name="Elapsed", value=format_elapsed(status.elapsed_s), inline=True)
    if status.tokens_in or status.tokens_out:
        embed.add_field(name="Tokens", value=f"{status.tokens_in:,} in / {status.tokens_out:,} out", inline=True)
        embed.add_field(name="Cost", value=f"${status.cost:.4f}", inline=True)
    steps = _steps(status)
    if steps:
        embed.add_field(name="Steps", value=steps, inline=False)
    if status.web_url:  # the title links there too
        embed.url = status.web_url
        embed.add_field(name="Live view", value=f"[{LIVE_VIEW_LABEL}]({status.web_url})", inline=False)
    if not status.state.is_final:
        embed.set_footer(text=f"Cancel with the button or /cancel {status.run_id}")
    assert len(embed) <= constants.DISCORD_EMBED_TOTAL_LIMIT  # every part above is capped well below it
    return embed


def _steps(status: RunStatus) -> str:
    """Return the checklist as lines within one field's 1,024 characters, the newest kept."""
    lines = []
    for label, ok in status.checklist:
        mark = "✓" if ok else ("✗" if ok is False else "…")
        lines.append(f"{mark} {' '.join(label.split())[:200]}")
    hidden = status.hidden_items
    while True:
        head = [f"… and {hidden} earlier step(s)"] if hidden else []
        text = "\n".join(head + lines)
        if len(text) <= constants.DISCORD_EMBED_FIELD_VALUE_LIMIT:
            return text
        lines.pop(0)
        hidden += 1


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=CANCEL_ID_TEMPLATE):  # type: ignore[misc]
    """The Cancel button of a run's status message; any process can post it, the gateway answers it.

    The run id lives in the custom_id, so a click reaches the bot after restarts and on status
    messages a worker posted through the REST API.
    """

    def __init__(self, run_id: int) -> None:
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.danger,
                                           custom_id=f"threadwork:cancel:{run_id}"))
        self.run_id = run_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item,
                             match: re.Match[str]) -> CancelButton:
        return cls(int(match["run_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.cancel_clicked(interaction, self.run_id)  # type: ignore[attr-defined]


#: custom_id of a message's choice button (an approval request): the chat line a click stands for.
CHOICE_ID_TEMPLATE = r"threadwork:choice:(?P<line>/.+)"
#: Discord's longest custom_id (a component's field limit).
CUSTOM_ID_LIMIT = 100
CHOICE_STYLES = {"primary": discord.ButtonStyle.primary, "danger": discord.ButtonStyle.danger}


class ChoiceButton(discord.ui.DynamicItem[discord.ui.Button], template=CHOICE_ID_TEMPLATE):  # type: ignore[misc]
    """A button of a message with choices (Approve once / Always / Reject); the line lives in its custom_id."""

    def __init__(self, line: str, label: str = "", style: str = "") -> None:
        super().__init__(discord.ui.Button(label=label or line, custom_id=f"threadwork:choice:{line}",
                                           style=CHOICE_STYLES.get(style, discord.ButtonStyle.secondary)))
        self.line = line

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item,
                             match: re.Match[str]) -> ChoiceButton:
        return cls(match["line"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.choice_clicked(interaction, self.line)  # type: ignore[attr-defined]


def choice_view(choices: list[Choice]) -> discord.ui.View:
    """Return one button per choice whose line fits a custom_id. Must run on an event loop."""
    view = discord.ui.View(timeout=None)
    for choice in choices:
        if len(f"threadwork:choice:{choice.line}") <= CUSTOM_ID_LIMIT:
            view.add_item(ChoiceButton(choice.line, choice.label, choice.style))
    return view


def status_view(status: RunStatus) -> discord.ui.View | None:
    """Return the buttons of a status message: Cancel while the run is not over, else none.

    Must run on an event loop (discord.py views need one).
    """
    if status.state.is_final:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(status.run_id))
    return view
