"""A chat port that records a thread as a person would see it: each message's versions, and files."""

from __future__ import annotations

from bot.types import Attachment, Reply, ThreadRef


class RecordingPort:
    """A chat port keeping, in order, what a platform would have shown: posts, their edits, uploads.

    Messages are numbered `m1`, `m2`, ... in the order they were posted and files `f1`, `f2`, ...
    in the order they were uploaded, as a platform hands out ids.
    """

    def __init__(self, platform: str = "test") -> None:
        self.platform = platform
        self.messages: dict[str, list[Reply]] = {}
        self.order: list[str] = []
        self.files: list[Attachment] = []
        #: Every edit as (message id, text), in the order they were made.
        self.edits: list[tuple[str, str]] = []

    def post(self, where: ThreadRef, reply: Reply) -> str:
        message_id = f"m{len(self.order) + 1}"
        self.order.append(message_id)
        self.messages[message_id] = [reply]
        return message_id

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        if message_id not in self.messages:
            raise KeyError(f"edit of message {message_id!r}, which was never posted")
        self.messages[message_id].append(reply)
        self.edits.append((message_id, reply.text))

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        self.files.append(attachment)
        return f"f{len(self.files)}"

    def replies(self, message_id: str) -> list[Reply]:
        """Return every version of one message, as posted and then edited."""
        return list(self.messages[message_id])

    def texts(self, message_id: str) -> list[str]:
        """Return the text of every version of one message, as posted and then edited."""
        return [reply.text for reply in self.messages[message_id]]

    def last(self, message_id: str) -> str:
        """Return the text one message ends with."""
        return self.messages[message_id][-1].text

    @property
    def posts(self) -> list[str]:
        """The text each message was first posted with, in the order they were posted."""
        return [self.messages[message_id][0].text for message_id in self.order]

    @property
    def final_texts(self) -> dict[str, str]:
        """The text each message ends with, by message id in posting order."""
        return {message_id: self.last(message_id) for message_id in self.order}
