"""Full-text search over resources' names and text: FTS5 on SQLite, a GIN tsvector on PostgreSQL.

One entry per resource, written in the transaction that adds the resource:

- SQLite: the contentless FTS5 table `resources_fts` (rowid = resources.id; columns scope,
  name, body), ranked by bm25 with the name weighing more than the body.
- PostgreSQL: the `search` tsvector column of `resources` (GIN index `ix_resources_search`),
  the name at weight A and the body at D, ranked by ts_rank.

Both carry a scope token per channel (a hash of platform and channel), so a search reads only
the channel's entries instead of ranking every match in the database and filtering after.
User input never reaches either query language as syntax: it is cut into words of letters and
digits, each quoted (FTS5) or passed as a bare lexeme (tsquery).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sqlalchemy import text

#: The FTS5 table migration 0003 creates on SQLite.
FTS_TABLE = "resources_fts"
#: How many characters of a resource's text are indexed. PostgreSQL refuses a tsvector over
#: 1 MB ("string is too long for tsvector", its docs' Limits); 128k characters stay far below
#: it and hold nearly every file an agent writes whole.
INDEX_TEXT_LIMIT = 128 * 1024
#: Query words shorter than this match whole words only: a one- or two-letter prefix matches
#: most of a channel and costs a scan for nothing.
MIN_PREFIX_CHARS = 3
#: Words of a query beyond this are ignored: a pasted paragraph is not a query.
MAX_QUERY_WORDS = 8
#: bm25 weights of the FTS5 columns (scope, name, body): a word in the file's name says more
#: about it than one in its text; the scope token never counts.
BM25_WEIGHTS = (0.0, 10.0, 1.0)
#: PostgreSQL's text search configuration: English stemming, like FTS5's porter tokenizer.
PG_CONFIG = "english"
#: Query words that say nothing about a file, left out of every query (the commonest of
#: PostgreSQL's English stop words, which its `english` configuration drops too).
STOP_WORDS = frozenset(
    "a an and are as at be but by for from has have in is it its not of on or that the this to was were which will"
    " with".split())
#: A snippet is at most this many characters, about one line of a chat message.
SNIPPET_CHARS = 160

_WORD = re.compile(r"[^\W_]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\W_]+")
#: Where a word starts: after a non-word character, or at a camelCase hump.
_WORD_START = r"(?:(?<![^\W_])|(?-i:(?<=[a-z0-9])(?=[A-Z])))"


def scope_token(platform: str, channel: str) -> str:
    """Return the index token that marks entries of one channel: `ch` and 16 hex digits."""
    return "ch" + hashlib.sha256(f"{platform}\n{channel}".encode()).hexdigest()[:16]


def query_words(query: str) -> list[str]:
    """Return the words of a user's query, lowercased: letters and digits only (camelCase split).

    Stop words are left out, as PostgreSQL's English configuration does, so a query of only
    stop words finds nothing on either database (on FTS5 it would read the doclist of nearly
    every resource: 25-40 ms at 100,000 in bench/resources.py).
    """
    words = [piece.lower() for part in _WORD.findall(query) for piece in _CAMEL.sub(" ", part).split()]
    return [word for word in words if word not in STOP_WORDS][:MAX_QUERY_WORDS]


def name_text(path: str) -> str:
    """Return the words of a path to index: its parts and their camelCase pieces."""
    parts = _WORD.findall(path)
    pieces = [piece for part in parts for piece in _CAMEL.sub(" ", part).split() if piece != part]
    return " ".join(parts + pieces)


def index_resource(executor: Any, resource_id: int, *, platform: str, channel: str, path: str,
                   body: str | None) -> None:
    """Add one resource's name and text to the search index (a Session or a Connection)."""
    body = _CAMEL.sub(" ", (body or "")[:INDEX_TEXT_LIMIT])
    values = {"id": resource_id, "scope": scope_token(platform, channel), "name": name_text(path)}
    if _dialect(executor) == "postgresql":
        executor.execute(text(
            f"UPDATE resources SET search = setweight(to_tsvector('{PG_CONFIG}', :name), 'A')"
            f" || setweight(to_tsvector('{PG_CONFIG}', :body), 'D') || array_to_tsvector(ARRAY[:scope])"
            " WHERE id = :id"), {**values, "body": _SEPARATORS.sub(" ", body)})
    else:
        executor.execute(text(f"INSERT INTO {FTS_TABLE}(rowid, scope, name, body) VALUES (:id, :scope, :name, :body)"),
                         {**values, "body": body})


