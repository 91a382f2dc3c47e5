"""The fake Discord works with the real discord.py client: REST, gateway, resume, 429, interactions."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import Callable

import discord
import pytest
from discord import app_commands

from tests.fakes.discord_fixtures import ClientThread
from tests.fakes.discord_server import FakeDiscordServer, point_discord_py_at

GUILD_READY_TIMEOUT = 0.05  # discord.py waits this long after the last GUILD_CREATE before on_ready


def make_client(*, message_content: bool = True) -> discord.Client:
    intents = discord.Intents.default()
    intents.message_content = message_content
    return discord.Client(intents=intents, guild_ready_timeout=GUILD_READY_TIMEOUT)


def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait for client-side state (the server's own state has ``server.wait_for``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


def contents(server: FakeDiscordServer, channel_id: str) -> list[str]:
    return [m.content for m in server.messages_in(channel_id)]


def test_bot_connects_and_replies(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    client = make_client()

    @client.event
    async def on_message(message: discord.Message) -> None:
        if message.author != client.user:
            await message.channel.send(f"pong: {message.content}")

    with ClientThread(client, server.token):
        assert client.user is not None and str(client.user.id) == server.bot_id
        assert [c.name for c in client.guilds[0].text_channels] == ["general"]
        connection = server.gateway_connections[0]
        assert (connection.path, connection.query["v"], connection.query["encoding"]) == ("/", "10", "json")
        assert server.identify_payloads[0]["intents"] & discord.Intents(message_content=True).value

        server.send_message_create(server.channel_id, "ping")
        server.wait_for(lambda: len(server.messages_in(server.channel_id)) == 2)

    ping, reply = server.messages_in(server.channel_id)
    assert (ping.author["username"], reply.author["id"], reply.content) == ("alice", server.bot_id, "pong: ping")
    assert server.identifies == 1 and server.resumes == 0


def test_sent_file_keeps_its_name_and_bytes(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    client = make_client()
    data = b"line 1\nline 2\n" * 1000

    with ClientThread(client, server.token) as running:
        channel = client.get_channel(int(server.channel_id))
        assert isinstance(channel, discord.TextChannel)
        sent = running.run(channel.send("Full log attached", file=discord.File(io.BytesIO(data), "run.log")))
        downloaded = running.run(sent.attachments[0].read())

    (message,) = server.messages_in(server.channel_id)
    assert message.content == "Full log attached"
    assert [(a.filename, a.data) for a in message.attachments] == [("run.log", data)]
    assert (sent.attachments[0].filename, sent.attachments[0].size, downloaded) == ("run.log", len(data), data)


def test_create_thread_from_message_and_post_in_it(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    client = make_client()

    @client.event
    async def on_message(message: discord.Message) -> None:
        if message.author != client.user and message.channel.id == int(server.channel_id):
            thread = await message.create_thread(name=f"Task: {message.content}")
            await thread.send("On it.")

    with ClientThread(client, server.token):
        request = server.send_message_create(server.channel_id, "fix the login bug")
        server.wait_for(lambda: contents(server, request.id) == ["On it."])
        eventually(lambda: isinstance(client.get_channel(int(request.id)), discord.Thread))  # THREAD_CREATE
        thread = client.get_channel(int(request.id))

    created = server.threads[request.id]
    assert (created["type"], created["parent_id"], created["name"]) == (11, server.channel_id, "Task: fix the login bug")
    assert isinstance(thread, discord.Thread) and thread.parent_id == int(server.channel_id)
    assert contents(server, server.channel_id) == ["fix the login bug"]  # nothing posted in the channel itself


def test_dropped_connection_is_resumed_and_no_message_is_lost_or_doubled(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    client = make_client()
    seen: Counter[str] = Counter()
    resumed: list[bool] = []

    @client.event
    async def on_message(message: discord.Message) -> None:
        seen[message.content] += 1

    @client.event
    async def on_resumed() -> None:
        resumed.append(True)

    with ClientThread(client, server.token):
        server.send_message_create(server.channel_id, "before the drop")
        eventually(lambda: seen["before the drop"] == 1)
        server.send_message_create(server.channel_id, "just before the drop")  # may or may not arrive first
        server.drop_connection()
        server.send_message_create(server.channel_id, "during the drop")
        server.wait_for(lambda: server.resumes == 1)
        server.send_message_create(server.channel_id, "after the resume")
        eventually(lambda: seen["after the resume"] == 1)  # dispatches are ordered: the rest came first

    assert seen == {"before the drop": 1, "just before the drop": 1, "during the drop": 1, "after the resume": 1}
    assert resumed == [True]
    assert server.identifies == 1
    assert server.gateway_connections[-1].path == "/resume"  # the resume_gateway_url from READY
    assert server.resume_payloads[0]["seq"] >= 3  # READY, GUILD_CREATE, "before the drop"


def test_rate_limited_send_is_retried_and_lands_once(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    client = make_client()
    server.rate_limit("POST", r"^/channels/\d+/messages$", times=1, retry_after=0.3)

    with ClientThread(client, server.token) as running:
        channel = client.get_channel(int(server.channel_id))
        assert isinstance(channel, discord.TextChannel)
        started = time.monotonic()
        running.run(channel.send("hello"))
        elapsed = time.monotonic() - started

    assert contents(server, server.channel_id) == ["hello"]
    assert [c.status for c in server.calls_to("POST", r"/messages$")] == [429, 200]
    assert elapsed >= 0.3


def test_wrong_token_is_refused(discord_server: FakeDiscordServer) -> None:
    with pytest.raises(discord.LoginFailure):
        with ClientThread(make_client(), "not-the-token"):
            pass
    assert discord_server.calls[0].status == 401 and discord_server.identifies == 0


def test_privileged_intent_the_app_may_not_use_closes_the_gateway() -> None:
    with FakeDiscordServer(privileged_intents_allowed=False) as server:
        undo = point_discord_py_at(server)
        try:
            with pytest.raises(discord.PrivilegedIntentsRequired):
                with ClientThread(make_client(message_content=True), server.token):
                    pass
            with ClientThread(make_client(message_content=False), server.token) as running:
                assert running.client.is_ready()
        finally:
            undo()


def test_without_message_content_intent_only_mentions_have_content(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    client = make_client(message_content=False)
    received: list[str] = []

    @client.event
    async def on_message(message: discord.Message) -> None:
        received.append(message.content)

    with ClientThread(client, server.token):
        server.send_message_create(server.channel_id, "a secret")
        server.send_message_create(server.channel_id, f"<@{server.bot_id}> run the tests")
        eventually(lambda: len(received) == 2)

    assert received == ["", f"<@{server.bot_id}> run the tests"]


def test_slash_command_deferred_then_answered(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    client = make_client()
    tree = app_commands.CommandTree(client)

    @tree.command(name="ask", description="Ask the agent")
    async def ask(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content=f"Working on: {prompt}")
        await interaction.followup.send("Done.")

    with ClientThread(client, server.token) as running:
        running.run(tree.sync())
        assert [c["name"] for c in server.commands[None]] == ["ask"]
        server.send_interaction_create(command="ask", options=[{"name": "prompt", "type": 3, "value": "fix CI"}])
        server.wait_for(lambda: contents(server, server.channel_id) == ["Working on: fix CI", "Done."])

    assert [r.type for r in server.interaction_responses] == [5]
    answer = server.messages_in(server.channel_id)[0]
    assert answer.history == ["", "Working on: fix CI"] and not answer.loading


def test_button_click_updates_the_message(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    client = make_client()

    async def post_with_button() -> discord.Message:
        view = discord.ui.View(timeout=None)
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(label="Cancel", custom_id="cancel")

        async def cancel(interaction: discord.Interaction) -> None:
            await interaction.response.edit_message(content="Cancelled.", view=None)

        button.callback = cancel  # type: ignore[method-assign]
        view.add_item(button)
        channel = client.get_channel(int(server.channel_id))
        assert isinstance(channel, discord.TextChannel)
        return await channel.send("Running...", view=view)

    with ClientThread(client, server.token) as running:
        sent = running.run(post_with_button())
        assert server.message(sent.id).components[0]["components"][0]["custom_id"] == "cancel"
        server.send_interaction_create(custom_id="cancel", message_id=sent.id)
        server.wait_for(lambda: server.message(sent.id).content == "Cancelled.")

    message = server.message(sent.id)
    assert [r.type for r in server.interaction_responses] == [7]
    assert (message.components, message.history) == ([], ["Running...", "Cancelled."])


def test_interaction_answered_after_the_deadline_is_unknown(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    server.interaction_ack_timeout = 0.1  # Discord's is 3 s
    client = make_client()
    tree = app_commands.CommandTree(client)
    errors: list[Exception] = []

    @tree.command(name="slow", description="Answers too late")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.2)
        await interaction.response.send_message("too late")

    @tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        errors.append(error.__cause__ or error)

    with ClientThread(client, server.token):
        server.send_interaction_create(command="slow")
        eventually(lambda: errors)

    assert isinstance(errors[0], discord.NotFound) and errors[0].code == 10062
    assert server.interaction_responses == [] and contents(server, server.channel_id) == []


def test_reactions_reach_only_clients_with_the_reactions_intent(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    seen: dict[str, list[str]] = {"with": [], "without": []}
    clients = {}
    for name, reactions in (("with", True), ("without", False)):
        intents = discord.Intents.default()
        intents.guild_reactions = intents.dm_reactions = reactions
        client = discord.Client(intents=intents, guild_ready_timeout=GUILD_READY_TIMEOUT)

        async def on_raw_reaction_add(payload: discord.RawReactionActionEvent, name: str = name) -> None:
            seen[name].append(f"{payload.user_id}:{payload.emoji}:{payload.message_author_id}")

        client.event(on_raw_reaction_add)
        clients[name] = client
    message = server.add_thread_message(server.channel_id, "react to me")
    with ClientThread(clients["with"], server.token), ClientThread(clients["without"], server.token):
        server.send_reaction_add(server.channel_id, message.id)
        eventually(lambda: seen["with"])
        time.sleep(0.2)
    assert seen == {"with": [f"{server.human['id']}:✅:{server.human['id']}"], "without": []}


def test_history_pages_and_a_hidden_channel_is_403(discord_server: FakeDiscordServer) -> None:
    server = discord_server
    for n in range(5):
        server.add_thread_message(server.channel_id, f"message {n}")
    client = make_client()
    with ClientThread(client, server.token) as running:
        channel = client.get_partial_messageable(int(server.channel_id))

        async def read(limit: int) -> list[str]:
            return [m.content async for m in channel.history(limit=limit)]

        assert running.run(read(3)) == ["message 4", "message 3", "message 2"]

        async def read_after(first: str, limit: int) -> list[str]:  # oldest first: the ones just after `first`
            return [m.content async for m in channel.history(limit=limit, after=discord.Object(int(first)))]

        first = server.messages_in(server.channel_id)[0].id
        assert running.run(read_after(first, 3)) == ["message 1", "message 2", "message 3"]
        server.history_hidden.add(server.channel_id)
        with pytest.raises(discord.Forbidden):
            running.run(read(3))
