"""A TCP proxy on 127.0.0.1 that delays what passes through it, or cuts it: a slow or gone Redis or database."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

#: Bytes read at once from either side.
CHUNK = 65536


class DelayingProxy:
    """Forwards connections to `target` (host, port), holding each chunk `delay` seconds, until stopped."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay = 0.0
        #: While True, every connection is ended at once (`cut`): the service looks gone.
        self.refusing = False
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        #: While `black_hole` holds the port: its never-accepting socket and the connections filling it.
        self._hole: list[socket.socket] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="delaying-proxy", daemon=True)

    def __enter__(self) -> DelayingProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Stop accepting, and end every connection in flight (both pipes of each)."""
        await self._close_server()
        for sock in self._hole:
            sock.close()

    def cut(self) -> None:
        """End every connection in flight and every new one until `restore`: an outage."""
        self.refusing = True
        asyncio.run_coroutine_threadsafe(self._end_pipes(), self._loop).result(5)

    def black_hole(self) -> None:
        """End every connection in flight, and leave new ones unanswered until `restore`: connects time out.

        The proxy stops listening; its port is held by a socket that never accepts, whose one-place
        accept queue is filled at once, so the kernel drops every later SYN (a host gone silent).
        """
        asyncio.run_coroutine_threadsafe(self._close_server(), self._loop).result(5)
        hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind(("127.0.0.1", self.port))
        hole.listen(0)
        self._hole = [hole]
        for _ in range(2):  # fill the accept queue (its length is the backlog + 1)
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self._hole.append(filler)

    def restore(self) -> None:
        """Let connections through again."""
        self.refusing = False
        if self._hole:
            for sock in self._hole:
                sock.close()
            self._hole = []
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)

    async def _close_server(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._end_pipes()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _end_pipes(self) -> None:
        pipes = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    def url_for(self, url: str) -> str:
        """Return `url` with its host and port replaced by this proxy's."""
        host_port = f"{self.target[0]}:{self.target[1]}"
        assert host_port in url, f"{url} does not point at {host_port}"
        return url.replace(host_port, f"127.0.0.1:{self.port}")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        self._ready.set()
        self._loop.run_forever()

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))
        except asyncio.CancelledError:  # `cut` or shutdown ended this connection: both sides are closed
            client_writer.close()
            server_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