def find(executor: Any, *, platform: str, channel: str, words: list[str], limit: int) -> list[tuple[int, float]]:
    """Return (resource id, score) of the channel's best matches, best first; higher is better.

    Tries, until one finds something: every word as a whole (stemmed) word; the same with the
    last word as a prefix (it may be typed half-way); any of the words, the last as a prefix.
    Whole words come first because a prefix merges the doclists of every word it begins, over
    the whole database: bench/resources.py measured 2-3x the time for common prefixes.
    """
    if not words:
        return []
    last_is_prefix = len(words[-1]) >= MIN_PREFIX_CHARS
    stages = [(False, False), (True, False), (True, True)] if last_is_prefix else [(False, False), (False, True)]
    for prefix, any_word in stages:
        if any_word and len(words) == 1:
            break
        terms = [(word, prefix and index == len(words) - 1) for index, word in enumerate(words)]
        ranked = _search(executor, platform=platform, channel=channel, terms=terms, any_word=any_word, limit=limit)
        if ranked:
            return ranked
    return []


def _search(executor: Any, *, platform: str, channel: str, terms: list[tuple[str, bool]], any_word: bool,
            limit: int) -> list[tuple[int, float]]:
    """Return (resource id, score) for one query of (word, is prefix) terms, best first."""
    values = {"scope": scope_token(platform, channel), "platform": platform, "channel": channel, "limit": limit}
    if _dialect(executor) == "postgresql":
        values["q"] = (" | " if any_word else " & ").join(f"{w}:*" if prefix else w for w, prefix in terms)
        query = f"to_tsquery('{PG_CONFIG}', :q)"
        rows = executor.execute(text(
            f"SELECT r.id, ts_rank(r.search, {query}) AS score FROM resources r"
            " JOIN conversations c ON c.id = r.conversation_id"
            f" WHERE r.search @@ (CAST(:scope AS tsquery) && {query}) AND numnode({query}) > 0"
            " AND c.platform = :platform AND c.channel = :channel"
            " ORDER BY score DESC, r.id DESC LIMIT :limit"), values).all()
        return [(row_id, float(score)) for row_id, score in rows]
    matched = (" OR " if any_word else " AND ").join(f'"{w}"*' if prefix else f'"{w}"' for w, prefix in terms)
    values["q"] = f'scope : "{values["scope"]}" AND {{name body}} : ({matched})'
    weights = ", ".join(str(weight) for weight in BM25_WEIGHTS)
    rows = executor.execute(text(
        f"SELECT r.id, bm25({FTS_TABLE}, {weights}) AS score FROM {FTS_TABLE}"
        f" JOIN resources r ON r.id = {FTS_TABLE}.rowid JOIN conversations c ON c.id = r.conversation_id"
        f" WHERE {FTS_TABLE} MATCH :q AND c.platform = :platform AND c.channel = :channel"
        " ORDER BY score, r.id DESC LIMIT :limit"), values).all()
    return [(row_id, -float(score)) for row_id, score in rows]  # bm25 is lower-is-better


def snippet(body: str | None, words: list[str]) -> str | None:
    """Return the line around the first matched word, cut to `SNIPPET_CHARS`, or None."""
    found = _first_match(body, words) if body else None
    if body is None or found is None:
        return None
    line_start = body.rfind("\n", 0, found) + 1
    line_end = body.find("\n", found)
    line_end = len(body) if line_end == -1 else line_end
    start = max(line_start, min(found - SNIPPET_CHARS // 3, line_end - SNIPPET_CHARS))
    end = min(line_end, start + SNIPPET_CHARS)
    line = " ".join(body[start:end].split())
    return ("…" if start > line_start else "") + line + ("…" if end < line_end else "")


def rebuild(executor: Any) -> int:
    """Rebuild the whole index from the stored names and inline text; return the entries made.

    Used by migration 0003, so it reads only columns that exist at that revision. Text kept
    in the blob store is not reached from here (its directory is not known to a migration).
    """
    if _dialect(executor) == "postgresql":
        executor.execute(text("UPDATE resources SET search = NULL"))
    else:
        executor.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('delete-all')"))
    rows = executor.execute(text(
        "SELECT r.id, r.path, c.platform, c.channel, rc.text FROM resources r"
        " JOIN conversations c ON c.id = r.conversation_id"
        " LEFT JOIN resource_contents rc ON rc.sha256 = r.content_sha256 ORDER BY r.id")).all()
    for row_id, path, platform, channel, body in rows:
        index_resource(executor, row_id, platform=platform, channel=channel, path=path, body=body)
    return len(rows)


def _first_match(body: str, words: list[str]) -> int | None:
    """Return where the first query word (or, for stemmed matches, its stem) starts in the text."""
    stems = [word[: max(MIN_PREFIX_CHARS, len(word) * 2 // 3)] for word in words]
    for candidate in [*words, *stems]:
        match = re.search(_WORD_START + re.escape(candidate), body, re.IGNORECASE)
        if match:
            return match.start()
    return None


def _dialect(executor: Any) -> str:
    bind = executor.get_bind() if hasattr(executor, "get_bind") else executor
    return bind.dialect.name
