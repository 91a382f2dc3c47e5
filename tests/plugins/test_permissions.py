"""Who may do what, where: permissions per action and channel, people with several identities, budgets."""

from __future__ import annotations

from bot.engine import NOT_ALLOWED_ANYTHING, NOT_ALLOWED_ASK
from bot.types import ThreadRef
from tests.support.engines import EngineFactory, dispatch_and_wait, rows

OTHER_CHANNEL = ThreadRef("test", "C2", "T9")


def test_ask_and_share_permissions_hold_per_channel_and_per_person(make_engine: EngineFactory,
                                                                   anthropic_server) -> None:
    engine, port = make_engine(manifest={
        "people": {"dana": ["test:U_DANA", "discord:8123"]},
        "permissions": {"agent": [], "ask": ["dana"], "share": []},
        "channels": {"test:C2": {"permissions": {"ask": ["*"]}}},
    })
    dispatch_and_wait(engine, "/ask what is a bloom filter?", user="U_EVE")
    assert list(port.final_texts.values())[-1] == NOT_ALLOWED_ANYTHING  # eve may neither ask nor start
    assert anthropic_server.bodies == []  # no model was asked
    dispatch_and_wait(engine, "/ask what is a bloom filter?", user="U_DANA")  # dana, by her test identity
    assert len(anthropic_server.bodies) == 1
    dispatch_and_wait(engine, "/ask what is a bloom filter?", user="U_EVE", where=OTHER_CHANNEL)  # C2: everyone
    assert len(anthropic_server.bodies) == 2
    dispatch_and_wait(engine, "/share r1 #elsewhere", user="U_DANA")
    assert list(port.final_texts.values())[-1] == "You are not allowed to use `share` here (share permission)."
    assert rows(engine, "select count(*) from agent_runs") == [(0,)]


def test_ask_refused_for_someone_who_may_only_start_the_agent(make_engine: EngineFactory, anthropic_server) -> None:
    engine, port = make_engine(manifest={"permissions": {"agent": ["U_OPS"], "ask": []}})
    dispatch_and_wait(engine, "/ask why is the build slow?", user="U_OPS")
    assert list(port.final_texts.values())[-1] == NOT_ALLOWED_ASK and anthropic_server.bodies == []


def test_a_daily_run_budget_stops_the_next_run_and_usage_shows_it(make_engine: EngineFactory) -> None:
    engine, port = make_engine(manifest={"budgets": {"person": {"runs_per_day": 1}}})
    dispatch_and_wait(engine, "/agent write hello.py", user="U_ANA")
    engine.queue.wait(timeout=60)  # the run (it fails at once here: no model is configured)
    dispatch_and_wait(engine, "/agent write bye.py", user="U_ANA")
    assert rows(engine, "select count(*) from agent_runs") == [(1,)]
    refusal = list(port.final_texts.values())[-1]
    assert refusal.startswith("I did not start the agent: your daily budget of 1 runs a day is used up (1 today)")
    dispatch_and_wait(engine, "/agent write hi.py", user="U_BEN")  # ben's own budget is untouched
    engine.queue.wait(timeout=60)
    assert rows(engine, "select count(*) from agent_runs") == [(2,)]
    dispatch_and_wait(engine, "/usage", user="U_ANA")
    usage = list(port.final_texts.values())[-1]
    assert "person `test:U_ANA`: 1/1 runs" in usage and "U_BEN" not in usage
    assert "channel `test:C1`: 2 runs" in usage
