"""How fast resources are indexed and how fast `/find` answers, on SQLite and on PostgreSQL.

Adds N resources (100,000 by default) of deterministic pseudo-text through the real
`Resources.add` (code-like files, prose, logs, diffs, a few large or binary ones, some
identical) spread over ~50 channels of 10 threads each, in transactions of
`RESOURCES_PER_TRANSACTION`, as a run's worker adds its files; then times ~200 realistic
queries through `Resources.find` (row loading and snippets included), one read-only session
per query, as the chat command would. PostgreSQL is a throw-away cluster started like the
tests' (tests/support/servers.py); it is skipped with a message when initdb is missing.
Run: `python bench/resources.py [-n 100000] [--queries 200] [--only sqlite|postgres]`.

Target: `/find` p95 under 20 ms at 100,000 resources (PLATFORM_FACTS.md measured SQLite FTS5
bm25 at 20 ms and PostgreSQL 15 GIN full-text at 12.5 ms p95 at that size, unscoped).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.measure import percentile, postgres  # noqa: E402
from bot.db import Database  # noqa: E402
from bot.db.repositories import Conversations, Resources  # noqa: E402
from bot.types import ThreadRef  # noqa: E402

#: The `/find` latency the chat command can afford at 100,000 resources (see the docstring).
TARGET_P95_MS = 20.0
#: Channels and threads per channel the resources are spread over.
CHANNELS = 50
THREADS_PER_CHANNEL = 10
#: A run's worker adds its files in one transaction; a run makes a few dozen at most.
RESOURCES_PER_TRANSACTION = 50
SEED = 20261125

WORDS = (
    "the of and to in is for that with on as be this by are from it at an or not but have all can will which "
    "retry budget timeout cache worker queue thread channel message reply upload file path config settings "
    "parser token session agent model prompt answer summary report deploy rollout kubernetes docker image build "
    "test fixture flaky teardown assert mock server client request response header status error warning info "
    "debug trace span metric latency throughput database migration schema index query search rank snippet "
    "user admin permission role access secret redact password key value list map set dict tuple string bytes "
    "json yaml toml csv markdown html render template layout style color font table column row cell width "
    "height memory disk network socket port host address proxy route handler middleware plugin hook registry "
    "invoice customer order payment refund shipping address quarterly forecast revenue margin budget plan "
    "meeting notes decision action owner deadline release version changelog feature bugfix hotfix regression "
    "performance benchmark profile optimize refactor cleanup rename extract inline module package import export"
).split()
EXTENSIONS = (".py", ".py", ".ts", ".go", ".md", ".md", ".txt", ".log", ".diff", ".json", ".yaml", ".csv")
#: Share of resources that repeat an earlier resource's bytes, large text (blob) and binary.
DUPLICATE_SHARE, LARGE_SHARE, BINARY_SHARE = 0.05, 0.01, 0.02


class Corpus:
    """Deterministic pseudo-text: Zipf-distributed words, code-like lines, prose and file names."""

    def __init__(self, seed: int = SEED) -> None:
        self.random = random.Random(seed)
        self.weights = [1 / (rank + 1) for rank in range(len(WORDS))]

    def words(self, count: int) -> list[str]:
        """Return `count` words drawn with Zipf-like frequencies."""
        return self.random.choices(WORDS, self.weights, k=count)

    def identifier(self) -> str:
        """Return a code identifier made of two or three words, snake_case or camelCase."""
        parts = self.words(self.random.randint(2, 3))
        if self.random.random() < 0.5:
            return "_".join(parts)
        return parts[0] + "".join(part.title() for part in parts[1:])

    def code_line(self) -> str:
        """Return one line that looks like code."""
        shape = self.random.randrange(4)
        if shape == 0:
            return f"def {self.identifier()}({self.identifier()}, {self.identifier()}):"
        if shape == 1:
            return f"    {self.identifier()} = {self.identifier()}.{self.identifier()}({' '.join(self.words(2))!r})"
        if shape == 2:
            return f"    # {' '.join(self.words(self.random.randint(4, 10)))}"
        return f"    return {self.identifier()}[{self.random.randint(0, 99)}]"

    def prose_line(self) -> str:
        """Return one sentence of prose."""
        return " ".join(self.words(self.random.randint(6, 18))).capitalize() + "."

    def path(self, index: int) -> str:
        """Return a file path: a folder or two, an identifier and an extension."""
        folders = "/".join(self.words(self.random.randint(0, 2)))
        name = f"{self.identifier()}{self.random.choice(EXTENSIONS)}"
        return f"{folders}/{name}" if folders else name

    def body(self, path: str, index: int) -> bytes:
        """Return a resource's bytes fitting its extension, unique by its index."""
        lines = self.random.randint(5, 40)
        if path.endswith((".py", ".ts", ".go", ".diff")):
            text = "\n".join(self.code_line() for _ in range(lines))
        else:
            text = "\n".join(self.prose_line() for _ in range(lines))
        return f"{text}\n# resource {index}\n".encode()


