"""How much the cheap routing stages decide, and how often they decide right, on a labelled set.

Runs the real router plugins through a real `Engine` on a scratch SQLite database, exactly as
`dispatch` calls them (the message not yet stored), over labelled JSON lines:
`{"text", "expected": "agent"|"direct"|"command", "thread"?}`, where `thread` lists the
messages before it (`{"role": "user"|"assistant", "text", "route"?}`) and is stored first, so
follow-ups ("ok go ahead") see what they answer. No model is called: the messages the cheap
stages leave undecided (tentative, or below `router.min_confidence`) are the LLM stage's share.

Two sets, in `tests/data/`: `routing_labelled.jsonl`, the development set the heuristics were
written against, and `routing_heldout.jsonl`, written after the rules were frozen and measured
blind once (see docs/readme/orchestrator.md for that first figure). Run:
`python bench/routing.py [FILE ...] [--misses]`.

Targets: the cheap stages decide at least 60% of the messages, with at least 97% precision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bot.config import Settings  # noqa: E402
from bot.db.repositories import Messages  # noqa: E402
from bot.engine import Engine  # noqa: E402
from bot.queue import InProcessQueue  # noqa: E402
from bot.types import Message, Route, RouteDecision, ThreadRef  # noqa: E402
from workers.routing import needs_llm  # noqa: E402

SETS = (REPO / "tests" / "data" / "routing_labelled.jsonl", REPO / "tests" / "data" / "routing_heldout.jsonl")
COVERAGE_TARGET = 0.60
PRECISION_TARGET = 0.97


def load(path: Path) -> list[dict]:
    """Return the labelled messages of a JSON-lines file."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def replay(engine: Engine, where: ThreadRef, thread: list[dict]) -> None:
    """Store a thread's earlier messages, with the routes they were given when labelled."""
    for entry in thread:
        if entry["role"] == "user":
            stored = engine.persist_and_route(Message(where=where, text=entry["text"], user_id="U1", user_name="ana"))
            if entry.get("route"):
                with engine.db.session() as session:
                    Messages(session).record_decision(
                        stored.message_id, RouteDecision(Route(entry["route"]), "replay", 1.0, "labelled"))
        else:
            conversation = engine.inbox.conversation(where, "")
            with engine.inbox.transaction() as cursor:
                engine.inbox.add_message(cursor, conversation.id, "assistant", entry["text"])


def evaluate(engine: Engine, items: list[dict]) -> list[dict]:
    """Return, for each labelled message, the cheap chain's decision and how long it took."""
    results = []
    for n, item in enumerate(items):
        where = ThreadRef("bench", "C1", f"t{n}")
        replay(engine, where, item.get("thread", []))
        conversation = engine.inbox.conversation(where, item["text"][:80])
        message = Message(where=where, text=item["text"], user_id="U1", user_name="ana")
        start = time.perf_counter()
        decision = engine.hook.route_message(message=message, conversation=conversation, engine=engine)
        elapsed = time.perf_counter() - start
        decided = not needs_llm(decision, engine.manifest.router.min_confidence)
        results.append({"item": item, "decision": decision, "decided": decided, "ms": elapsed * 1000,
                        "right": decision.route.value == item["expected"]})
    return results


def report(results: list[dict], show_misses: bool) -> bool:
    """Print the table; return whether both targets hold."""
    total = len(results)
    decided = [r for r in results if r["decided"]]
    right = sum(r["right"] for r in decided)
    coverage = len(decided) / total
    precision = right / len(decided) if decided else 0.0
    expected = Counter(r["item"]["expected"] for r in results)
    print(f"labelled messages: {total} ({', '.join(f'{n} {k}' for k, n in sorted(expected.items()))})")
    print()
    print(f"| {'stage':<11} | {'decided':>7} | {'share':>6} | {'right':>5} | {'precision':>9} |")
    print(f"| {'-' * 11} | {'-' * 7}:| {'-' * 6}:| {'-' * 5}:| {'-' * 9}:|")
    for stage in sorted({r["decision"].stage for r in decided}):
        rows = [r for r in decided if r["decision"].stage == stage]
        hits = sum(r["right"] for r in rows)
        print(f"| {stage:<11} | {len(rows):>7} | {len(rows) / total:>6.1%} | {hits:>5} | {hits / len(rows):>9.1%} |")
    print(f"| {'cheap, all':<11} | {len(decided):>7} | {coverage:>6.1%} | {right:>5} | {precision:>9.1%} |")
    left = total - len(decided)
    print(f"| {'left to LLM':<11} | {left:>7} | {left / total:>6.1%} | {'':>5} | {'':>9} |")
    print()
    per_route = Counter((r["item"]["expected"], r["decided"]) for r in results)
    for route in sorted(expected):
        print(f"{route:>7}: {per_route[(route, True)]}/{expected[route]} decided by the cheap stages")
    timings = sorted(r["ms"] for r in results)
    p99 = timings[min(len(timings) - 1, int(round(0.99 * (len(timings) - 1))))]
    print(f"cheap chain per message: p50 {statistics.median(timings):.3f} ms, p99 {p99:.3f} ms")
    ok = coverage >= COVERAGE_TARGET and precision >= PRECISION_TARGET
    print(f"targets: decided >= {COVERAGE_TARGET:.0%} with precision >= {PRECISION_TARGET:.0%}: "
          f"{'met' if ok else 'NOT met'}")
    if show_misses:
        print("\nwrong decisions:")
        for r in decided:
            if not r["right"]:
                d = r["decision"]
                print(f"  {r['item']['expected']:>7} <- {d.route.value} ({d.stage}: {d.reason}) {r['item']['text']!r}")
        print("\nleft to the LLM stage:")
        for r in results:
            if not r["decided"]:
                print(f"  {r['item']['expected']:>7} {r['item']['text']!r}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=list(SETS), help="labelled JSON lines files")
    parser.add_argument("--misses", action="store_true", help="list wrong and undecided messages")
    args = parser.parse_args()
    ok = True
    for path in args.paths:
        with tempfile.TemporaryDirectory(prefix="tw-routing-") as scratch:
            settings = Settings.from_env({"BOT_DATA_DIR": scratch, "BOT_MANIFEST": str(REPO / "manifest.yml")})
            engine = Engine.from_settings(settings, queue=InProcessQueue(workers=0), load_entrypoints=False)
            try:
                results = evaluate(engine, load(path))
            finally:
                engine.close()
        print(f"== {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        ok = report(results, args.misses) and ok
        print()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
