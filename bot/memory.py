"""Memory within a token budget: estimating sizes and merging what plugins recall."""

from __future__ import annotations

import re
from collections.abc import Iterable

from bot.types import MemoryItem

_WORD = re.compile(r"[a-z0-9_]{3,}")
#: Words too common to say two texts are about the same thing.
_STOPWORDS = frozenset(
    "the and for you that this with have are was but not can what how why when where who".split()
    + "please could would should there their them then than about into from your our just".split()
)


def estimate_tokens(text: str) -> int:
    """Return a cheap estimate of the text's size in model tokens (~4 characters a token)."""
    return len(text) // 4 + 1


def keywords(text: str) -> set[str]:
    """Return the text's distinctive lower-case words."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def within_budget(items: Iterable[MemoryItem], budget_tokens: int) -> list[MemoryItem]:
    """Return the best-scoring items whose sizes fit the budget together, best first."""
    chosen: list[MemoryItem] = []
    spent = 0
    for item in sorted(items, key=lambda i: i.score, reverse=True):
        if spent + item.tokens <= budget_tokens:
            chosen.append(item)
            spent += item.tokens
    return chosen
