"""The resource browser as chat commands: `/files`, `/find`, `/show`, `/share`.

Every file, diff, log and long answer a run made is a resource (`bot.db.repositories.Resources`):
stored when it was made, so these commands reach its bytes even after the workspace moved on.
"""

from __future__ import annotations

import re
from pathlib import Path

from bot.db.repositories import Resources
from bot.errors import CommandError
from bot.hookspecs import hookimpl
from bot.types import Attachment, Command, CommandContext, EngineAPI, Resource, ThreadRef

#: Lines `/show` previews before it says how many more there are.
PREVIEW_LINES = 40
#: Characters of one previewed line (a minified file is one very long line).
PREVIEW_LINE_CHARS = 200
#: Resources `/files` lists, and hits `/find` returns.
LISTED = 20
#: Code-block languages by file suffix, for `/show`'s highlighting in Slack, Discord and the console.
LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".tsx": "tsx", ".jsx": "jsx",
             ".json": "json", ".yml": "yaml", ".yaml": "yaml", ".toml": "toml", ".md": "markdown",
             ".sh": "bash", ".sql": "sql", ".html": "html", ".css": "css", ".go": "go", ".rs": "rust",
             ".java": "java", ".rb": "ruby", ".diff": "diff", ".patch": "diff", ".c": "c", ".h": "c",
             ".cpp": "cpp", ".ini": "ini", ".xml": "xml", ".txt": ""}
#: Slack writes a channel as <#C0123|name> and a thread link as .../archives/C0123/p1700000000000100;
#: Discord a channel as <#123> and a link as https://discord.com/channels/GUILD/CHANNEL[/MESSAGE].
SLACK_CHANNEL = re.compile(r"^<#(?P<channel>[CGD][A-Z0-9]+)(?:\|[^>]*)?>$|^#?(?P<bare>[CGD][A-Z0-9]{6,})$")
SLACK_THREAD_LINK = re.compile(r"/archives/(?P<channel>[CGD][A-Z0-9]+)/p(?P<ts>\d{10})(?P<frac>\d{6})")
DISCORD_CHANNEL = re.compile(r"^<#(?P<channel>\d+)>$|^#?(?P<bare>\d{15,22})$")
DISCORD_LINK = re.compile(r"/channels/(?P<guild>\d+|@me)/(?P<channel>\d+)(?:/(?P<message>\d+))?")


def _repository(engine: EngineAPI, session) -> Resources:
    return Resources(session, engine.settings.data_dir / "blobs")


def _line(resource: Resource) -> str:
    run = f", run {resource.run_id}" if resource.run_id else ""
    who = f", asked by {resource.requested_by}" if resource.requested_by else ""
    kind = "" if resource.kind == "file" else f" [{resource.kind}]"
    return f"- `{resource.short_id}` `{resource.path}`{kind} ({resource.size:,} bytes{who}{run})"


def files(context: CommandContext) -> str:
    """List this thread's resources (`all`: the channel's), newest first."""
    scope = context.argument.strip().lower()
    if scope not in ("", "all"):
        raise CommandError("Usage: `/files` for this thread, `/files all` for the whole channel.")
    where = context.conversation.where
    with context.engine.db.reading() as session:
        repository = _repository(context.engine, session)
        listed = (repository.in_channel(where.platform, where.channel, LISTED) if scope == "all"
                  else repository.in_conversation(context.conversation.id, LISTED))
    if not listed:
        return "No files in this channel yet." if scope == "all" else "No files in this thread yet."
    title = "Files in this channel:" if scope == "all" else "Files in this thread:"
    return "\n".join([title, *(_line(resource) for resource in listed),
                      "", "`/show <id>` previews one; `/find <words>` searches them."])


def find(context: CommandContext) -> str:
    """Search the channel's resources by name and content; return the hits with snippets."""
    words = context.argument.strip()
    if not words:
        raise CommandError("Usage: `/find <words>`, e.g. `/find retry backoff`.")
    where = context.conversation.where
    with context.engine.db.reading() as session:
        hits = _repository(context.engine, session).find(where.platform, where.channel, words, LISTED)
    if not hits:
        return f"Nothing in this channel's files matches “{words}”."
    lines = [f"Files matching “{words}”:"]
    for hit in hits:
        lines.append(_line(hit.resource))
        if hit.snippet:
            lines.append(f"  > {hit.snippet.strip()[:PREVIEW_LINE_CHARS]}")
    return "\n".join(lines)


