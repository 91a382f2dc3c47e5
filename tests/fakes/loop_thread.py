"""An asyncio event loop in a daemon thread: where the fake servers' aiohttp apps run."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

#: Seconds a fake server gets to start listening, or to shut down.
START_STOP_TIMEOUT_S = 10


class LoopThread:
    """Runs `setup()` on a fresh loop in a daemon thread, then keeps the loop running until `stop`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, setup: Callable[[], Awaitable[None]]) -> None:
        """Start the thread and return once `setup()` has finished (re-raising what it raised)."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(setup())
            except BaseException as exc:  # surfaced to start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(START_STOP_TIMEOUT_S):
            raise RuntimeError(f"{self.name} did not start")
        if errors:
            raise errors[0]

    def stop(self, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run `cleanup()` on the loop (best effort), then stop the loop and join the thread."""
        loop, thread = self.loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            if cleanup is not None:
                try:
                    asyncio.run_coroutine_threadsafe(cleanup(), loop).result(START_STOP_TIMEOUT_S)
                except Exception:  # best effort: the loop stops either way
                    pass
            loop.call_soon_threadsafe(loop.stop)
            thread.join(START_STOP_TIMEOUT_S)
        self.loop = None
        self._thread = None
