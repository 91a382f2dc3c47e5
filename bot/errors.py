"""Threadwork's exceptions: small classes, one idea each.

    ThreadworkError
     ├── UserFacingError      message is shown to the user as it is
     │    ├── ConfigError     manifest or environment is wrong (names the key)
     │    ├── DatabaseUnavailable
     │    ├── QueueUnavailable
     │    ├── PermissionDenied
     │    ├── CommandError    a chat command was used wrongly
     │    └── ResourceGone    a stored file's bytes are no longer kept
     ├── DuplicateEvent       a platform delivered the same event again (not an error to show)
     ├── RateLimited          the platform asked us to wait `retry_after` seconds
     └── HistoryRefused       the platform won't show a thread's earlier messages (scope, permission)
"""


class ThreadworkError(Exception):
    """Base class of every error Threadwork raises on purpose."""


class UserFacingError(ThreadworkError):
    """An expected failure whose message is written for the user and shown as is."""


class ConfigError(UserFacingError):
    """The manifest or the environment is wrong; the message names the key and the fix."""


class DatabaseUnavailable(UserFacingError):
    """The database cannot be opened or reached."""


class QueueUnavailable(UserFacingError):
    """Redis cannot be reached, so jobs cannot be enqueued."""


class PermissionDenied(UserFacingError):
    """The manifest's rules do not let this person do this."""


class CommandError(UserFacingError):
    """A chat command was called with arguments it cannot use."""


class ResourceGone(UserFacingError):
    """The bytes of a stored file are gone (deleted, or indexed before contents were kept)."""


class DuplicateEvent(ThreadworkError):
    """The platform delivered an event that was already handled."""


class RateLimited(ThreadworkError):
    """The platform answered 429: try again after `retry_after` seconds."""

    def __init__(self, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(f"{message}; retry after {retry_after:g}s")
        self.retry_after = retry_after


class HistoryRefused(ThreadworkError):
    """The platform will not show a thread's earlier messages (a missing scope or permission); asking again won't help."""
