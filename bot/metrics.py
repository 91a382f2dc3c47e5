"""Prometheus metrics: every metric the bot exports, and the endpoint that serves them.

Off until `serve` is called (`python -m bot run` and `python -m bot worker` call it when
`BOT_METRICS_PORT` is set); until then every recording function here does nothing, so the
core can call them anywhere without importing `prometheus_client`.

RQ forks a work-horse per job, so the metrics use prometheus_client's multiprocess mode: each
process writes its values to files in `PROMETHEUS_MULTIPROC_DIR`, and a scrape adds up the
files of the serving process and every work-horse it forked. The directory belongs to one
serving process: `serve` binds the port first, then empties the directory (the files of an
earlier process on that port), and marks the process dead on exit. A work-horse leaves a file
or two per job, so each scrape first folds the files of exited processes into one (`_compact`).
Runs by state, queue depth and workers are read from the database and Redis at scrape time,
not counted.

    threadwork_events_received_total{platform}        messages handed to dispatch
    threadwork_dispatch_seconds{platform}              dispatch duration: the acknowledgement latency
    threadwork_job_seconds{function,outcome}           one job, from start to end, in the process that ran it
    threadwork_job_wait_seconds{function}              from enqueued to started (RQ jobs)
    threadwork_rate_limited_total{platform,method}     429s the platform answered
    threadwork_edit_seconds                            one edit of a live message
    threadwork_model_calls_total{purpose,model,outcome}  calls to the language model API
    threadwork_model_tokens_total{purpose,model,direction}  their tokens (input, output)
    threadwork_agent_tokens_total{agent,direction}     tokens of finished agent runs
    threadwork_runs{state}                             runs in each state (from the database)
    threadwork_queue_depth                             jobs waiting in the Redis queue
    threadwork_workers                                 RQ workers registered on the queue
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bot import constants, logs
from bot.errors import UserFacingError
from bot.processes import process_alive
from bot.types import as_utc, utcnow

log = logging.getLogger(__name__)

#: The environment variable with the port of the metrics endpoint (unset: no endpoint).
PORT_ENV = "BOT_METRICS_PORT"
#: The environment variable with the address it binds (loopback unless an operator opens it).
HOST_ENV = "BOT_METRICS_HOST"
DEFAULT_HOST = "127.0.0.1"
#: prometheus_client's own variable: the directory of one serving process's metric files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Buckets for fast operations (dispatch, edits), in seconds: 1 ms up to 10 s.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Buckets for jobs, in seconds: a chat answer takes seconds, an agent run up to agent.timeout_seconds.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0)

F = TypeVar("F", bound=Callable[..., Any])


class _Metrics:
    """The metric objects, built once multiprocess mode is on (see `serve`).

    None is registered in prometheus_client's global registry: the endpoint's registry reads
    the processes' files instead (registering both would export every metric twice).
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        own = {"registry": None}
        #: Messages handed to `Engine.dispatch`, by platform (duplicates included).
        self.events_received = Counter("threadwork_events_received", "Messages handed to dispatch.", ["platform"], **own)
        #: How long `dispatch` took: the part of a platform's 3-second acknowledgement the bot spends.
        self.dispatch_seconds = Histogram("threadwork_dispatch_seconds", "Dispatch duration (acknowledgement latency).",
                                          ["platform"], buckets=FAST_BUCKETS, **own)
        #: How long one job ran, by job function and whether it raised.
        self.job_seconds = Histogram("threadwork_job_seconds", "Job duration, by job function.",
                                     ["function", "outcome"], buckets=JOB_BUCKETS, **own)
        #: How long an RQ job waited in the queue before a worker started it.
        self.job_wait_seconds = Histogram("threadwork_job_wait_seconds", "Time from enqueued to started.",
                                          ["function"], buckets=JOB_BUCKETS, **own)
        #: 429 answers from a platform's API, by platform and method (Slack method, Discord route).
        self.rate_limited = Counter("threadwork_rate_limited", "429 responses, by platform and method.",
                                    ["platform", "method"], **own)
        #: How long one edit of a live message (status, streamed answer) took, when it succeeded.
        self.edit_seconds = Histogram("threadwork_edit_seconds", "Live message edit duration.", buckets=FAST_BUCKETS,
                                      **own)
        #: Calls to the language model API, by purpose (answer, classify, summary), model and outcome.
        self.model_calls = Counter("threadwork_model_calls", "Language model API calls.", ["purpose", "model", "outcome"],
                                   **own)
        #: Tokens of those calls, by direction (input, output).
        self.model_tokens = Counter("threadwork_model_tokens", "Language model tokens.", ["purpose", "model", "direction"],
                                    **own)
        #: Tokens agent runs reported, counted when a run finishes.
        self.agent_tokens = Counter("threadwork_agent_tokens", "Agent run tokens.", ["agent", "direction"], **own)


