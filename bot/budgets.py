"""Spend budgets: runs, tokens and cost per day, for each person and each channel.

`budgets.person` limits what one person's runs spend in a day across channels;
`budgets.channel` what everyone's runs spend in one channel. A day is the UTC calendar day.
A run whose budget is spent is not started, and the thread is told which limit was reached.
"""

from __future__ import annotations

from datetime import datetime, time, timezone
from typing import TYPE_CHECKING

from bot.db.repositories import Runs
from bot.types import Message, Spend, utcnow

if TYPE_CHECKING:
    from bot.config import BudgetSection
    from bot.types import EngineAPI


def day_start(now: datetime | None = None) -> datetime:
    """Return the start of the current UTC day."""
    return datetime.combine((now or utcnow()).date(), time.min, tzinfo=timezone.utc)


def over_budget(engine: EngineAPI, message: Message) -> str | None:
    """Return which daily budget a new run by this person in this channel would exceed, or None."""
    budgets = engine.manifest.budgets
    where = message.where
    since = day_start()
    with engine.db.reading() as session:
        runs = Runs(session)
        person = _total(runs.spend(since, platform=where.platform, user_id=message.user_id))
        channel = _total(runs.spend(since, platform=where.platform, channel=where.channel))
    return (_exceeded(budgets.person, person, "your daily budget")
            or _exceeded(budgets.channel, channel, "this channel's daily budget"))


def _total(spends: list[Spend]) -> Spend:
    return Spend("", sum(s.runs for s in spends), sum(s.tokens for s in spends), sum(s.cost for s in spends))


def _exceeded(budget: BudgetSection, spent: Spend, whose: str) -> str | None:
    if budget.runs_per_day is not None and spent.runs >= budget.runs_per_day:
        return f"{whose} of {budget.runs_per_day} runs a day is used up ({spent.runs} today)"
    if budget.tokens_per_day is not None and spent.tokens >= budget.tokens_per_day:
        return f"{whose} of {budget.tokens_per_day:,} tokens a day is used up ({spent.tokens:,} today)"
    if budget.cost_per_day is not None and spent.cost >= budget.cost_per_day:
        return f"{whose} of ${budget.cost_per_day:.2f} a day is used up (${spent.cost:.2f} today)"
    return None
