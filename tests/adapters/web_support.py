"""Helpers for web view tests: the real server on 127.0.0.1, a headless Chromium, links from the thread."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

from bot.engine import Engine
from tests.support.ports import RecordingPort
from tests.support.servers import free_port, wait_for_port

#: Debian's chromium package (apt-get install chromium); Playwright drives it instead of its own build.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Flags for a headless Chromium in a container running as root, offline.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]
_LINK = re.compile(r"Open live view: (\S+)")

requires_chromium = pytest.mark.skipif(not shutil.which("chromium"),
                                       reason="no chromium on PATH: apt-get install -y chromium")


def public_url_env() -> tuple[int, dict[str, str]]:
    """Return a free port and the environment that makes links point at it."""
    port = free_port()
    return port, {"BOT_PUBLIC_URL": f"http://127.0.0.1:{port}"}


@contextmanager
def web_view(engine: Engine, port: int) -> Iterator[str]:
    """Serve the engine's web view on 127.0.0.1:port in a thread; yield its base URL."""
    from adapters.web import serve

    servers: list[Any] = []
    thread = threading.Thread(target=serve, args=(engine,), kwargs={"host": "127.0.0.1", "port": port,
                                                                  "ready": servers.append}, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if servers:
            servers[0].should_exit = True
        thread.join(10)


def status_link(port: RecordingPort) -> str | None:
    """Return the live view link of the first status message the thread shows, or None yet."""
    for message_id in port.order:
        for text in port.texts(message_id):
            found = _LINK.search(text)
            if found:
                return found.group(1)
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """Yield a headless Chromium browser driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """Return the status, headers (lower-case names) and body of a GET."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
    response = connection.getresponse()
    body = response.read().decode("utf-8", errors="replace")
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def sse_events(url: str, count: int, headers: dict[str, str] | None = None,
               timeout: float = 30) -> list[dict[str, Any]]:
    """Return the first `count` server-sent events of a stream as {id, event, data}."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    connection.request("GET", f"{parts.path}?{parts.query}", headers={"accept": "text/event-stream", **(headers or {})})
    response = connection.getresponse()
    assert response.status == 200, response.status
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    try:
        while len(events) < count:
            line = response.readline().decode().rstrip("\r\n")
            if not line:
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                current = {}
                continue
            name, _, value = line.partition(":")
            if name:  # a line starting with ":" is a comment (ping)
                current[name] = value.removeprefix(" ")
    finally:
        connection.close()
    return events
