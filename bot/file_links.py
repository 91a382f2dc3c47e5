"""The links of files a chat port uploaded lately, so a resource can record where it lives."""

from __future__ import annotations

import threading
from collections import OrderedDict

#: Uploads whose link a port keeps: a run's files are indexed right after they go up, so a
#: few hundred covers every run in flight.
REMEMBERED_LINKS = 512


class FileLinks:
    """A bounded, thread-safe map of a port's recent file ids to their permalinks."""

    def __init__(self, size: int = REMEMBERED_LINKS) -> None:
        self._links: OrderedDict[str, str] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def remember(self, file_id: str, link: str | None) -> None:
        """Keep the link of a file just uploaded (a missing link is not kept)."""
        if not link:
            return
        with self._lock:
            self._links[file_id] = link
            self._links.move_to_end(file_id)
            while len(self._links) > self._size:
                self._links.popitem(last=False)

    def get(self, file_id: str) -> str | None:
        """Return the file's link, if it was uploaded lately through this port."""
        with self._lock:
            return self._links.get(file_id)
