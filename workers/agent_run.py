"""Agent runs: placeholder until the agent-runs issue lands the opencode worker."""

from __future__ import annotations

from bot.engine import Engine
from bot.errors import UserFacingError
from bot.types import Conversation, Message


def start_run(engine: Engine, message_id: int, message: Message, conversation: Conversation) -> None:
    """Start an agent run for the message (not available yet in this build)."""
    raise UserFacingError("The coding agent is not available in this build yet; ask me in chat with `/ask`.")