def show(context: CommandContext) -> str:
    """Show a resource's metadata and first lines (an image is attached instead)."""
    reference = context.argument.strip()
    if not reference:
        raise CommandError("Usage: `/show <id or path>`, e.g. `/show r12` or `/show docs/report.md`.")
    engine = context.engine
    with engine.db.reading() as session:
        repository = _repository(engine, session)
        resource = _resolve(repository, context, reference)
        data = repository.content(resource)
    header = f"`{resource.short_id}` **{resource.path}** · {resource.media_type} · {resource.size:,} bytes"
    if resource.run_id:
        header += f" · run {resource.run_id}"
    if resource.requested_by:
        header += f" · asked by {resource.requested_by}"
    if resource.kind == "image" or resource.media_type.startswith("image/"):
        engine.upload(context.conversation, Attachment(Path(resource.path).name, data, title=resource.path))
        return header + "\n(attached above)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return header + "\n(binary content: `/share` it to get the file)"
    lines = text.splitlines()
    shown = [line if len(line) <= PREVIEW_LINE_CHARS else line[:PREVIEW_LINE_CHARS] + "…" for line in
             lines[:PREVIEW_LINES]]
    language = "diff" if resource.kind == "diff" else LANGUAGES.get(Path(resource.path).suffix.lower(), "")
    body = "\n".join(shown).replace("```", "`\u200b``")
    more = f"\n({len(lines) - PREVIEW_LINES} more lines)" if len(lines) > PREVIEW_LINES else ""
    return f"{header}\n```{language}\n{body}\n```{more}"


def share(context: CommandContext) -> str:
    """Post a resource into another channel or thread of the same platform; record the share."""
    parts = context.argument.split()
    if len(parts) != 2:
        raise CommandError("Usage: `/share <id> <channel or thread link>`, e.g. `/share r12 #release`.")
    reference, target_text = parts
    engine = context.engine
    here = context.conversation.where
    target = parse_target(here, target_text)
    with engine.db.reading() as session:
        repository = _repository(engine, session)
        resource = _resolve(repository, context, reference)
        data = repository.content(resource)
    asker = context.message.user_name or context.message.user_id
    port = engine.port_for(here.platform)
    try:
        message_id = port.upload(target, Attachment(Path(resource.path).name, engine.redact.bytes(data),
                                                    title=resource.path,
                                                    comment=f"Shared by {asker} from {_describe(here)}: "
                                                            f"`{resource.path}`"))
    except Exception as exc:  # boundary: the platform refused the post (not a member, no such channel)
        raise CommandError(f"I can't post in {target_text}: invite me there first, or check the link "
                           f"({type(exc).__name__}).") from None
    with engine.db.session() as session:
        _repository(engine, session).record_share(resource.id, platform=target.platform, channel=target.channel,
                                                  thread=target.thread or None, shared_by=asker,
                                                  platform_message_id=message_id)
    return f"Shared `{resource.path}` ({resource.short_id}) into {target_text}."


def parse_target(here: ThreadRef, text: str) -> ThreadRef:
    """Return where a channel mention or thread link points, on the platform the asker is on."""
    text = text.strip()
    if here.platform == "slack":
        if match := SLACK_THREAD_LINK.search(text):
            return ThreadRef("slack", match["channel"], f"{match['ts']}.{match['frac']}")
        if match := SLACK_CHANNEL.match(text):
            return ThreadRef("slack", match["channel"] or match["bare"], "")
    elif here.platform == "discord":
        if match := DISCORD_LINK.search(text):
            return ThreadRef("discord", match["channel"], match["channel"])
        if match := DISCORD_CHANNEL.match(text):
            channel = match["channel"] or match["bare"]
            return ThreadRef("discord", channel, channel)
    elif text and not text.startswith(("<", "http")):
        return ThreadRef(here.platform, here.channel, text.lstrip("#"))  # the console: another thread's name
    raise CommandError(f"`{text}` is not a channel or thread I recognise: mention the channel (#name) or paste "
                       "a link to the thread.")


def _resolve(repository: Resources, context: CommandContext, reference: str) -> Resource:
    where = context.conversation.where
    resource = None
    if re.fullmatch(r"r\d+", reference):
        resource = repository.get(int(reference[1:]))
        if resource is not None and (resource.platform, resource.channel) != (where.platform, where.channel):
            resource = None  # another channel's: not this channel's to show
    if resource is None:
        resource = repository.by_path(where.platform, where.channel, reference)
    if resource is None:
        raise CommandError(f"No file `{reference}` in this channel. `/files all` lists them.")
    return resource


def _describe(where: ThreadRef) -> str:
    return f"#{where.channel}" if where.platform != "console" else f"thread {where.thread}"


@hookimpl
def register_commands() -> list[Command]:
    return [
        Command("files", "list this thread's files (`all`: the channel's)", files, usage="/files [all]"),
        Command("find", "search the channel's files by name and content", find, usage="/find <words>"),
        Command("show", "preview a file: its details and first lines", show, usage="/show <id or path>"),
        Command("share", "post a file into another channel or thread", share,
                usage="/share <id> <channel or thread link>", permission="share"),
    ]
