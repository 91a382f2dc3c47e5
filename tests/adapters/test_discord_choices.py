"""Discord message components for choices (approval requests): posted as buttons, a click is the typed line."""

from __future__ import annotations

from bot.approvals import CLOSED, ApprovalRequest, choices, request_text
from bot.engine import Engine
from bot.types import Reply, ThreadRef
from tests.adapters.test_discord import bot, bot_posts, engine, mention  # noqa: F401 (fixtures)
from tests.fakes.discord_server import FakeDiscordServer


def test_choice_buttons_dispatch_their_line_from_whoever_clicked_and_an_edit_removes_them(
        bot, engine: Engine, discord_server: FakeDiscordServer) -> None:  # noqa: F811
    server = discord_server
    request = server.send_message_create(server.channel_id, mention(server, "hello"))
    server.wait_for(lambda: bot_posts(server, request.id))
    where = ThreadRef("discord", server.channel_id, request.id)
    asked = ApprovalRequest("per_1", "bash", "git push origin main", timeout_s=300)
    message_id = bot.port.post_choices(where, Reply(request_text(asked)), choices(asked))
    posted = server.message(message_id)
    assert "git push origin main" in posted.content
    buttons = posted.components[0]["components"]
    assert [(b["label"], b["custom_id"]) for b in buttons] == [
        ("Approve once", "threadwork:choice:/approve once per_1"),
        ("Always", "threadwork:choice:/approve always per_1"),
        ("Reject", "threadwork:choice:/reject per_1")]

    bob = server.add_user("bob")
    server.add_member(bob)
    before = len(bot_posts(server, request.id))
    server.send_interaction_create(custom_id=buttons[2]["custom_id"], message_id=message_id, user=bob)
    server.wait_for(lambda: len(bot_posts(server, request.id)) > before)
    assert [r.type for r in server.interaction_responses] == [6]  # acknowledged at once
    # No run in this thread waits for that request: bob is told so in one line, in the thread.
    assert bot_posts(server, request.id)[-1] == CLOSED.format(why="it was answered already or timed out")

    bot.port.edit(where, message_id, Reply("⛔ Rejected by bob: run `git push origin main`"))
    server.wait_for(lambda: not server.message(message_id).components)
    assert server.message(message_id).content.startswith("⛔ Rejected by bob")
