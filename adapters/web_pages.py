"""The web view's pages: what a link may see, read from the database and rendered as HTML.

Everything here is synchronous (Starlette runs it in its thread pool): `adapters.web` turns
requests into these calls. Every text passes `engine.redact` on its way into a page (Jinja's
`finalize`), the diff before it is highlighted; HTML is autoescaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from bot import runs as run_lifecycle
from bot.db.repositories import Conversations, Messages, Participants, Resources, Runs
from bot.engine import Engine
from bot.errors import ResourceGone, UserFacingError
from bot.progress import format_elapsed
from bot.run_events import RunFeed, event_entry, feed_for
from bot.types import AgentRun, EventKind, Resource, RunState
from bot.web_links import LinkGrant, WebLinks, links_for

TEMPLATES = Path(__file__).with_name("web_templates")
#: A resource shown inline up to this size; larger ones are offered for download only (64 KiB:
#: the database's inline text limit, `bot.db.blobs.INLINE_TEXT_LIMIT`).
PREVIEW_BYTES = 64 * 1024
#: The diff is highlighted up to this size; past it, shown plain (Pygments takes ~1 s per MB here).
HIGHLIGHT_BYTES = 512 * 1024
#: Resources of the conversation scanned for one run's (newest first); a run leaves at most
#: `resources.max_uploads` files plus its zip, diff, log and answer.
RUN_RESOURCE_SCAN = 1_000
#: Messages, runs and resources a conversation page lists (newest last / first).
CONVERSATION_ROWS = 200
#: Search hits asked of the channel's index; only this conversation's are shown.
SEARCH_HITS = 50
_CODE = re.compile(r"`([^`\n]+)`")
#: What the run page says after its Cancel button was used, by `Pages.cancel`'s answer.
CANCEL_ANSWERS = {
    "queued": "Cancelled before it started.",
    "running": "Stopping the run…",
    "ended": "The run had already ended.",
    "denied": "This link may not cancel runs here (permissions.cancel).",
}


class NotFound(UserFacingError):
    """A run, conversation or resource the link's conversation does not hold."""


@dataclass
class RunView:
    """Everything the run page shows."""

    run: AgentRun
    token: str
    after: str
    steps: list[dict[str, Any]]
    words: list[dict[str, Any]]
    elapsed_s: float
    tokens_in: int
    tokens_out: int
    cost: float
    note: str
    conversation_title: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    diff_html: Markup | None = None
    diff_plain: str = ""
    flash: str = ""