def build(count: int) -> Iterator[tuple[int, str, bytes | None]]:
    """Yield (resource number, path, bytes) for `count` resources, the same every run."""
    corpus = Corpus()
    earlier: list[bytes] = []
    for index in range(count):
        path = corpus.path(index)
        roll = corpus.random.random()
        if roll < DUPLICATE_SHARE and earlier:
            data = corpus.random.choice(earlier)
        elif roll < DUPLICATE_SHARE + LARGE_SHARE:
            data = corpus.body(path, index) * 60  # ~60-100 KiB of text: goes to the blob store
        elif roll < DUPLICATE_SHARE + LARGE_SHARE + BINARY_SHARE:
            path = path.rsplit(".", 1)[0] + ".png"
            data = corpus.random.randbytes(corpus.random.randint(2_000, 20_000))
        else:
            data = corpus.body(path, index)
        if len(earlier) < 1000:
            earlier.append(data)
        yield index, path, data


def queries(count: int) -> list[tuple[int, str]]:
    """Return (channel number, query) pairs: words, prefixes, identifiers, phrases and misses."""
    corpus = Corpus(SEED + 1)
    made = []
    for _ in range(count):
        channel = corpus.random.randrange(CHANNELS)
        shape = corpus.random.randrange(6)
        if shape == 0:
            query = corpus.random.choice(WORDS[40:])  # one uncommon word
        elif shape == 1:
            query = " ".join(corpus.words(2))  # two words, common ones likely
        elif shape == 2:
            query = corpus.random.choice(WORDS[40:])[:4]  # a prefix, as typed half-way
        elif shape == 3:
            query = corpus.identifier()  # a code identifier
        elif shape == 4:
            query = " ".join(corpus.random.sample(WORDS[40:], 3))  # three words, maybe no document has all
        else:
            query = corpus.random.choice(["kubernetes helm", "zebra", "invoice.csv", '"retry budget"', "NEAR(x y)"])
        made.append((channel, query))
    return made


def measure(url: str, blob_dir: Path, count: int, query_count: int) -> dict[str, float]:
    """Index `count` resources into a fresh database, time the queries; return the figures."""
    db = Database(url)
    db.migrate()
    with db.session() as session:
        threads = [[Conversations(session).ensure(ThreadRef("slack", f"C{c:03d}", f"17000000{c:02d}.{t:06d}")).id
                    for t in range(THREADS_PER_CHANNEL)] for c in range(CHANNELS)]
    placement = random.Random(SEED + 2)
    indexing = 0.0  # seconds in `Resources.add` and its commits, not in making up the text
    batch: list[tuple[int, str, bytes | None]] = []
    for item in build(count):
        batch.append(item)
        if len(batch) == RESOURCES_PER_TRANSACTION or item[0] == count - 1:
            begun = time.perf_counter()
            _add(db, blob_dir, threads, placement, batch)
            indexing += time.perf_counter() - begun
            batch = []
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as connection:  # what autovacuum would have done by now
            connection.exec_driver_sql("ANALYZE")
            connection.commit()
    latencies, found = [], 0
    for channel, query in queries(query_count):
        begun = time.perf_counter()
        with db.reading() as session:
            hits = Resources(session, blob_dir).find("slack", f"C{channel:03d}", query)
        latencies.append(time.perf_counter() - begun)
        found += bool(hits)
    db.close()
    return {"rate": count / indexing, "p50": statistics.median(latencies) * 1000,
            "p95": percentile(latencies, 95) * 1000, "max": max(latencies) * 1000, "found": found / len(latencies)}


def _add(db: Database, blob_dir: Path, threads: list[list[int]], placement: random.Random,
         batch: list[tuple[int, str, bytes | None]]) -> None:
    channel = placement.randrange(CHANNELS)  # one run's files land in one thread
    conversation = placement.choice(threads[channel])
    with db.session() as session:
        resources = Resources(session, blob_dir)
        for _index, path, data in batch:
            resources.add(conversation, path, data, kind="file", requested_by="U1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="resources to index (default 100,000)")
    parser.add_argument("--queries", type=int, default=200, help="queries to time (default 200)")
    parser.add_argument("--only", choices=("sqlite", "postgres"), help="measure one database only")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tw-bench-resources-") as scratch:
        root = Path(scratch)
        if args.only != "postgres":
            rows.append(("SQLite (FTS5)", measure(f"sqlite:///{root / 'bench.db'}", root / "blobs-sqlite",
                                                  args.n, args.queries)))
        if args.only != "sqlite":
            with postgres() as url:
                if url is not None:
                    rows.append(("PostgreSQL (GIN tsvector)", measure(url, root / "blobs-pg", args.n, args.queries)))
    print(f"\n{args.n:,} resources over {CHANNELS} channels, {args.queries} queries, target p95 < {TARGET_P95_MS:g} ms\n")
    print("| database | indexing (resources/s) | /find p50 (ms) | /find p95 (ms) | max (ms) | queries with hits |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, figures in rows:
        print(f"| {name} | {figures['rate']:,.0f} | {figures['p50']:.2f} | {figures['p95']:.2f} | "
              f"{figures['max']:.1f} | {figures['found']:.0%} |")
    return 0 if all(figures["p95"] < TARGET_P95_MS for _, figures in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
