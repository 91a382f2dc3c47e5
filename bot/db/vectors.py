"""Memory vectors: one local-embedding vector per searched memory, and the nearest ones to a query.

Vectors are float32 bytes in `memory_vectors` (migration 0005), written in the transaction that
stores their memory and deleted with it (the foreign key cascades; `Memories.delete` deletes them
explicitly too). Each carries its scope's index token, so a search reads only the scopes that
apply. There is no vector index: a scope holds a few thousand memories (a channel of 100,000
memories over 50 channels: ~2,000), and an exact scan of them with numpy takes well under a
millisecond once they are in memory. The cost is reading them, so each process keeps every
scope's vectors it has searched, checked by one small query per search:

- the scope's version stamp (`memory_scopes`, changed by a new fact and by any forgetting) and
  its vectors' count and highest id; new exchanges only add rows, so a cache whose stamp stands
  reads just the rows above its highest id, and reads the scope afresh when the counts disagree
  (a row committed late, a row deleted by a cascade).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from bot import embeddings
from bot.db.models import MemoryRow, MemoryScopeRow, MemoryVectorRow

#: Nearest memories a search adds to its full-text hits: a few, because a static model's
#: neighbours past the first handful are mostly noise.
NEIGHBOURS = 5
#: The lowest cosine similarity that counts as related. Measured with this model: unrelated
#: short sentences score -0.1 to 0.15, related ones with no shared word 0.17-0.45 ("when do
#: we ship?" and "Deploys happen on Thursdays." 0.19), shared words 0.5 and more.
MIN_SIMILARITY = 0.15
_SECONDS_A_DAY = 86400.0
_VECTOR_BYTES = embeddings.DIMENSIONS * 4
#: Kinds as small numbers in the cache (comparing strings cost a few ms a search).
_KIND_CODES = {"fact": 1, "exchange": 2}


@dataclass
class _ScopeVectors:
    """One scope's vectors as read from the database, and what says whether they are still current."""

    version: str | None
    count: int
    top_id: int
    ids: Any  # numpy int64, one per vector
    kinds: Any  # numpy int8, the memory's kind (`_KIND_CODES`; 0: never matches, e.g. another model's vector)
    created: Any  # numpy float64, seconds since the epoch
    matrix: Any  # numpy float32 (count, DIMENSIONS), unit rows


