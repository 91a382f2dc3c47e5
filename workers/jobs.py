"""RQ job functions: module-level, taking ids and plain values, idempotent when run twice.

The same functions run in `python -m bot worker` processes (Redis) and in the console bot's
in-process worker.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from bot import engine as engine_module
from bot import logs, metrics
from bot.budgets import over_budget
from bot.db.repositories import Conversations, Messages
from bot.engine import NOT_ALLOWED_AGENT, NOT_ALLOWED_ASK, Engine
from bot.errors import UserFacingError
from bot.types import Conversation, Message, Route, RouteDecision
from workers.routing import needs_llm

log = logging.getLogger(__name__)

NO_MODEL_CONFIGURED = (
    "I can't answer that in chat yet: no language model is configured. Set `ANTHROPIC_API_KEY` "
    "in the bot's environment (see the README, Configuration), or send the coding agent with "
    "`/agent <task>`."
)


@metrics.observed_job
def handle_message(message_id: int, route: str, text: str, tentative: bool) -> None:
    """Finish a message that `dispatch` routed to a direct answer or the agent."""
    engine = engine_module.current()
    with engine.db.session() as session:
        messages = Messages(session)
        if messages.answered(message_id):
            log.info("message %s was answered already; nothing to do", message_id)
            return
        entry, conversation_id, user_id = messages.get(message_id)
        logs.bind(conversation_id=conversation_id)
        conversation = Conversations(session).get(conversation_id)
        stored = messages.decision(message_id)
    message = Message(where=conversation.where, text=text, user_id=user_id, user_name=entry.author,
                      external_id=None, received_at=entry.created_at)
    try:
        decision = _as_decision(route, text, tentative, stored)
        decided = decision.route
        may_agent = engine.manifest.allows("agent", message.user_id, message.where)
        if not may_agent:
            decided = Route.DIRECT  # the agent is not theirs to start: no classification needed
        elif needs_llm(decision, engine.manifest.router.min_confidence):
            decided = _classify(engine, message_id, message, conversation, replace(decision, tentative=True))
        if decided == Route.AGENT:
            _start_agent(engine, message_id, message, conversation)
        else:
            _answer(engine, message_id, message, conversation)
    except UserFacingError as exc:
        engine.say(conversation, str(exc), reply_to=message_id)
    except Exception:  # boundary: one job
        log.exception("handling message %s failed", message_id)
        engine.say(conversation, "Sorry, something went wrong while answering; the error is in the bot's log.",
                   reply_to=message_id)


def _as_decision(route: str, text: str, tentative: bool, stored: RouteDecision | None) -> RouteDecision:
    """Return the cheap chain's decision as dispatch stored it (the job gets only its route)."""
    if stored is None or stored.route.value != route:
        return RouteDecision(Route(route), "fallback", 0.5, "tentative", text=text, tentative=tentative)
    return replace(stored, text=text, tentative=tentative)


def _classify(engine: Engine, message_id: int, message: Message, conversation: Conversation,
              tentative: RouteDecision) -> Route:
    """Ask the LLM stage about an undecided message; store and return its route, or keep the tentative one."""
    better = engine.hook.classify_message(message=message, conversation=conversation, tentative=tentative, engine=engine)
    if better is None:
        return tentative.route
    with engine.inbox.transaction() as cursor:
        engine.inbox.replace_decision(cursor, message_id, better)
    return better.route


def _answer(engine: Engine, message_id: int, message: Message, conversation: Conversation) -> None:
    if not engine.manifest.allows("ask", message.user_id, message.where):
        engine.say(conversation, NOT_ALLOWED_ASK, reply_to=message_id)
        return
    memories = engine.recall(message, conversation, engine.manifest.llm.context_budget_tokens)
    answer = engine.hook.answer_message(message=message, conversation=conversation, memories=memories,
                                        engine=engine, reply_to=message_id)
    if answer is None:
        engine.say(conversation, NO_MODEL_CONFIGURED, reply_to=message_id)
        return
    if answer:  # an empty answer: the thread was told the model failed; nothing to remember
        engine.remember(message=message, conversation=conversation, reply=answer)


def _start_agent(engine: Engine, message_id: int, message: Message, conversation: Conversation) -> None:
    """Start an agent run, if the manifest lets this person start one (whichever stage routed here)."""
    from workers.agent_run import start_run

    if not engine.manifest.allows("agent", message.user_id, message.where):
        log.info("message %s routed to the agent, but %s may not start it", message_id, message.user_id)
        engine.say(conversation, NOT_ALLOWED_AGENT, reply_to=message_id)
        return
    spent = over_budget(engine, message)
    if spent:
        engine.say(conversation, f"I did not start the agent: {spent}. It starts again tomorrow (UTC); "
                   "`/usage` shows the spend.", reply_to=message_id)
        return
    start_run(engine, message_id, message, conversation)