_metrics: _Metrics | None = None


def enabled() -> bool:
    """Return whether this process records metrics (`serve` was called)."""
    return _metrics is not None


def event_received(platform: str) -> None:
    """Count one message handed to dispatch."""
    if _metrics is not None:
        _metrics.events_received.labels(platform=platform).inc()


def observed_dispatch(func: F) -> F:
    """Wrap `Engine.dispatch`: count the event, time it, and scope the log ids it binds."""

    @functools.wraps(func)
    @logs.scoped
    def wrapper(self: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        platform = getattr(getattr(message, "where", None), "platform", "unknown")
        event_received(platform)
        started = time.perf_counter()
        try:
            return func(self, message, *args, **kwargs)
        finally:
            if _metrics is not None:
                _metrics.dispatch_seconds.labels(platform=platform).observe(time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


def observed_job(func: F) -> F:
    """Wrap a job function: bind its job id to the logs, time it, and record how long it waited."""
    name = func.__name__

    @functools.wraps(func)
    @logs.scoped
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        job = _current_rq_job()
        if job is not None:
            logs.bind(job_id=job.id)
            if _metrics is not None and job.enqueued_at is not None:
                waited = (as_utc(job.started_at) if job.started_at else utcnow()) - as_utc(job.enqueued_at)
                _metrics.job_wait_seconds.labels(function=name).observe(max(0.0, waited.total_seconds()))
        started, outcome = time.perf_counter(), "error"
        try:
            result = func(*args, **kwargs)
            outcome = "ok"
            return result
        finally:
            if _metrics is not None:
                _metrics.job_seconds.labels(function=name, outcome=outcome).observe(time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


def _current_rq_job() -> Any:
    """Return the RQ job this work-horse executes (None in the in-process queue's threads)."""
    from rq import get_current_job  # here, not at import: the console bot never loads RQ

    return get_current_job()


def rate_limited(platform: str, method: str) -> None:
    """Count one 429 from a platform's API."""
    if _metrics is not None:
        _metrics.rate_limited.labels(platform=platform, method=method).inc()


_IDS = re.compile(r"/\d+")
_API_VERSION = re.compile(r"^/api/v\d+")


def route_of(method: str, path: str) -> str:
    """Return an HTTP route with its numeric ids folded ("PATCH /channels/{id}/messages/{id}")."""
    return f"{method} {_IDS.sub('/{id}', _API_VERSION.sub('', path))}"


def edit_done(seconds: float) -> None:
    """Record one successful edit of a live message."""
    if _metrics is not None:
        _metrics.edit_seconds.observe(seconds)


def model_call(purpose: str, model: str, *, ok: bool = True, tokens_in: int = 0, tokens_out: int = 0) -> None:
    """Count one call to the language model API and its tokens."""
    if _metrics is None:
        return
    _metrics.model_calls.labels(purpose=purpose, model=model, outcome="ok" if ok else "error").inc()
    if tokens_in:
        _metrics.model_tokens.labels(purpose=purpose, model=model, direction="input").inc(tokens_in)
    if tokens_out:
        _metrics.model_tokens.labels(purpose=purpose, model=model, direction="output").inc(tokens_out)


def agent_tokens(agent: str, tokens_in: int, tokens_out: int) -> None:
    """Count the tokens of one finished agent run."""
    if _metrics is None:
        return
    if tokens_in:
        _metrics.agent_tokens.labels(agent=agent, direction="input").inc(tokens_in)
    if tokens_out:
        _metrics.agent_tokens.labels(agent=agent, direction="output").inc(tokens_out)


class _FilesCollector:
    """The multiprocess files' sums, after folding exited processes' files into one per type."""

    def __init__(self, directory: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._directory = directory
        self._files = MultiProcessCollector(None, path=str(directory))
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        with self._lock:  # one scrape at a time: compaction replaces files the sums read
            try:
                _compact(self._directory)
            except (OSError, ValueError):  # a half-written file: leave them all for the next scrape
                log.warning("metrics: compacting %s failed", self._directory, exc_info=True)
            return self._files.collect()


#: Metric types whose files add up across processes (gauges are not used in multiprocess mode).
_SUMMED_TYPES = ("counter", "histogram")


def _compact(directory: Path) -> None:
    """Fold the files of exited processes into `<type>_merged.db`, so files do not grow per job."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    for kind in _SUMMED_TYPES:
        exited = [path for path in directory.glob(f"{kind}_*.db") if _exited(path.stem.split("_", 1)[1])]
        if not exited:
            continue
        merged = directory / f"{kind}_merged.db"
        sources = [str(path) for path in exited] + ([str(merged)] if merged.exists() else [])
        families = MultiProcessCollector.merge(sources, accumulate=False)
        staging = directory / f"{kind}_merged.db.new"
        staging.unlink(missing_ok=True)
        out = MmapedDict(str(staging))
        try:
            for family in families:
                for sample in family.samples:
                    key = mmap_key(family.name, sample.name, list(sample.labels), list(sample.labels.values()),
                                   family.documentation)
                    out.write_value(key, sample.value, 0.0)
        finally:
            out.close()
        os.replace(staging, merged)
        for path in exited:
            path.unlink(missing_ok=True)


def _exited(pid: str) -> bool:
    """Return whether the process that wrote a file has exited (never this one)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    return not process_alive(int(pid))


class _StateCollector:
    """Runs by state, queue depth and workers, read from the database and Redis at each scrape."""

    def __init__(self, database_url: str, redis_url: str | None) -> None:
        self._database_url = database_url
        self._redis_url = redis_url
        self._db: Any = None
        self._redis: Any = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from bot.db import Database
        from bot.status import queue_state, runs_state

        try:
            self._db = self._db or Database(self._database_url)
            runs = runs_state(self._db)
        except UserFacingError as exc:  # the scrape still shows the counters
            log.warning("metrics: runs by state unavailable: %s", exc)
        else:
            family = GaugeMetricFamily("threadwork_runs", "Agent runs in each state.", labels=["state"])
            for state, count in runs.by_state.items():
                family.add_metric([state.value], count)
            yield family
        if not self._redis_url:
            return
        try:
            if self._redis is None:
                from redis import Redis

                self._redis = Redis.from_url(self._redis_url, socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT_S,
                                             socket_timeout=5)
            queue = queue_state(self._redis_url, connection=self._redis)
        except UserFacingError as exc:
            log.warning("metrics: queue unavailable: %s", exc)
            return
        yield GaugeMetricFamily("threadwork_queue_depth", "Jobs waiting in the Redis queue.", value=queue.depth or 0)
        yield GaugeMetricFamily("threadwork_workers", "RQ workers registered on the queue.", value=len(queue.workers))


def port_setting(value: str | None) -> int | None:
    """Return the metrics port BOT_METRICS_PORT names (None: unset or 0, no endpoint)."""
    if value is None or not value.strip():
        return None
    try:
        port = int(value)
    except ValueError:
        raise UserFacingError(f"{PORT_ENV}={value!r} is not a port number: use 1-65535, or leave it unset for "
                              "no metrics endpoint") from None
    if not 0 <= port <= 65535:
        raise UserFacingError(f"{PORT_ENV}={port} is not a port number: use 1-65535")
    return port or None


def serve(settings: Any, role: str, port: int | None = None) -> str | None:
    """Start the metrics endpoint of this process when a port is set; return its URL (None: off).

    Call it before the process forks or records anything: multiprocess mode is chosen when
    prometheus_client is first imported.
    """
    global _metrics
    port = port if port is not None else port_setting(settings.get(PORT_ENV))
    if port is None:
        return None
    host = settings.get(HOST_ENV) or DEFAULT_HOST
    directory = Path(settings.get(MULTIPROC_ENV) or settings.data_dir / "metrics" / f"{socket.gethostname()}-{port}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(f"cannot create the metrics directory {directory}: {exc.strerror}") from None
    # prometheus_client reads it at import, and forked work-horses inherit it.
    os.environ[MULTIPROC_ENV] = str(directory)
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import mark_process_dead

    if not getattr(values.ValueClass, "_multiprocess", False):
        raise UserFacingError("prometheus_client was imported before the metrics endpoint started, so it "
                              f"is not in multiprocess mode: set {MULTIPROC_ENV} in the environment")
    registry = CollectorRegistry()
    registry.register(_FilesCollector(directory))  # type: ignore[arg-type]
    registry.register(_StateCollector(settings.database_url, settings.redis_url))  # type: ignore[arg-type]
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UserFacingError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): is another process "
                              f"using it? Give each process a port of its own ({PORT_ENV}, or a worker's "
                              "--metrics-port)") from None
    # The port is ours now: files left in the directory are an earlier process's.
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    _metrics = _Metrics()
    pid = os.getpid()
    atexit.register(lambda: os.getpid() == pid and mark_process_dead(pid, str(directory)))
    log.info("%s: metrics on http://%s:%s/metrics (files in %s)", role, host, port, directory)
    return f"http://{host}:{port}/metrics"
