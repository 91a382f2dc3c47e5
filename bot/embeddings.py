"""Local text embeddings for semantic memory search: wordllama's 256-dimension static model, when installed.

The optional extra `embeddings` (`pip install -e '.[embeddings]'`) installs `wordllama`, whose
wheel ships its weights (16 MB, `l2_supercat_256`) and tokenizer: nothing is ever downloaded.
The model is loaded once per process, on first use, under a lock (about 0.2-0.6 s and 70 MB).
Without the extra, or with `BOT_SEMANTIC_SEARCH=off`, memory search is full-text only.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The environment switch: `off` (or 0, false, no) keeps memory search full-text only.
SWITCH_ENV = "BOT_SEMANTIC_SEARCH"
#: The model named on every stored vector; vectors of another model are not compared.
MODEL = "wordllama/l2_supercat_256"
#: The vectors' length (the model's full dimension; its weights are trained to be cut shorter).
DIMENSIONS = 256
#: wordllama's configuration and the weight file its wheel ships.
_CONFIG, _WEIGHTS = "l2_supercat", "weights/l2_supercat_256.safetensors"
_OFF = ("0", "off", "false", "no")

_lock = threading.Lock()
_model: Any = None
_broken: str | None = None


def switched_on() -> bool:
    """Return whether the environment allows semantic search (it does unless `BOT_SEMANTIC_SEARCH=off`)."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in _OFF


@functools.cache
def installed() -> bool:
    """Return whether the extra is installed (wordllama, its weights and numpy), without importing it."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or spec.origin is None or importlib.util.find_spec("numpy") is None:
        return False
    return (Path(spec.origin).parent / _WEIGHTS).is_file()


def enabled() -> bool:
    """Return whether memories get vectors and searches look for neighbours in this process."""
    return _broken is None and switched_on() and installed()


def status() -> tuple[bool, str]:
    """Return whether semantic search is on and a sentence saying why (for `doctor`); loads nothing."""
    if not switched_on():
        return False, f"semantic search off ({SWITCH_ENV}=off): full-text only"
    if not installed():
        return False, "semantic search off (the `embeddings` extra is not installed): full-text only"
    if _broken is not None:
        return False, f"semantic search off: the model failed to load ({_broken})"
    return True, f"semantic search on: local model {MODEL}, vectors in the database"


def embed(texts: list[str]) -> Any:
    """Return the texts' unit-length float32 vectors as a numpy array (one row each), or None when off."""
    model = _loaded() if texts and switched_on() else None
    if model is None:
        return None
    return model.embed(texts, norm=True).astype("float32", copy=False)


def _loaded() -> Any:
    """Return the model, loading it the first time (once per process, whichever thread asks first)."""
    global _model, _broken
    if _model is not None:
        return _model
    if not enabled():
        return None
    with _lock:
        if _model is None and _broken is None:
            try:
                import wordllama
                from wordllama import WordLlama

                # `cache_dir` pointed at the package finds the shipped files; `disable_download`
                # makes a missing file an error instead of a download.
                _model = WordLlama.load(config=_CONFIG, dim=DIMENSIONS, cache_dir=Path(wordllama.__file__).parent,
                                        disable_download=True)
            except Exception as exc:  # boundary: a broken optional extra must leave full-text search working
                _broken = f"{type(exc).__name__}: {exc}"
                log.exception("loading the embedding model failed; memory search is full-text only")
    return _model
