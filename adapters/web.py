"""The web view: a live page per run and a conversation's resource browser, behind signed links.

    python -m bot web ─► serve(engine) ─► uvicorn ─► app(engine)
        GET  /runs/<id>?t=TOKEN          the run page (adapters.web_pages renders it from the database)
        GET  /runs/<id>/events?t=TOKEN   server-sent events from the run's stream (bot.run_events),
                                         `id` = stream id: a reconnecting page resumes from Last-Event-ID
        GET  /runs/<id>/tail?t=TOKEN     the diff and resources, fetched when the run ends
        POST /runs/<id>/cancel           t=TOKEN: `/cancel` as the person the link was made for
        GET  /c/<id>?t=TOKEN[&q=words]   messages, runs, forks, resources (search: Resources.find)
        GET  /r/<id>?t=TOKEN[&inline=1]  a resource's bytes (download, or an image for its preview)

This room turns HTTP into engine calls, as the chat adapters turn platform events into them;
it is an adapter, though nobody chats through it. Any `bot web` process serves any run: the
state comes from the database and the live entries from Redis (or, without Redis, from this
process's own jobs). A link that is missing, altered, expired or made for another
conversation gets 403 and a sentence, nothing else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.web_pages import CANCEL_ANSWERS, NotFound, Pages, pygments_css
from bot import runs as run_lifecycle
from bot.engine import Engine
from bot.run_events import START, status_entry
from bot.web_links import LinkRefused

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("web_templates")
#: A follower waits this long for stream entries before it asks the database whether the run
#: ended where nothing publishes (a queued run cancelled, the reaper): well under the 30 s
#: after which the reaper itself acts (agent.stale_after_seconds).
FOLLOW_BLOCK_S = 2.0
#: sse-starlette sends a comment this often so proxies keep an idle stream open (nginx's
#: proxy_read_timeout defaults to 60 s).
SSE_PING_S = 15
#: The Cancel form's body: one token of ~80 characters, with room to spare.
CANCEL_FORM_BYTES = 4_096
#: Every response's headers: scripts and styles only from this origin (no inline script), no
#: framing, no referrer (the link's token must not leak), no MIME sniffing.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
#: Private pages (everything but the static files) are never kept by a browser or a proxy.
NO_STORE = {"cache-control": "no-store"}


class SecurityHeaders:
    """ASGI middleware adding `SECURITY_HEADERS` to every response, and `no-store` to private ones."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = not scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() != "cache-control"
                           or not private]
                extra = {**SECURITY_HEADERS, **(NO_STORE if private else {})}
                headers += [(name.encode(), value.encode()) for name, value in extra.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def app(engine: Engine, pages: Pages | None = None) -> ASGIApp:
    """Return the web view's ASGI application for this engine."""
    pages = pages or Pages(engine)
    css = pygments_css()

    def refused(status: int, text: str) -> HTMLResponse:
        return HTMLResponse(pages.render_refusal(status, text), status_code=status)

    def guarded(handler):
        """Run a page handler; a bad link is 403, a thing outside its conversation 404."""

        def endpoint(request: Request) -> Response:
            try:
                return handler(request)
            except LinkRefused as exc:
                return refused(403, str(exc))
            except NotFound as exc:
                return refused(404, str(exc))

        return endpoint

    @guarded
    def run_page(request: Request) -> Response:
        token = request.query_params.get("t")
        view = pages.run_view(pages.grant(token), int(request.path_params["run_id"]), token or "")
        view.flash = CANCEL_ANSWERS.get(request.query_params.get("said", ""), "")
        return HTMLResponse(pages.render_run(view))

    @guarded
    def run_tail(request: Request) -> Response:
        token = request.query_params.get("t")
        view = pages.run_view(pages.grant(token), int(request.path_params["run_id"]), token or "")
        return HTMLResponse(pages.render_tail(view))

    async def run_cancel(request: Request) -> Response:
        # The form holds only the token: parsed here, with no multipart parser to install.
        token = (parse_qs((await request.body())[:CANCEL_FORM_BYTES].decode(errors="replace")).get("t") or [""])[0]
        run_id = int(request.path_params["run_id"])
        try:
            said = await anyio.to_thread.run_sync(pages.cancel, pages.grant(token), run_id)
        except LinkRefused as exc:
            return refused(403, str(exc))
        except NotFound as exc:
            return refused(404, str(exc))
        return RedirectResponse(f"/runs/{run_id}?{urlencode({'t': token, 'said': said})}", status_code=303)

    @guarded
    def conversation_page(request: Request) -> Response:
        token = request.query_params.get("t")
        html = pages.render_conversation(pages.grant(token), int(request.path_params["conversation_id"]), token or "",
                                         request.query_params.get("q", "")[:200])
        return HTMLResponse(html)

    @guarded
    def resource_bytes(request: Request) -> Response:
        resource, data = pages.resource(pages.grant(request.query_params.get("t")), int(request.path_params["resource_id"]))
        name = resource.path.rsplit("/", 1)[-1].replace('"', "")
        inline = request.query_params.get("inline") == "1" and resource.media_type.startswith("image/") \
            and resource.media_type != "image/svg+xml"
        media_type = resource.media_type if inline else "application/octet-stream"
        disposition = "inline" if inline else "attachment"
        return Response(data, media_type=media_type, headers={"content-disposition": f'{disposition}; filename="{name}"'})

    async def run_events(request: Request) -> Response:
        token = request.query_params.get("t")
        run_id = int(request.path_params["run_id"])
        try:
            grant = pages.grant(token)
            run = await anyio.to_thread.run_sync(pages.run_in, grant, run_id)
        except LinkRefused as exc:
            return PlainTextResponse(str(exc), status_code=403)
        except NotFound as exc:
            return PlainTextResponse(str(exc), status_code=404)
        after = request.headers.get("last-event-id") or request.query_params.get("after") or START
        return EventSourceResponse(_follow(pages, run_id, after, run.state.is_final), ping=SSE_PING_S)

    async def pygments(_request: Request) -> Response:
        return Response(css, media_type="text/css", headers={"cache-control": "max-age=3600"})

    async def health(_request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/runs/{run_id:int}", run_page),
        Route("/runs/{run_id:int}/tail", run_tail),
        Route("/runs/{run_id:int}/events", run_events),
        Route("/runs/{run_id:int}/cancel", run_cancel, methods=["POST"]),
        Route("/c/{conversation_id:int}", conversation_page),
        Route("/r/{resource_id:int}", resource_bytes),
        Route("/static/pygments.css", pygments),
        Route("/healthz", health),
        Mount("/static", app=StaticFiles(directory=STATIC / "static"), name="static"),
    ]
    return SecurityHeaders(Starlette(routes=routes))


async def _follow(pages: Pages, run_id: int, after: str, final: bool):
    """Yield the run's stream entries after `after` as server-sent events until the run has ended."""
    redact = pages.engine.redact
    if final:  # say so once, and the page stops listening
        stored = await anyio.to_thread.run_sync(run_lifecycle.status_of, pages.engine, run_id)
        yield {"event": "status", "data": json.dumps(redact.json(status_entry(stored)))}
        return
    last = after
    while True:
        entries = await pages.feed.read(run_id, last, FOLLOW_BLOCK_S)
        for stream_id, entry in entries:
            last = stream_id
            entry = redact.json(entry)
            if entry["type"] == "step":
                entry = {"seq": entry["seq"], "kind": entry["kind"], "html": pages.render_entry(entry)}
            yield {"id": stream_id, "event": entry.get("type", "step"), "data": json.dumps(entry)}
            if entry.get("final"):
                return
        if not entries:
            # Runs also end where nothing publishes (a queued run cancelled, a dead worker's run
            # failed by the reaper): the table decides.
            stored = await anyio.to_thread.run_sync(run_lifecycle.status_of, pages.engine, run_id)
            if stored.state.is_final:
                yield {"event": "status", "data": json.dumps(redact.json(status_entry(stored)))}
                return


def serve(engine: Engine, *, host: str | None = None, port: int | None = None, ready: Any = None) -> None:
    """Serve the web view until stopped (uvicorn); `ready(server)` is called once it listens."""
    import uvicorn

    config = uvicorn.Config(app(engine), host=host or engine.manifest.web.host, port=port or engine.manifest.web.port,
                            log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    if ready is not None:
        _call_when_started(server, ready)
    server.run()


def _call_when_started(server: Any, ready: Any) -> None:
    """Call `ready(server)` from a watcher thread once uvicorn reports it listens."""
    import threading
    import time

    def watch() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            ready(server)

    threading.Thread(target=watch, name="web-ready", daemon=True).start()
