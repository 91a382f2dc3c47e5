"""`python -m bot route`: how the router chain decides, line by line, for operators."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.engine import Engine
from bot.queue import InProcessQueue
from bot.types import Message, Route, RouteDecision, ThreadRef

#: The lines read are one thread, so follow-ups ("ok go ahead") see what came before.
ROUTE_THREAD = ThreadRef("cli", "route", "stdin")


def needs_llm(decision: RouteDecision, min_confidence: float) -> bool:
    """Return whether the LLM stage should have its say: a tentative or unsure chat or agent route."""
    return decision.route != Route.COMMAND and (decision.tentative or decision.confidence < min_confidence)


def route_lines(settings: Settings, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Yield, for each non-empty line, the decision of the full chain as plain values.

    The cheap stages decide first; a line they leave undecided (tentative, or below
    `router.min_confidence`) goes to the LLM stage, whose decision replaces theirs, or carries
    an `"llm"` key saying why it was skipped or failed. Nothing is answered or enqueued, and
    nothing is written to the bot's own database: the lines live in a scratch database for as
    long as the command runs.
    """
    with tempfile.TemporaryDirectory(prefix="threadwork-route-") as scratch:
        scratch_settings = dataclasses.replace(settings, database_url=f"sqlite:///{Path(scratch) / 'route.db'}")
        engine = Engine.from_settings(scratch_settings, queue=InProcessQueue(workers=0))
        llm_skipped = _llm_skipped(engine)
        try:
            for line in lines:
                text = line.strip()
                if not text:
                    continue
                message = Message(where=ROUTE_THREAD, text=text, user_id="operator", user_name="operator")
                stored = engine.persist_and_route(message)
                decision = stored.decision
                assert decision is not None
                result: dict[str, Any] = {"text": text, **decision.as_dict()}
                if needs_llm(decision, engine.manifest.router.min_confidence):
                    if llm_skipped:
                        result["llm"] = f"skipped: {llm_skipped}"
                    else:
                        better = engine.hook.classify_message(message=message, conversation=stored.conversation,
                                                              tentative=dataclasses.replace(decision, tentative=True),
                                                              engine=engine)
                        if better is None:
                            result["llm"] = "failed (see the log): the cheap stages' route stands"
                        else:
                            result.update(better.as_dict())
                yield result
        finally:
            engine.close()


def _llm_skipped(engine: Engine) -> str:
    if not engine.manifest.router.llm_stage:
        return "router.llm_stage is off in the manifest"
    if not engine.settings.get("ANTHROPIC_API_KEY"):
        return "no ANTHROPIC_API_KEY"
    return ""