#: Each database's scopes (keyed by its connection pool, shared by its read and write engines).
_caches: weakref.WeakKeyDictionary[Any, dict[str, _ScopeVectors]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def store(executor: Any, memory_id: int, token: str, body: str) -> bool:
    """Store a memory's vector under its scope's token when semantic search is on; return whether it did.

    `executor` is a Session or a Connection: the vector goes in the transaction of its memory.
    """
    vectors = embeddings.embed([body])
    if vectors is None:
        return False
    executor.execute(insert(MemoryVectorRow).values(memory_id=memory_id, scope=token, model=embeddings.MODEL,
                                                    vector=vectors[0].tobytes()))
    return True


def nearest(session: Session, tokens: Sequence[str], query: str, *, kinds: Sequence[str],
            half_life_days: float) -> list[tuple[int, float]]:
    """Return (memory id, score) of the scopes' memories nearest the query, best first; [] when off.

    The score is the cosine similarity weighed by age like the full-text one (halved after
    `half_life_days`); only memories at `MIN_SIMILARITY` or more count.
    """
    if not embeddings.enabled() or not tokens:
        return []
    found = embeddings.embed([query])
    if found is None:
        return []
    import numpy as np

    wanted = np.array([_KIND_CODES.get(kind, 0) for kind in kinds], dtype=np.int8)
    now = datetime.now(timezone.utc).timestamp()
    ids, scores = [], []
    for scope in _scopes(session, tokens).values():
        if not scope.count:
            continue
        # einsum runs in this thread; `@` hands a matrix-vector product to OpenBLAS's threads,
        # which cost 1-5 ms to wake on a busy 2-core machine for a 0.05 ms product.
        similarity = np.einsum("ij,j->i", scope.matrix, found[0])
        keep = (similarity >= MIN_SIMILARITY) & np.isin(scope.kinds, wanted) & (scope.kinds > 0)
        if not keep.any():
            continue
        ages = np.maximum(0.0, now - scope.created[keep]) / _SECONDS_A_DAY
        ids.append(scope.ids[keep])
        scores.append(similarity[keep] / (1.0 + ages / half_life_days))
    if not ids:
        return []
    all_ids, all_scores = np.concatenate(ids), np.concatenate(scores)
    best = np.argsort(-all_scores, kind="stable")[:NEIGHBOURS]
    return [(int(all_ids[i]), float(all_scores[i])) for i in best]


def _scopes(session: Session, tokens: Sequence[str]) -> dict[str, _ScopeVectors]:
    """Return the scopes' vectors, from this process's cache where it is current (one query to know)."""
    # Read from the index (scope, memory_id) alone: the rows hold 1 KB vectors each, and reading
    # them to count cost 20 ms a search at 100,000 memories.
    version = select(MemoryScopeRow.version).where(MemoryScopeRow.key == MemoryVectorRow.scope).scalar_subquery()
    state = session.execute(
        select(MemoryVectorRow.scope, func.count(), func.max(MemoryVectorRow.memory_id), version)
        .where(MemoryVectorRow.scope.in_(list(tokens))).group_by(MemoryVectorRow.scope)).all()
    key = session.get_bind().pool
    with _lock:
        cache = _caches.setdefault(key, {})
    result: dict[str, _ScopeVectors] = {}
    for token, count, top_id, version in state:
        cached = cache.get(token)
        if cached is None or cached.version != version or top_id < cached.top_id:
            cached = _read(session, token, version)
        elif top_id != cached.top_id or count != cached.count:
            extended = _extended(session, cached, token)
            cached = extended if extended is not None and extended.count == count else _read(session, token, version)
        if cached.count != count:  # written between the two queries: the next search reads it again
            cached.version = None
        with _lock:
            cache[token] = cached
        result[token] = cached
    return result


def _rows(session: Session, token: str, after_id: int = 0) -> list[Any]:
    return session.execute(
        select(MemoryVectorRow.memory_id, MemoryVectorRow.model, MemoryVectorRow.vector, MemoryRow.kind,
               MemoryRow.created_at)
        .join(MemoryRow, MemoryRow.id == MemoryVectorRow.memory_id)
        .where(MemoryVectorRow.scope == token, MemoryVectorRow.memory_id > after_id)
        .order_by(MemoryVectorRow.memory_id)).all()


def _read(session: Session, token: str, version: str | None) -> _ScopeVectors:
    """Return a scope's vectors read afresh."""
    return _built(_rows(session, token), version)


def _extended(session: Session, cached: _ScopeVectors, token: str) -> _ScopeVectors | None:
    """Return the cached scope with the rows added since, or None when that does not add up."""
    import numpy as np

    new = _built(_rows(session, token, cached.top_id), cached.version)
    if not new.count:
        return None
    return _ScopeVectors(cached.version, cached.count + new.count, new.top_id, np.concatenate([cached.ids, new.ids]),
                         np.concatenate([cached.kinds, new.kinds]), np.concatenate([cached.created, new.created]),
                         np.vstack([cached.matrix, new.matrix]))


def _built(rows: list[Any], version: str | None) -> _ScopeVectors:
    import numpy as np

    ours = [row.model == embeddings.MODEL and len(row.vector) == _VECTOR_BYTES for row in rows]
    zero = bytes(_VECTOR_BYTES)
    matrix = (np.frombuffer(b"".join(row.vector if own else zero for row, own in zip(rows, ours, strict=True)),
                            dtype=np.float32).reshape(len(rows), -1)
              if rows else np.zeros((0, embeddings.DIMENSIONS), dtype=np.float32))
    return _ScopeVectors(version=version, count=len(rows), top_id=rows[-1].memory_id if rows else 0,
                         ids=np.array([row.memory_id for row in rows], dtype=np.int64),
                         kinds=np.array([_KIND_CODES.get(row.kind, 0) if own else 0
                                         for row, own in zip(rows, ours, strict=True)], dtype=np.int8),
                         created=np.array([_seconds(row.created_at) for row in rows], dtype=np.float64),
                         matrix=matrix)


def _seconds(when: datetime) -> float:
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
