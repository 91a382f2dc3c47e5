"""What the database benchmarks share: percentiles, and a throw-away PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support import servers


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@contextmanager
def postgres() -> Iterator[str | None]:
    """Yield the URL of a throw-away PostgreSQL, or None (with a message) when it cannot start."""
    try:
        with servers.postgres_server() as url:
            yield url
    except FileNotFoundError as exc:
        print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
        yield None