class Pages:
    """Renders the pages a signed link opens; raises `LinkRefused` or `NotFound` for the rest."""

    def __init__(self, engine: Engine, feed: RunFeed | None = None) -> None:
        self.engine = engine
        self.feed = feed or feed_for(engine.settings)
        self.links: WebLinks = links_for(engine.settings, engine.manifest.web.link_ttl_hours)
        self.blob_dir = engine.settings.data_dir / "blobs"
        self.env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                               finalize=self._finalize)
        self.env.filters.update(code=lambda text: _inline_code(self.engine.redact(str(text))), elapsed=format_elapsed,
                                size=_size)

    def _finalize(self, value: Any) -> Any:
        """Redact every text a template prints; Markup was built from redacted text already."""
        if value is None or isinstance(value, Markup | int | float):
            return "" if value is None else value
        return self.engine.redact(str(value))

    # -- access ------------------------------------------------------------------------------

    def grant(self, token: str | None) -> LinkGrant:
        """Return what the token opens; raise `LinkRefused` (403) when it opens nothing."""
        return self.links.check(token)

    def run_in(self, grant: LinkGrant, run_id: int) -> AgentRun:
        """Return the run when it belongs to the link's conversation; raise `NotFound` otherwise."""
        with self.engine.db.reading() as session:
            run = Runs(session).get_or_none(run_id)
        if run is None or run.conversation_id != grant.conversation_id:
            raise NotFound(f"There is no run {run_id} in this conversation.")
        return run

    # -- the run page ------------------------------------------------------------------------

    def run_view(self, grant: LinkGrant, run_id: int, token: str) -> RunView:
        """Return what the run page shows: stored events, status, the diff and resources."""
        run = self.run_in(grant, run_id)
        after = self.feed.last_id(run_id)  # before the events: the stream then repeats, never skips
        with self.engine.db.reading() as session:
            events = Runs(session).events(run_id)
            title = Conversations(session).get(run.conversation_id).title
        entries = [event_entry(seq, event) for seq, event in enumerate(events, start=1)]
        status = run_lifecycle.status_of(self.engine, run_id)
        tokens = [e for e in events if e.kind == EventKind.TOKENS]
        view = RunView(
            run=run, token=token, after=after, conversation_title=title,
            steps=[e for e in entries if e["kind"] == EventKind.TOOL.value],
            words=[e for e in entries if e["kind"] in (EventKind.TEXT.value, EventKind.ERROR.value) and e["text"].strip()],
            elapsed_s=status.elapsed_s,
            tokens_in=run.tokens_in or sum(e.tokens_in for e in tokens),
            tokens_out=run.tokens_out or sum(e.tokens_out for e in tokens),
            cost=run.cost or sum(e.cost for e in tokens), note=status.note)
        self._add_outputs(view)
        return view

    def _add_outputs(self, view: RunView) -> None:
        """Add the run's resources (with previews) and its highlighted diff."""
        with self.engine.db.reading() as session:
            repository = Resources(session, self.blob_dir)
            found = [r for r in repository.in_conversation(view.run.conversation_id, limit=RUN_RESOURCE_SCAN)
                     if r.run_id == view.run.id]
            for resource in reversed(found):
                data = _content(repository, resource)
                if resource.kind == "diff" and data is not None:
                    text = self.engine.redact(data.decode("utf-8", errors="replace"))
                    view.diff_plain = text
                    view.diff_html = _highlight(text, "diff") if len(data) <= HIGHLIGHT_BYTES else None
                    continue
                view.resources.append(self._resource_row(resource, data))

    def _resource_row(self, resource: Resource, data: bytes | None) -> dict[str, Any]:
        preview = None
        if data is not None and len(data) <= PREVIEW_BYTES and resource.media_type.startswith(("text/", "application/json")):
            preview = _highlight(self.engine.redact(data.decode("utf-8", errors="replace")), resource.path)
        image = data is not None and resource.media_type.startswith("image/") and resource.media_type != "image/svg+xml"
        return {"resource": resource, "preview": preview, "image": image, "gone": data is None}

    def render_run(self, view: RunView) -> str:
        """Return the run page's HTML."""
        return self.env.get_template("run.html").render(v=view, final=view.run.state.is_final)

    def render_tail(self, view: RunView) -> str:
        """Return the part of the run page that a finished run adds: the diff and the resources."""
        return self.env.get_template("run_tail.html").render(v=view)

    def render_entry(self, entry: dict[str, Any]) -> str:
        """Return one stream entry of kind step as the HTML the page inserts ("" for others)."""
        if entry["kind"] == EventKind.TOOL.value:
            return self.env.get_template("entries.html").module.step(entry)
        if entry["kind"] in (EventKind.TEXT.value, EventKind.ERROR.value) and entry["text"].strip():
            return self.env.get_template("entries.html").module.words(entry)
        return ""

    def cancel(self, grant: LinkGrant, run_id: int) -> str:
        """Cancel the run as the person the link was made for; return what happened (`CANCEL_ANSWERS`).

        As `/cancel`: allowed when the person asked for this run (a status message's link is made
        for its requester), or `permissions.cancel` (the channel's, else the top level) names them.
        """
        run = self.run_in(grant, run_id)
        with self.engine.db.reading() as session:
            requester = Messages(session).get(run.request_message_id)[2] if run.request_message_id else ""
            names = dict(Participants(session).in_conversation(run.conversation_id))
            where = Conversations(session).get(run.conversation_id).where
        user = grant.user_id
        if not (user and (user == requester or self.engine.manifest.allows("cancel", user, where))):
            return "denied"
        stopped = run_lifecycle.cancel(self.engine, run, f"{names.get(user) or user} (live view)")
        return {RunState.QUEUED: "queued", RunState.RUNNING: "running"}.get(stopped, "ended")

    # -- the conversation page ------------------------------------------------------------------

    def render_conversation(self, grant: LinkGrant, conversation_id: int, token: str, query: str = "") -> str:
        """Return the conversation page: messages, runs, forks and the resource browser."""
        if conversation_id != grant.conversation_id:
            raise NotFound("This link opens another conversation.")
        with self.engine.db.reading() as session:
            conversations = Conversations(session)
            conversation = conversations.get(conversation_id)
            lineage = []
            parent_id = conversation.forked_from_id
            while parent_id is not None and len(lineage) < CONVERSATION_ROWS:
                parent = conversations.get(parent_id)
                lineage.append(parent)
                parent_id = parent.forked_from_id
            forks = conversations.forks_of(conversation_id)
            messages = Messages(session).recent(conversation_id, CONVERSATION_ROWS)
            run_rows = Runs(session).in_conversation(conversation_id, CONVERSATION_ROWS)
            repository = Resources(session, self.blob_dir)
            if query.strip():
                hits = [hit for hit in repository.find(conversation.where.platform, conversation.where.channel, query,
                                                       limit=SEARCH_HITS)
                        if hit.resource.conversation_id == conversation_id]
                resources = [{"resource": hit.resource, "snippet": hit.snippet} for hit in hits]
            else:
                resources = [{"resource": r, "snippet": ""} for r in repository.in_conversation(conversation_id,
                                                                                                 CONVERSATION_ROWS)]
        return self.env.get_template("conversation.html").render(
            conversation=conversation, lineage=lineage, forks=forks, messages=messages, runs=run_rows, resources=resources,
            query=query, token=token)

    # -- resources ---------------------------------------------------------------------------

    def resource(self, grant: LinkGrant, resource_id: int) -> tuple[Resource, bytes]:
        """Return a resource of the link's conversation and its bytes, redacted when text."""
        with self.engine.db.reading() as session:
            repository = Resources(session, self.blob_dir)
            resource = repository.get(resource_id)
            if resource is None or resource.conversation_id != grant.conversation_id:
                raise NotFound(f"There is no resource {resource_id} in this conversation.")
            data = repository.content(resource)
        return resource, self.engine.redact.bytes(data)

    def render_refusal(self, status: int, text: str) -> str:
        """Return the page shown for a refused or missing thing: one sentence, nothing else."""
        return self.env.get_template("refused.html").render(status=status, text=text)


def _content(repository: Resources, resource: Resource) -> bytes | None:
    try:
        return repository.content(resource)
    except ResourceGone:
        return None


def _highlight(text: str, filename: str) -> Markup:
    """Return text highlighted by Pygments for its file name (plain text when unknown)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import DiffLexer, TextLexer, get_lexer_for_filename
    from pygments.util import ClassNotFound

    if filename == "diff":
        lexer = DiffLexer()
    else:
        try:
            lexer = get_lexer_for_filename(filename, stripnl=False)
        except ClassNotFound:
            lexer = TextLexer()
    return Markup(highlight(text, lexer, HtmlFormatter(cssclass="hl")))  # Pygments escapes the text


def pygments_css() -> str:
    """Return the stylesheet of highlighted code (served as a file: the CSP allows no inline style)."""
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="friendly").get_style_defs(".hl")


def _inline_code(text: str) -> Markup:
    """Return text escaped, with `backticked` parts as <code> (how a step's label names files)."""
    parts = _CODE.split(str(text))
    return Markup("").join(escape(part) if i % 2 == 0 else Markup("<code>%s</code>") % part
                           for i, part in enumerate(parts))


def _size(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)
